//! gce-accounts: local users and their SSH keys from GCE metadata (SPEC §2).
//!
//! The library is split so that everything deciding *what* should happen is pure
//! and testable without root:
//!
//! - [`names`]: which user names are acceptable, and which accounts are reserved.
//! - [`keys`]: parsing `USER:KEY` lines, options, blobs and `google-ssh` expiry.
//! - [`desired`]: metadata snapshot + clock → the keys each user should have.
//! - [`authorized_keys`]: the `# Added by Google` file format, shared with Google's agents.
//! - [`state`]: what the daemon remembers (created vs adopted, installed lines).
//! - [`plan`]: desired + state + local accounts → ordered actions.
//!
//! At the edge, with effects:
//!
//! - [`passwd`]: local account lookups (cached /etc/passwd, NSS fallback).
//! - [`home`]: symlink-safe, atomic authorized_keys writes.
//! - [`cache`]: the root-owned key cache read by `gce-authorized-keys`.
//! - [`reconcile`]: runs plans (useradd, gpasswd, writes), expiry timer, ready markers.

pub mod authorized_keys;
pub mod cache;
pub mod delta;
pub mod desired;
pub mod home;
pub mod keys;
pub mod names;
pub mod passwd;
pub mod plan;
pub mod reconcile;
pub mod state;

pub use authorized_keys::{ExpiryOption, MARKER};
pub use desired::{Desired, KeySource, Rejected, desired_keys, desired_keys_memo};
pub use keys::{
    AuthorizedKey, KeyEntry, KeyError, LineError, ParseMemo, ParsedLine, parse_ssh_keys,
};
pub use names::{NameError, validate_username};
pub use plan::{Action, LocalUser, LocalUsers, Plan, PlanConfig, plan};
pub use state::{Origin, State, StateError, UserState};
