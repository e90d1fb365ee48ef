//! gce-accounts: local users and their SSH keys from GCE metadata (SPEC §2).
//!
//! The tree says who does what, and imports flow one way (down this list, never back up):
//!
//! - [`names`], [`action`]: the shared vocabulary — which user names are acceptable, and the
//!   steps a plan is made of. They import nothing else from the crate.
//! - [`record`]: **keeps the record** — who we created, who we adopted, which lines we
//!   installed — in memory and in the state file (plus Google's `google_users` list).
//! - [`decide`]: **decides what should be**, pure (no files, commands or network; the clock is
//!   an argument): parsing `ssh-keys`, the desired keys per user, the OS Login settings, the
//!   authorized_keys and cache formats, which of Google's users its agents created, and
//!   [`decide::plan`], which turns desired + record + local accounts into actions.
//! - [`system`]: the effects, one job per file — reading local accounts
//!   ([`system::passwd`]), **running commands** ([`system::commands`]: useradd, gpasswd,
//!   userdel…), **writing keys** ([`system::key_files`]: authorized_keys;
//!   [`system::key_cache`]: the `gce-authorized-keys` cache), publishing ready markers
//!   ([`system::markers`]).
//! - [`service`]: the daemon — one pass calls decide, runs the plan through system, updates the
//!   record; plus the expiry timer.
//!
//! The binaries (`src/bin/`) are thin: `gce-accounts-daemon` runs [`service::Accounts`] under
//! gce-agent's run loop; `gce-authorized-keys` reads the cache through [`decide::cache`].

pub mod action;
pub mod decide;
pub mod names;
pub mod record;
pub mod service;
pub mod system;

pub use action::Action;
pub use decide::authorized_keys::{ExpiryOption, MARKER};
pub use decide::desired::{Desired, KeySource, Rejected, desired_keys, desired_keys_memo};
pub use decide::keys::{
    AuthorizedKey, KeyEntry, KeyError, LineError, ParseMemo, ParsedLine, parse_ssh_keys,
};
pub use decide::plan::{LocalUser, LocalUsers, Plan, PlanConfig, plan};
pub use names::{NameError, validate_username};
pub use record::{Origin, State, StateError, UserState};
