//! What every GCE guest daemon shares: layered configuration, logging, systemd notification,
//! signals, the single-instance lock, the command line, and the only two ways the agents touch
//! the system — [`fs`] for writing files and [`cmd`] for running programs.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod leftovers;
pub mod lock;
pub mod logging;
pub mod notify;
pub mod signals;

pub use cli::CommonArgs;
pub use cmd::{CmdError, Output, RunOpts};
pub use config::{Config, ConfigPaths, ConfigWarning, RawConfig, expand_command};
pub use fs::{FileKind, FileStat, FsError, WriteOpts, write_atomic, write_atomic_at};
pub use lock::{InstanceLock, LockError, default_lock_path};
pub use logging::{LogBackend, LogError, msgid};
pub use signals::{Signal, Signals};

/// Tests that read or write process environment variables hold this: tests in one binary run on
/// parallel threads and the environment is process-wide.
#[cfg(test)]
pub(crate) fn test_env_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding the lock must not fail every later test.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
