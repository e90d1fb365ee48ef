//! The hostname, the pure part: which names `instance/hostname` yields, and which it must not.
//!
//! Google's agent and the guest-configs hooks both set the *short* name (the first label) as the
//! hostname and keep the FQDN for /etc/hosts; so do we, so that a DHCP renew running their hook
//! does not flip the hostname back and forth. A name holding `metadata.google.internal` is refused
//! (the 2021 attack spoofed it through DHCP); so is anything that is not a DNS name, since the
//! name is written into /etc/hosts and a space or newline there would add entries of its own.

/// A usable hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName {
    pub fqdn: String,
    /// The first label: what `sethostname` and /etc/hostname get.
    pub short: String,
}

/// Why `instance/hostname` is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHostname {
    #[error("instance/hostname is empty")]
    Empty,
    #[error(
        "refusing hostname {0:?}: it names the metadata server (the DHCP spoofing attack of 2021)"
    )]
    MetadataServer(String),
    #[error("refusing hostname {name:?}: {reason}")]
    Invalid { name: String, reason: &'static str },
}

/// Parse `instance/hostname` (one trailing dot allowed).
pub fn parse(raw: &str) -> Result<HostName, BadHostname> {
    let name = raw.trim();
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(BadHostname::Empty);
    }
    // Substring and case-insensitive, as the guest-configs script checks it.
    if name
        .to_ascii_lowercase()
        .contains("metadata.google.internal")
    {
        return Err(BadHostname::MetadataServer(name.to_string()));
    }
    let invalid = |reason| {
        Err(BadHostname::Invalid {
            name: name.to_string(),
            reason,
        })
    };
    if name.len() > 253 {
        return invalid("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return invalid("each label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return invalid("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid("a label may not start or end with '-'");
        }
    }
    let short = name.split('.').next().unwrap_or(name).to_string();
    Ok(HostName {
        fqdn: name.to_string(),
        short,
    })
}

/// `/etc/hostname`'s content for `short`.
pub fn hostname_file(short: &str) -> String {
    format!("{short}\n")
}

/// Whether `/etc/hostname` already names `short` (its first line, blanks ignored).
pub fn hostname_file_says(content: &[u8], short: &str) -> bool {
    String::from_utf8_lossy(content)
        .lines()
        .next()
        .is_some_and(|l| l.trim() == short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_parse_into_fqdn_and_short_name() {
        let ok = [
            ("vm0.c.my-proj.internal", "vm0.c.my-proj.internal", "vm0"),
            (
                " vm0.c.my-proj.internal.\n",
                "vm0.c.my-proj.internal",
                "vm0",
            ),
            ("web-1.example.com", "web-1.example.com", "web-1"),
            ("single", "single", "single"),
            ("Caps.Example", "Caps.Example", "Caps"),
        ];
        for (raw, fqdn, short) in ok {
            assert_eq!(
                parse(raw),
                Ok(HostName {
                    fqdn: fqdn.into(),
                    short: short.into()
                }),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn bad_hostnames_are_refused() {
        let metadata = [
            "metadata.google.internal",
            "METADATA.Google.Internal.",
            "metadata.google.internal.evil.com",
            "x.metadata.google.internal",
        ];
        for raw in metadata {
            assert!(
                matches!(parse(raw), Err(BadHostname::MetadataServer(_))),
                "{raw:?}"
            );
        }
        assert_eq!(parse("  "), Err(BadHostname::Empty));
        assert_eq!(parse("."), Err(BadHostname::Empty));
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(60); 5].join(".");
        for raw in [
            "vm0 10.0.0.1",
            "vm0\n10.6.6.6 evil",
            "a..b",
            "-a.b",
            "a-.b",
            "under_score.x",
            "é.x",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(
                matches!(parse(raw), Err(BadHostname::Invalid { .. })),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn hostname_file_comparison() {
        assert!(hostname_file_says(b"vm0\n", "vm0"));
        assert!(hostname_file_says(b"vm0", "vm0"));
        assert!(hostname_file_says(b" vm0 \n# x\n", "vm0"));
        assert!(!hostname_file_says(b"vm0.c.p.internal\n", "vm0"));
        assert!(!hostname_file_says(b"", "vm0"));
        assert_eq!(hostname_file("vm0"), "vm0\n");
    }
}
