//! Which scripts to run: the metadata keys, their precedence and their order (SPEC §5). Pure.
//!
//! Keys are `<type>-script-url` and `<type>-script`. If the instance has either key for the type,
//! the project's keys are ignored entirely (an instance can opt out of a project-wide script by
//! setting an empty value). Order: the URL script first, then the inline one — the order of
//! Google's Python runner, which fetched `-script-url` and then `-script`.

use std::collections::BTreeMap;
use std::fmt;

/// `startup` or `shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScriptKind {
    Startup,
    Shutdown,
}

impl ScriptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptKind::Startup => "startup",
            ScriptKind::Shutdown => "shutdown",
        }
    }

    /// The metadata keys for this kind, in run order: `(url key, inline key)`.
    pub fn keys(self) -> [String; 2] {
        [
            format!("{}-script-url", self.as_str()),
            format!("{}-script", self.as_str()),
        ]
    }
}

impl fmt::Display for ScriptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a script's text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Inline(String),
    Url(String),
}

/// One script to run, named by its metadata key (`startup-script`, `shutdown-script-url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub key: String,
    pub source: Source,
}

/// Which attribute set the scripts came from (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Instance,
    Project,
    None,
}

/// The scripts of `kind`, in run order. A key that is present but blank (after trimming) is
/// treated as present for precedence but yields nothing to run.
pub fn select(
    kind: ScriptKind,
    instance: &BTreeMap<String, String>,
    project: &BTreeMap<String, String>,
) -> (Origin, Vec<Script>) {
    let keys = kind.keys();
    let (origin, attrs) = if keys.iter().any(|k| instance.contains_key(k)) {
        (Origin::Instance, instance)
    } else if keys.iter().any(|k| project.contains_key(k)) {
        (Origin::Project, project)
    } else {
        return (Origin::None, Vec::new());
    };
    let [url_key, inline_key] = keys;
    let mut out = Vec::new();
    if let Some(url) = attrs
        .get(&url_key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        out.push(Script {
            key: url_key,
            source: Source::Url(url.to_string()),
        });
    }
    if let Some(text) = attrs.get(&inline_key).filter(|v| !v.trim().is_empty()) {
        out.push(Script {
            key: inline_key,
            source: Source::Inline(text.clone()),
        });
    }
    (origin, out)
}

/// Whether `kind` has any key in `attrs` (used to decide if project attributes are needed).
pub fn has_keys(kind: ScriptKind, attrs: &BTreeMap<String, String>) -> bool {
    kind.keys().iter().any(|k| attrs.contains_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(
        kind: ScriptKind,
        inst: &[(&str, &str)],
        proj: &[(&str, &str)],
    ) -> (Origin, Vec<String>) {
        let (o, s) = select(kind, &attrs(inst), &attrs(proj));
        let names = s
            .into_iter()
            .map(|s| match s.source {
                Source::Inline(t) => format!("{}={}", s.key, t),
                Source::Url(u) => format!("{}->{}", s.key, u),
            })
            .collect();
        (o, names)
    }

    #[test]
    fn keys_precedence_and_order_follow_spec_5() {
        use Origin::*;
        use ScriptKind::*;
        #[allow(clippy::type_complexity)]
        let rows: &[(
            &str,
            ScriptKind,
            &[(&str, &str)],
            &[(&str, &str)],
            Origin,
            &[&str],
        )] = &[
            ("nothing anywhere", Startup, &[], &[], None, &[]),
            (
                "instance inline",
                Startup,
                &[("startup-script", "echo i")],
                &[],
                Instance,
                &["startup-script=echo i"],
            ),
            (
                "project used when instance has no key",
                Startup,
                &[("ssh-keys", "x")],
                &[("startup-script", "echo p")],
                Project,
                &["startup-script=echo p"],
            ),
            (
                "instance shadows project entirely",
                Startup,
                &[("startup-script-url", "http://h/a")],
                &[("startup-script", "echo p")],
                Instance,
                &["startup-script-url->http://h/a"],
            ),
            (
                "url runs before inline",
                Startup,
                &[
                    ("startup-script", "echo i"),
                    ("startup-script-url", "gs://b/o"),
                ],
                &[],
                Instance,
                &["startup-script-url->gs://b/o", "startup-script=echo i"],
            ),
            (
                "empty instance key still shadows project",
                Startup,
                &[("startup-script", "")],
                &[("startup-script", "echo p")],
                Instance,
                &[],
            ),
            (
                "other kind's keys do not count",
                Shutdown,
                &[("startup-script", "echo i")],
                &[("shutdown-script", "echo p")],
                Project,
                &["shutdown-script=echo p"],
            ),
            (
                "url is trimmed",
                Shutdown,
                &[("shutdown-script-url", "  http://h/s \n")],
                &[],
                Instance,
                &["shutdown-script-url->http://h/s"],
            ),
        ];
        for (name, kind, inst, proj, origin, want) in rows {
            let (o, got) = run(*kind, inst, proj);
            assert_eq!(o, *origin, "{name}");
            assert_eq!(
                got,
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{name}"
            );
        }
    }
}
