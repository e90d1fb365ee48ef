//! `gce-instance-setup`: what a GCE instance needs once per boot, before sshd starts (SPEC §9).
//!
//! - [`facts`]: the metadata read (id, hostname, primary IP, guest attributes), retried within a
//!   deadline; no answer means no decision.
//! - [`instance_id`]: the recorded id (`google_instance_id`, Google's file and format) and the
//!   first-boot rule. Pure.
//! - [`hostkeys`]: which host keys to make, `.pub` parsing, the `hostkeys/` attributes. Pure.
//! - [`keygen`]: the host key directory and `ssh-keygen`, each key replaced atomically.
//! - [`hostname`] / [`hosts`]: the names, and the `# Added by Google` lines of /etc/hosts. Pure.
//! - [`system`]: file rewrites through the one atomic writer, `sethostname`, SELinux labels.
//! - [`setup`]: one run, in that order.

pub mod facts;
pub mod hostkeys;
pub mod hostname;
pub mod hosts;
pub mod instance_id;
pub mod keygen;
pub mod setup;
pub mod system;

pub use setup::{Options, Report, SetupError, run};
