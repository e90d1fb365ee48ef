//! Command-line arguments every daemon shares; each binary flattens [`CommonArgs`] into its own
//! `clap::Parser`.

use std::path::PathBuf;

use crate::config::{Config, ConfigPaths};

/// `--config`, `--once`, `-v`, `--log-level`, `--lock-file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct CommonArgs {
    /// Admin configuration file; `PATH.template` and `PATH.distro` are read beside it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Apply one metadata snapshot and exit instead of long-polling.
    #[arg(long)]
    pub once: bool,
    /// More logging: -v for debug, -vv for trace.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log level (error, warn, info, debug, trace); overrides -v and `[Core] log_level`.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Single-instance lock file (default /run/gce-guest-agents/DAEMON.lock).
    #[arg(long, value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
}

impl CommonArgs {
    /// The configuration layers to load.
    pub fn config_paths(&self) -> ConfigPaths {
        match &self.config {
            Some(path) => ConfigPaths::for_admin(path),
            None => ConfigPaths::system(),
        }
    }

    /// `--log-level`, else `-v`/`-vv`, else `[Core] log_level`. (`RUST_LOG` still wins inside
    /// [`crate::logging::init`].)
    pub fn effective_log_level(&self, config: &Config) -> String {
        if let Some(level) = &self.log_level {
            return level.clone();
        }
        match self.verbose {
            0 => config.core.log_level.clone(),
            1 => "debug".to_string(),
            _ => "trace".to_string(),
        }
    }

    /// `--lock-file`, else [`crate::lock::default_lock_path`].
    pub fn lock_path(&self, daemon: &str) -> PathBuf {
        self.lock_file
            .clone()
            .unwrap_or_else(|| crate::lock::default_lock_path(daemon))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn parse(args: &[&str]) -> CommonArgs {
        Cli::try_parse_from(std::iter::once("daemon").chain(args.iter().copied()))
            .expect("parse")
            .common
    }

    #[test]
    fn flags_parse_and_level_precedence() {
        let mut config = Config::default();
        config.core.log_level = "warn".into();
        assert_eq!(parse(&[]).effective_log_level(&config), "warn");
        assert_eq!(parse(&["-v"]).effective_log_level(&config), "debug");
        assert_eq!(parse(&["-vv"]).effective_log_level(&config), "trace");
        assert_eq!(
            parse(&["-vv", "--log-level", "error"]).effective_log_level(&config),
            "error"
        );
        let a = parse(&["--config", "/tmp/c.cfg", "--once", "--lock-file", "/tmp/l"]);
        assert!(a.once);
        assert_eq!(a.config_paths(), ConfigPaths::for_admin("/tmp/c.cfg"));
        assert_eq!(
            a.config_paths().template,
            PathBuf::from("/tmp/c.cfg.template")
        );
        assert_eq!(a.lock_path("accounts"), PathBuf::from("/tmp/l"));
        assert_eq!(parse(&[]).config_paths(), ConfigPaths::system());
    }
}
