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

/// What the command line asks a daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Run(CommonArgs),
    Help,
    Version,
}

impl CommonArgs {
    /// Parses a resident daemon's command line without clap: clap's parser would stay mapped
    /// in every idle daemon (about 0.1–0.2 MiB of resident code for five flags). Accepts
    /// `--flag VALUE` and `--flag=VALUE`, `-v`/`-vv`/`--verbose`, `-h`/`--help`,
    /// `-V`/`--version`.
    pub fn parse_from<I, S>(args: I) -> Result<Invocation, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        let mut out = CommonArgs::default();
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            let arg = arg
                .into_string()
                .map_err(|a| format!("argument {a:?} is not UTF-8"))?;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it
                        .next()
                        .and_then(|v| v.into_string().ok())
                        .ok_or_else(|| format!("{name} needs a value")),
                }
            };
            match flag.as_str() {
                "--config" => out.config = Some(PathBuf::from(value("--config")?)),
                "--log-level" => out.log_level = Some(value("--log-level")?),
                "--lock-file" => out.lock_file = Some(PathBuf::from(value("--lock-file")?)),
                "--once" if inline.is_none() => out.once = true,
                "--verbose" if inline.is_none() => out.verbose = out.verbose.saturating_add(1),
                "-h" | "--help" => return Ok(Invocation::Help),
                "-V" | "--version" => return Ok(Invocation::Version),
                f if f.len() > 1
                    && f.starts_with('-')
                    && !f.starts_with("--")
                    && f[1..].chars().all(|c| c == 'v') =>
                {
                    out.verbose = out
                        .verbose
                        .saturating_add(u8::try_from(f.len() - 1).unwrap_or(u8::MAX));
                }
                _ => return Err(format!("unexpected argument '{arg}'")),
            }
        }
        Ok(Invocation::Run(out))
    }

    /// [`Self::parse_from`] on this process's arguments; prints help or the version and exits,
    /// or exits with status 2 and a usage line on a bad argument.
    pub fn from_env(name: &str, about: &str) -> CommonArgs {
        match CommonArgs::parse_from(std::env::args_os().skip(1)) {
            Ok(Invocation::Run(args)) => args,
            Ok(Invocation::Help) => {
                println!("{about}\n\n{}", usage(name));
                std::process::exit(0);
            }
            Ok(Invocation::Version) => {
                println!("{name} {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{name}: {e}\n\n{}", usage(name));
                std::process::exit(2);
            }
        }
    }
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

fn usage(name: &str) -> String {
    format!(
        "Usage: {name} [OPTIONS]\n\n\
         Options:\n\
         \x20     --config <PATH>     Admin configuration file; PATH.template and PATH.distro are read beside it\n\
         \x20     --once              Apply one metadata snapshot and exit instead of long-polling\n\
         \x20 -v, --verbose...        More logging: -v for debug, -vv for trace\n\
         \x20     --log-level <LEVEL> Log level (error, warn, info, debug, trace); overrides -v and [Core] log_level\n\
         \x20     --lock-file <PATH>  Single-instance lock file (default /run/gce-guest-agents/DAEMON.lock)\n\
         \x20 -h, --help              Print help\n\
         \x20 -V, --version           Print version"
    )
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

    fn run(args: &[&str]) -> CommonArgs {
        match CommonArgs::parse_from(args.iter().copied()).expect("parse") {
            Invocation::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// The hand parser the daemons use agrees with the clap definition the script runner uses.
    #[test]
    fn hand_parser_matches_clap() {
        for args in [
            &[][..],
            &["-v"],
            &["-vv"],
            &["-v", "--verbose"],
            &["--config", "/tmp/c.cfg", "--once", "--lock-file", "/tmp/l"],
            &["--config=/tmp/c.cfg", "--log-level=debug", "--lock-file=/x"],
            &["--log-level", "error", "-vv"],
        ] {
            assert_eq!(run(args), parse(args), "{args:?}");
        }
        assert_eq!(CommonArgs::parse_from(["--help"]), Ok(Invocation::Help));
        assert_eq!(CommonArgs::parse_from(["-V"]), Ok(Invocation::Version));
        for bad in [
            &["--bogus"][..],
            &["--config"],
            &["-x"],
            &["--once=yes"],
            &["extra"],
        ] {
            assert!(
                CommonArgs::parse_from(bad.iter().copied()).is_err(),
                "{bad:?}"
            );
        }
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
