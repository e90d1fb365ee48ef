//! The steps a plan is made of: the one vocabulary shared by the planner that decides them
//! ([`crate::decide::plan`]), the service that runs them ([`crate::service`]) and the record
//! that remembers them ([`crate::record`]). It depends on nothing else in the crate, so those
//! three import it and never each other in a circle.

/// One step for the service to run. After each success it calls
/// [`State::record`](crate::record::State::record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `useradd` (the user is desired and does not exist).
    CreateUser {
        user: String,
    },
    /// Start managing an account that already existed; it will never be deleted.
    Adopt {
        user: String,
    },
    AddToSudoers {
        user: String,
    },
    /// Make the managed lines of the user's authorized_keys exactly `lines`
    /// (without markers), keeping the user's own lines. Empty = remove ours.
    WriteKeys {
        user: String,
        lines: Vec<String>,
    },
    RemoveFromSudoers {
        user: String,
    },
    /// `userdel -r`: only for users we created, with `deprovision_remove`.
    DeleteUser {
        user: String,
    },
    /// Drop the user from the state file.
    Forget {
        user: String,
    },
}

impl Action {
    pub fn user(&self) -> &str {
        match self {
            Action::CreateUser { user }
            | Action::Adopt { user }
            | Action::AddToSudoers { user }
            | Action::WriteKeys { user, .. }
            | Action::RemoveFromSudoers { user }
            | Action::DeleteUser { user }
            | Action::Forget { user } => user,
        }
    }
}

/// The order in which one user's actions run: the account first, then the keys (login works as
/// soon as the file is there), then sudo, removals last.
pub fn rank(a: &Action) -> u8 {
    match a {
        Action::CreateUser { .. } | Action::Adopt { .. } => 0,
        Action::WriteKeys { .. } => 1,
        Action::AddToSudoers { .. } => 2,
        Action::RemoveFromSudoers { .. } => 3,
        Action::DeleteUser { .. } => 4,
        Action::Forget { .. } => 5,
    }
}
