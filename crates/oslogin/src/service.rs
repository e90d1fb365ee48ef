//! [`WithOsLogin`]: any metadata-root service (the accounts daemon) plus the OS Login switch,
//! driven by the same long poll and the same run loop.

use gce_agent::config::Config;
use gce_agent::daemon::Service;
use gce_metadata::{Root, Snapshot};

use crate::settings::Settings;
use crate::switch::OsLogin;

enum Woke {
    Inner,
    OsLogin,
}

/// Runs `inner` on each snapshot first (the accounts daemon removes or restores the metadata
/// keys), then the OS Login switch with the snapshot's settings.
pub struct WithOsLogin<S> {
    inner: S,
    oslogin: OsLogin,
    woke: Option<Woke>,
}

impl<S> WithOsLogin<S> {
    pub fn new(inner: S, oslogin: OsLogin) -> WithOsLogin<S> {
        WithOsLogin {
            inner,
            oslogin,
            woke: None,
        }
    }
}

impl<S: Service<Snapshot = Root>> Service for WithOsLogin<S> {
    type Snapshot = Root;

    fn watch_path(&self) -> String {
        self.inner.watch_path()
    }

    async fn apply(&mut self, snap: &Snapshot<Root>) -> anyhow::Result<String> {
        let inner = self.inner.apply(snap).await;
        let root = &snap.value;
        let settings =
            Settings::from_attributes(&root.instance.attributes, &root.project.attributes);
        let oslogin = self.oslogin.apply(settings).await;
        inner.map(|status| format!("{status}; {oslogin}"))
    }

    async fn wakeup(&mut self) {
        tokio::select! {
            () = self.inner.wakeup() => self.woke = Some(Woke::Inner),
            () = self.oslogin.wakeup() => self.woke = Some(Woke::OsLogin),
        }
    }

    async fn on_wakeup(&mut self) -> anyhow::Result<Option<String>> {
        match self.woke.take() {
            Some(Woke::Inner) => self.inner.on_wakeup().await,
            Some(Woke::OsLogin) => Ok(self.oslogin.on_wakeup().await),
            None => Ok(None),
        }
    }

    async fn reload(&mut self, config: &Config) {
        self.inner.reload(config).await;
        self.oslogin.reload(config).await;
    }
}
