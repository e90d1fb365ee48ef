//! What a user's gcloud installation already knows: its configuration directory
//! (`CLOUDSDK_CONFIG`, else `~/.config/gcloud`), the active configuration
//! (`CLOUDSDK_ACTIVE_CONFIG_NAME`, else the `active_config` file, else `default`) and the
//! `[core] project` / `[compute] zone` / `[core] account` properties in
//! `configurations/config_<name>`, with `CLOUDSDK_CORE_PROJECT` / `CLOUDSDK_COMPUTE_ZONE` /
//! `CLOUDSDK_CORE_ACCOUNT` in front, as gcloud itself resolves them.
//!
//! Reading is split from the environment: [`Env`] carries the variables and home directory so
//! the rules are testable without touching the process environment.

use std::path::{Path, PathBuf};

/// The environment gcloud's rules read.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub home: Option<PathBuf>,
    pub cloudsdk_config: Option<PathBuf>,
    pub active_config_name: Option<String>,
    pub core_project: Option<String>,
    pub compute_zone: Option<String>,
    pub core_account: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            cloudsdk_config: var("CLOUDSDK_CONFIG").map(PathBuf::from),
            active_config_name: var("CLOUDSDK_ACTIVE_CONFIG_NAME"),
            core_project: var("CLOUDSDK_CORE_PROJECT"),
            compute_zone: var("CLOUDSDK_COMPUTE_ZONE"),
            core_account: var("CLOUDSDK_CORE_ACCOUNT"),
        }
    }

    /// gcloud's configuration directory.
    pub fn config_dir(&self) -> Option<PathBuf> {
        self.cloudsdk_config
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".config/gcloud")))
    }

    /// Where `gcloud auth application-default login` leaves its credentials.
    pub fn adc_file(&self) -> Option<PathBuf> {
        self.config_dir()
            .map(|d| d.join("application_default_credentials.json"))
    }

    /// The active configuration's name: the variable, else the `active_config` file's first
    /// line, else `default`.
    pub fn active_config(&self) -> String {
        if let Some(n) = &self.active_config_name {
            return n.clone();
        }
        self.config_dir()
            .and_then(|d| std::fs::read_to_string(d.join("active_config")).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string())
    }

    /// The file of the active configuration.
    pub fn active_config_file(&self) -> Option<PathBuf> {
        self.config_dir().map(|d| {
            d.join("configurations")
                .join(format!("config_{}", self.active_config()))
        })
    }
}

/// A value and the place it came from (for messages: "project my-proj (from …)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: String,
    pub from: String,
}

/// `[section] key` of an INI text as gcloud writes it (`key = value`, `#`/`;` comments).
pub fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current != section {
            continue;
        }
        let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            continue;
        };
        if k.trim() == key {
            let v = v.trim();
            return (!v.is_empty()).then(|| v.to_string());
        }
    }
    None
}

/// One gcloud property: the variable first, then the active configuration file. `Err` lists
/// what was tried, for the caller's message.
pub fn property(
    env: &Env,
    var_name: &str,
    var: Option<&String>,
    section: &str,
    key: &str,
) -> Result<Found, Vec<String>> {
    if let Some(v) = var {
        return Ok(Found {
            value: v.clone(),
            from: var_name.to_string(),
        });
    }
    let mut tried = vec![format!("{var_name}: not set")];
    let Some(file) = env.active_config_file() else {
        tried.push("gcloud configuration: neither CLOUDSDK_CONFIG nor HOME is set".into());
        return Err(tried);
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => match ini_value(&text, section, key) {
            Some(value) => Ok(Found {
                value,
                from: format!("{} [{section}] {key}", file.display()),
            }),
            None => {
                tried.push(format!("{}: no [{section}] {key}", file.display()));
                Err(tried)
            }
        },
        Err(e) => {
            tried.push(format!("{}: {}", file.display(), short_io(&e)));
            Err(tried)
        }
    }
}

pub fn project(env: &Env) -> Result<Found, Vec<String>> {
    property(
        env,
        "CLOUDSDK_CORE_PROJECT",
        env.core_project.as_ref(),
        "core",
        "project",
    )
}

/// gcloud's active account: whose token `gcloud auth print-access-token` prints.
pub fn account(env: &Env) -> Result<Found, Vec<String>> {
    property(
        env,
        "CLOUDSDK_CORE_ACCOUNT",
        env.core_account.as_ref(),
        "core",
        "account",
    )
}

