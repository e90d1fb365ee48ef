//! `gce-ssh [USER@]INSTANCE [--zone Z] [--project P] [-- CMD…]`: generate an ephemeral ed25519
//! key, push it with a `google-ssh` expiry, pin the instance's host keys, wait until the guest
//! says login will work, then run `ssh`.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = gce_ssh::cli::Args::parse();
    match gce_ssh::session::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gce-ssh: {e:#}");
            ExitCode::from(2)
        }
    }
}
