//! The sandbox itself: real useradd and a real sshd login inside it, nothing on the host.

use gce_testkit::{Sshd, keypair, sandbox, temp_dir};
use std::process::Command;

#[test]
fn e2e_sandbox_useradd_and_sshd_login_stay_private() {
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    if !sandbox("e2e_sandbox_useradd_and_sshd_login_stay_private") {
        assert_eq!(
            std::fs::read_to_string("/etc/passwd").unwrap(),
            host_passwd,
            "host users untouched"
        );
        assert!(!host_passwd.contains("testkituser:"));
        return;
    }
    let st = Command::new("useradd")
        .args(["-m", "-s", "/bin/bash", "-p", "*", "testkituser"])
        .status()
        .unwrap();
    assert!(st.success());
    let dir = temp_dir("keys");
    let (key, public) = keypair(&dir, "k1");
    std::fs::create_dir_all("/home/testkituser/.ssh").unwrap();
    std::fs::write(
        "/home/testkituser/.ssh/authorized_keys",
        format!("{public}\n"),
    )
    .unwrap();
    Command::new("chown")
        .args(["-R", "testkituser:testkituser", "/home/testkituser/.ssh"])
        .status()
        .unwrap();
    let sshd = Sshd::start("");
    let out = sshd.login("testkituser", &key, "id -un");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "testkituser",
        "login failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}
