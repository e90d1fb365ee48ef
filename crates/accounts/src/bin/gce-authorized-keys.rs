//! gce-authorized-keys: sshd's `AuthorizedKeysCommand /usr/bin/gce-authorized-keys %u %f`.
//!
//! Prints the user's managed keys that are valid at this very moment (only the offered key's
//! line when `%f` is given), read from the root-owned cache the accounts daemon keeps. If the
//! daemon never wrote the cache, it asks the metadata server once, with a short timeout. On any
//! error it prints nothing and exits 0, so sshd's other methods still work. Each lookup is logged
//! to authpriv with the user and fingerprint.

use gce_accounts::decide::cache::{self, COMPLETE};
use gce_accounts::names::validate_username;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn syslog(msg: &str) {
    let Ok(c) = std::ffi::CString::new(msg.replace('\0', "")) else {
        return;
    };
    // SAFETY: plain libc calls with a valid NUL-terminated format and argument.
    unsafe {
        libc::openlog(
            c"gce-authorized-keys".as_ptr(),
            libc::LOG_PID,
            libc::LOG_AUTHPRIV,
        );
        libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), c.as_ptr());
    }
}

/// A cache file we trust: root-owned, not writable by group or others, no symlink anywhere.
fn read_trusted(dir: &Path, name: &str) -> Option<String> {
    let md = std::fs::symlink_metadata(dir).ok()?;
    if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return None;
    }
    let bytes = gce_agent::fs::read_nofollow(&dir.join(name), 4 << 20).ok()??;
    let fmd = std::fs::symlink_metadata(dir.join(name)).ok()?;
    if fmd.uid() != 0 || fmd.mode() & 0o022 != 0 {
        return None;
    }
    String::from_utf8(bytes).ok()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One metadata request when the daemon has not written the cache yet.
fn from_metadata(user: &str) -> Vec<cache::CachedKey> {
    let (config, _) = gce_agent::Config::load(&gce_agent::ConfigPaths::system());
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    rt.block_on(async {
        let opts = gce_metadata::ClientOptions {
            connect_timeout: std::time::Duration::from_millis(500),
            request_timeout: std::time::Duration::from_millis(1500),
            ..Default::default()
        };
        let Ok(client) = config.metadata_client(opts) else {
            return Vec::new();
        };
        let Ok(root) = client
            .get_json::<gce_metadata::Root>("?recursive=true&alt=json")
            .await
        else {
            return Vec::new();
        };
        let desired = gce_accounts::desired_keys(
            &root.instance.attributes,
            &root.project.attributes,
            chrono::Utc::now(),
        );
        if desired.oslogin {
            return Vec::new();
        }
        let Some(local) = nix::unistd::User::from_name(user).ok().flatten() else {
            return Vec::new();
        };
        let uid_min = gce_accounts::system::passwd::uid_min(Path::new("/etc/login.defs"));
        if gce_accounts::names::is_reserved(
            user,
            Some(local.uid.as_raw()),
            uid_min,
            &config.accounts.allowed_system_users,
        ) {
            return Vec::new();
        }
        let entries = desired.users.get(user).cloned().unwrap_or_default();
        let pairs: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e,
                    gce_accounts::decide::authorized_keys::key_line(
                        e,
                        gce_accounts::ExpiryOption::None,
                    ),
                    e.key.fingerprint(),
                )
            })
            .collect();
        cache::parse(&cache::render(&pairs))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(user) = args.first() else { return };
    if validate_username(user).is_err() {
        return;
    }
    let fingerprint = args.get(1).map(String::as_str).filter(|f| !f.is_empty());
    let dir = std::env::var_os("GCE_AUTHORIZED_KEYS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(cache::DEFAULT_DIR));
    let keys = match read_trusted(&dir, user) {
        Some(text) => cache::parse(&text),
        // No file: the daemon knows the user has no keys, unless it never wrote the cache.
        None if read_trusted(&dir, COMPLETE).is_some() => Vec::new(),
        None => from_metadata(user),
    };
    let lines = cache::valid_lines(&keys, now_ms(), fingerprint);
    let mut out = std::io::stdout().lock();
    for l in &lines {
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
    let _ = out.flush();
    syslog(&format!(
        "lookup user={user} fingerprint={} keys_returned={}",
        fingerprint.unwrap_or("-"),
        lines.len()
    ));
}
