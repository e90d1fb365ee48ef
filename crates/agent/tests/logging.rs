//! `logging::init` installs a process-global subscriber, so it gets its own test binary.

use gce_agent::logging::{self, LogBackend, LogError};

#[test]
fn init_installs_once_and_tolerates_a_bad_level() {
    // A bad level must not fail: it falls back to info with a warning line.
    let backend = logging::init("gce-agent-test", "chatty").expect("first init");
    if std::env::var_os("JOURNAL_STREAM").is_none() {
        assert_eq!(backend, LogBackend::Stderr);
    }
    tracing::info!(
        USER = "alice",
        MESSAGE_ID = logging::msgid::KEY_ADDED,
        "key added"
    );
    assert!(matches!(
        logging::init("gce-agent-test", "info"),
        Err(LogError::AlreadyInstalled(_))
    ));
}
