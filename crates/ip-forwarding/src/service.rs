//! The [`Forwarder`] as a `gce_agent::daemon::Service`: the shared loop long-polls
//! `instance/network-interfaces/`, hands us each snapshot, and races our kernel events against
//! it for self-healing.

use crate::reconcile::{Forwarder, Kernel};
use crate::{WATCH_PATH, options_from_config};
use gce_agent::config::Config;
use gce_agent::daemon::Service;
use gce_metadata::{NetworkInterface, Snapshot};

impl<K: Kernel> Service for Forwarder<K> {
    type Snapshot = Vec<NetworkInterface>;

    fn watch_path(&self) -> String {
        WATCH_PATH.to_string()
    }

    async fn apply(&mut self, snap: &Snapshot<Self::Snapshot>) -> anyhow::Result<String> {
        Ok(Forwarder::apply(self, snap.value.clone()).await?.status())
    }

    async fn wakeup(&mut self) {
        self.changed().await
    }

    async fn on_wakeup(&mut self) -> anyhow::Result<Option<String>> {
        Ok(Some(self.reconcile().await?.status()))
    }

    async fn reload(&mut self, config: &Config) {
        self.set_options(options_from_config(&config.ip_forwarding));
        if let Err(e) = self.reconcile().await {
            tracing::error!("reconciling after a configuration reload failed: {e}");
        }
    }
}
