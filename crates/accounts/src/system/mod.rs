//! The edge: every effect of the accounts daemon on the machine, one job per file. Nothing here
//! decides what should be (that is [`crate::decide`]) or remembers it (that is
//! [`crate::record`]).
//!
//! - [`passwd`]: reads local accounts and groups (cached `/etc/passwd`/`/etc/group`, NSS only
//!   where nsswitch.conf needs it).
//! - [`commands`]: runs programs — `useradd`, `usermod`, `gpasswd`, `userdel`, `groupadd`,
//!   `ssh -V` — and writes the `google_sudoers` rule.
//! - [`key_files`]: writes keys into users' `~/.ssh/authorized_keys`, symlink-safe and atomic.
//! - [`key_cache`]: writes the root-owned key cache `gce-authorized-keys` reads.
//! - [`markers`]: publishes the guest-attribute ready markers.

pub mod commands;
pub mod key_cache;
pub mod key_files;
pub mod markers;
pub mod passwd;
