//! `gce-ssh`: the gcloud-style "push a short-lived key and log in" client. It talks to the
//! Compute-shaped control plane (the emulator's, or the real API's paths with a bearer token),
//! edits the instance's `ssh-keys` with read-modify-write on the metadata fingerprint, waits for
//! the guest's ready marker, then runs `ssh` with the ephemeral key.

pub mod compute;
pub mod keyline;
