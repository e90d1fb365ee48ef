//! Pure: what should be. Functions of their arguments only — the metadata attributes, the
//! record, the local accounts as a lookup trait, and the clock passed in as `now` — with no file,
//! command or network access, so every rule is tested without root.
//!
//! - [`keys`]: parsing `USER:KEY` lines, options, blobs, fingerprints and `google-ssh` expiry.
//! - [`desired`]: metadata attributes + now → the keys each user should have.
//! - [`delta`]: the same, incrementally, for the users whose lines changed.
//! - [`oslogin`]: whether OS Login replaces metadata keys (and its 2FA, security-key and
//!   certificate companions).
//! - [`authorized_keys`]: the `# Added by Google` file format shared with Google's agents, and
//!   the line written for each key.
//! - [`cache`]: the format of the `gce-authorized-keys` cache, and which of its keys are valid.
//! - [`plan`]: desired + record + local accounts → the ordered [`Action`](crate::action::Action)s.
//! - [`takeover`]: which users Google's agents created, from their `google_users` list and the
//!   marks their `useradd` leaves.

pub mod authorized_keys;
pub mod cache;
pub mod delta;
pub mod desired;
pub mod keys;
pub mod oslogin;
pub mod plan;
pub mod takeover;
