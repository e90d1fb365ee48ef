//! `gce-ssh`: the gcloud-style "push a short-lived key and log in" client. It talks to the
//! Compute API (the real one over HTTPS with the user's credentials, or the emulator's), reads
//! the instance's published host keys and pins them, edits the instance's `ssh-keys` with
//! read-modify-write on the metadata fingerprint, waits for the guest's ready marker, then runs
//! `ssh` with the ephemeral key and strict host-key checking. Where the instance uses OS Login,
//! the key is imported into the user's OS Login profile instead and the login is as the
//! profile's POSIX user.

pub mod auth;
pub mod cli;
pub mod compute;
pub mod gcloud;
pub mod hostkeys;
pub mod http;
pub mod keyline;
pub mod oslogin;
pub mod push;
pub mod session;
pub mod tool;