/// The zone, as a bare name (gcloud accepts a zone URL there too).
pub fn zone(env: &Env) -> Result<Found, Vec<String>> {
    property(
        env,
        "CLOUDSDK_COMPUTE_ZONE",
        env.compute_zone.as_ref(),
        "compute",
        "zone",
    )
    .map(|mut f| {
        f.value = last_segment(&f.value).to_string();
        f
    })
}

/// `projects/p/zones/us-central1-a` → `us-central1-a`.
pub fn last_segment(s: &str) -> &str {
    s.trim_end_matches('/').rsplit('/').next().unwrap_or(s)
}

/// "not found" rather than "No such file or directory (os error 2)".
pub fn short_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Whether `program` is an executable file in one of `PATH`'s directories.
pub fn on_path(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path_var = path_var?;
    std::env::split_paths(path_var)
        .map(|d| d.join(program))
        .find(|p| is_executable(p, |m| m.permissions().mode() & 0o111 != 0))
}

fn is_executable(p: &Path, exec: impl Fn(&std::fs::Metadata) -> bool) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && exec(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_config(active: Option<&str>, configs: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("configurations")).unwrap();
        if let Some(a) = active {
            std::fs::write(d.path().join("active_config"), format!("{a}\n")).unwrap();
        }
        for (name, text) in configs {
            std::fs::write(
                d.path()
                    .join("configurations")
                    .join(format!("config_{name}")),
                text,
            )
            .unwrap();
        }
        d
    }

    #[test]
    fn ini_values_are_read_per_section_with_comments_and_spacing() {
        let text = "# gcloud\n[core]\naccount = a@example.com\nproject = my-proj\n\n[compute]\n; comment\nzone=europe-west1-b\nregion = europe-west1\n";
        let rows = [
            ("core", "project", Some("my-proj")),
            ("compute", "zone", Some("europe-west1-b")),
            ("compute", "project", None),
            ("core", "zone", None),
            ("auth", "x", None),
        ];
        for (section, key, want) in rows {
            assert_eq!(
                ini_value(text, section, key).as_deref(),
                want,
                "[{section}] {key}"
            );
        }
    }

    #[test]
    fn the_variable_beats_the_active_configuration_which_beats_default() {
        let d = fake_config(
            Some("work"),
            &[
                ("default", "[core]\nproject = dflt\n"),
                (
                    "work",
                    "[core]\nproject = work-proj\n[compute]\nzone = us-east1-c\n",
                ),
            ],
        );
        let mut env = Env {
            cloudsdk_config: Some(d.path().to_path_buf()),
            ..Env::default()
        };
        assert_eq!(project(&env).unwrap().value, "work-proj");
        assert_eq!(zone(&env).unwrap().value, "us-east1-c");
        assert!(account(&env).is_err(), "no [core] account in work");
        env.active_config_name = Some("default".into());
        assert_eq!(project(&env).unwrap().value, "dflt");
        let tried = zone(&env).unwrap_err();
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert!(tried[0].contains("CLOUDSDK_COMPUTE_ZONE: not set"));
        assert!(
            tried[1].contains("config_default: no [compute] zone"),
            "{tried:?}"
        );
        env.core_project = Some("from-env".into());
        env.compute_zone = Some("projects/p/zones/asia-east1-a".into());
        assert_eq!(project(&env).unwrap().from, "CLOUDSDK_CORE_PROJECT");
        assert_eq!(zone(&env).unwrap().value, "asia-east1-a");
        env.core_account = Some("dev@example.com".into());
        assert_eq!(account(&env).unwrap().value, "dev@example.com");
    }

    #[test]
    fn without_active_config_file_the_configuration_is_default_under_home() {
        let home = tempfile::tempdir().unwrap();
        let cfg = home.path().join(".config/gcloud/configurations");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("config_default"), "[core]\nproject = p0\n").unwrap();
        let env = Env {
            home: Some(home.path().to_path_buf()),
            ..Env::default()
        };
        assert_eq!(env.active_config(), "default");
        assert_eq!(project(&env).unwrap().value, "p0");
        assert_eq!(
            env.adc_file().unwrap(),
            home.path()
                .join(".config/gcloud/application_default_credentials.json")
        );
        let missing = Env {
            home: Some(home.path().join("nobody")),
            ..Env::default()
        };
        let tried = project(&missing).unwrap_err();
        assert!(tried[1].ends_with("config_default: not found"), "{tried:?}");
    }
}
