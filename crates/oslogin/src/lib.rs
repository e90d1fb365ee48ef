//! gce-oslogin: configures the host for Google's OS Login package
//! (`google-compute-engine-oslogin`: NSS modules, `google_authorized_keys`, PAM modules) when
//! metadata turns `enable-oslogin` on, and undoes every edit, byte for byte, when it turns off
//! (SPEC §10). The texts are Google's, so images move between Google's agent and this one.
//!
//! Pure, testable without root:
//! - [`settings`]: metadata switches (Go's ParseBool, instance over project) and `[OSLogin]`.
//! - [`edit`]: every file edit as text in → text out; idempotent and reversible.
//! - [`plan`]: settings + what is installed → the wanted host.
//! - [`certs`]: `oslogin/certificates` → the `TrustedUserCAKeys` file.
//!
//! With effects:
//! - [`host`]: probing the package, atomic `O_NOFOLLOW` edits, directories, service reloads.
//! - [`journal`]: the intent record that makes a switch crash-safe, and what we created.
//! - [`switch`]: [`OsLogin`], the switch itself.
//! - [`service`]: [`WithOsLogin`], which runs it inside the accounts daemon's loop.

pub mod certs;
pub mod edit;
pub mod host;
pub mod journal;
pub mod listeners;
pub mod plan;
pub mod service;
pub mod settings;
pub mod switch;

pub use plan::{Paths, Probe};
pub use service::WithOsLogin;
pub use settings::{OsLoginConfig, Settings};
pub use switch::OsLogin;
