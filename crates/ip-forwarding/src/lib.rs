//! gce-ip-forwarding: keeps one `local` route per forwarded IP, alias range and target-instance
//! IP (SPEC.md §4) in the kernel's `local` table, tagged with our protocol id, in step with the
//! metadata server — and puts them back when something else removes them.
//!
//! - [`plan`]: the pure rules (address validation, MAC matching, diff);
//! - [`netlink`]: the kernel edge (rtnetlink) and the change events that drive self-healing;
//! - [`reconcile`]: the [`Forwarder`] that ties them to the last good snapshot; it implements
//!   `gce_agent::daemon::Service`, so the binary is the shared daemon loop around it.

pub mod netlink;
pub mod plan;
pub mod reconcile;
mod service;

pub use netlink::{Error, Netlink};
pub use plan::{Link, Options, Prefix, Route};
pub use reconcile::{Forwarder, Kernel, Outcome};

/// The metadata subtree we watch; its recursive JSON is an array of NICs.
pub const WATCH_PATH: &str = "instance/network-interfaces/";

/// [`Options`] from the `[IpForwarding]` config section. A reserved protocol id is replaced by
/// 66 and logged.
pub fn options_from_config(cfg: &gce_agent::config::IpForwarding) -> Options {
    let (opts, rejected) = Options::new(
        cfg.ethernet_proto_id,
        cfg.ip_aliases,
        cfg.target_instance_ips,
    );
    if let Some(p) = rejected {
        tracing::error!(
            "[IpForwarding] ethernet_proto_id = {p} is reserved for the kernel and routing tools; using {}",
            opts.proto
        );
    }
    opts
}
