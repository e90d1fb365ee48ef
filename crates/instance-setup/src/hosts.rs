//! `/etc/hosts`, the pure part: the `# Added by Google` lines and nothing else.
//!
//! Two writers share these lines on Google's images: the agent and the guest-configs package's
//! `google_set_hostname`, which its dhclient, NetworkManager and networkd-dispatcher hooks run on
//! every DHCP event. That script deletes every line containing `Added by Google`, appends
//! `<ip> <fqdn> <short>  # Added by Google` (unless the name holds `metadata.google.internal`),
//! then appends `169.254.169.254 metadata.google.internal  # Added by Google` unless some line
//! already starts with `169.254.169.254`. Google's newer agent writes the same lines in another
//! order and spacing, so the two rewrite each other's output.
//!
//! We produce, byte for byte, what that script produces from the same facts (the NetworkManager
//! and networkd hooks read them from the same metadata): whichever of the two runs last, the file
//! is the same, and a DHCP renew after us changes nothing. We remove only lines that end with the
//! marker (the script's rule is wider — any line containing it — but a line we keep and it drops
//! is never re-added by us, so the two still agree after it ran once). One difference on purpose:
//! a file without a final newline gets one before our lines (the script's `echo >>` would glue
//! its line onto the last one).
//!
//! IPv6-only instances (the primary interface has no IPv4 address, only `ipv6s`): the host line
//! names the interface's IPv6 address, and the metadata server is pinned at `fd20:ce::254` too,
//! before the IPv4 pin — as Google's newer guest-configs (`google_set_metadata_network`) pin it
//! there, keeping the IPv4 line, which resolvers on such a host sort last. The guest-configs
//! hostname hook only runs on DHCPv4 events, which an IPv6-only instance does not have.

use std::net::IpAddr;

/// The marker at the end of every line we own.
pub const MARKER: &str = "# Added by Google";
/// The pinned metadata server address: defeats the 2021 DHCP + /etc/hosts spoofing of the name.
pub const METADATA_LINE: &str = "169.254.169.254 metadata.google.internal  # Added by Google";
/// The pin on IPv6-only instances, where the server answers at `fd20:ce::254`.
pub const METADATA_LINE_V6: &str = "fd20:ce::254 metadata.google.internal  # Added by Google";
const METADATA_V4: &str = "169.254.169.254";
const METADATA_V6: &str = "fd20:ce::254";

/// What the instance's primary interface has, which decides the metadata pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// An IPv4 address (with or without IPv6): the IPv4 pin only.
    Ipv4,
    /// IPv6 only: the IPv6 pin, then the IPv4 one.
    Ipv6Only,
}

/// Whether `line` starts with the address `addr` as a whole field.
fn starts_with_addr(line: &[u8], addr: &str) -> bool {
    line.strip_prefix(addr.as_bytes())
        .is_some_and(|rest| rest.first().is_none_or(|b| b.is_ascii_whitespace()))
}

/// This instance's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub ip: IpAddr,
    pub fqdn: String,
    pub short: String,
}

impl HostEntry {
    /// `<ip> <fqdn> <short>  # Added by Google` (two spaces, as the guest-configs script writes).
    pub fn line(&self) -> String {
        format!("{} {} {}  {MARKER}", self.ip, self.fqdn, self.short)
    }
}

/// Lines with their terminators, so kept lines are written back byte for byte (CRLF, invalid
/// UTF-8, a missing final newline).
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split_inclusive(|&b| b == b'\n')
}

/// Whether a line is one of ours: it ends with the marker (trailing blanks and CR ignored).
pub fn is_ours(line: &[u8]) -> bool {
    let end = line
        .iter()
        .rposition(|b| !b" \t\r\n".contains(b))
        .map_or(0, |i| i + 1);
    line[..end].ends_with(MARKER.as_bytes())
}

/// The file without our lines: undoes [`rewrite`] exactly for any file that ends with a newline.
pub fn remove_ours(current: &[u8]) -> Vec<u8> {
    lines(current)
        .filter(|l| !is_ours(l))
        .flatten()
        .copied()
        .collect()
}

/// The file as it should be: every other line kept in place, then our host line (if any), then
/// the metadata pins ([`Stack`]), each unless a kept line already starts with its address.
pub fn rewrite(current: &[u8], host: Option<&HostEntry>, stack: Stack) -> Vec<u8> {
    let mut out = remove_ours(current);
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    if let Some(h) = host {
        out.extend_from_slice(h.line().as_bytes());
        out.push(b'\n');
    }
    let pins: &[(&str, &str)] = match stack {
        Stack::Ipv4 => &[(METADATA_V4, METADATA_LINE)],
        Stack::Ipv6Only => &[
            (METADATA_V6, METADATA_LINE_V6),
            (METADATA_V4, METADATA_LINE),
        ],
    };
    for (addr, line) in pins {
        if !lines(&out).any(|l| starts_with_addr(l, addr)) {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out
}

/// Lines not ours that send `metadata.google.internal` somewhere other than the metadata
/// server's addresses (they win over our pin: the resolver takes the first match). Reported,
/// never changed.
pub fn foreign_metadata_entries(current: &[u8]) -> Vec<String> {
    lines(current)
        .filter(|l| !is_ours(l))
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| {
            let mut f = l.split('#').next().unwrap_or("").split_whitespace();
            let addr = f.next();
            addr.is_some_and(|a| a != METADATA_V4 && a != METADATA_V6)
                && f.any(|n| n.eq_ignore_ascii_case("metadata.google.internal"))
        })
        .map(|l| l.trim_end().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str, fqdn: &str) -> HostEntry {
        HostEntry {
            ip: ip.parse().unwrap(),
            fqdn: fqdn.into(),
            short: fqdn.split('.').next().unwrap().into(),
        }
    }

    const DEBIAN: &str = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n";
    const OURS: &str = "10.138.0.7 vm0.c.my-proj.internal vm0  # Added by Google\n169.254.169.254 metadata.google.internal  # Added by Google\n";

    /// Rows: current file, host entry → wanted file.
    #[test]
    fn rewrite_keeps_foreign_lines_and_owns_the_marked_ones() {
        let vm0 = entry("10.138.0.7", "vm0.c.my-proj.internal");
        let vm1 = entry("10.138.0.9", "vm1.c.my-proj.internal");
        let with_ours = format!("{DEBIAN}{OURS}");
        let rows: Vec<(String, Option<&HostEntry>, String)> = vec![
            // Fresh Debian file: our two lines appended.
            (DEBIAN.into(), Some(&vm0), with_ours.clone()),
            // Already right: unchanged.
            (with_ours.clone(), Some(&vm0), with_ours.clone()),
            // New IP and name: updated in place of the old ones, foreign lines untouched.
            (
                with_ours.clone(),
                Some(&vm1),
                format!(
                    "{DEBIAN}10.138.0.9 vm1.c.my-proj.internal vm1  # Added by Google\n{}\n",
                    METADATA_LINE
                ),
            ),
            // No usable hostname (refused, empty or no IP): only the pin stays.
            (
                with_ours.clone(),
                None,
                format!("{DEBIAN}{METADATA_LINE}\n"),
            ),
            // The admin's own metadata line (unmarked) is respected: no second pin.
            (
                format!("{DEBIAN}169.254.169.254 metadata.google.internal metadata\n"),
                Some(&vm0),
                format!(
                    "{DEBIAN}169.254.169.254 metadata.google.internal metadata\n{}\n",
                    vm0.line()
                ),
            ),
            // Google's newer agent's spelling (one space, pin first) becomes ours.
            (
                format!(
                    "{DEBIAN}169.254.169.254 metadata.google.internal # Added by Google\n10.138.0.7 vm0.c.my-proj.internal vm0  # Added by Google\n"
                ),
                Some(&vm0),
                with_ours.clone(),
            ),
            // Our lines in the middle move to the end; CRLF, a comment naming the marker
            // mid-line and non-ASCII text are kept byte for byte.
            (
                format!(
                    "a\r\n{METADATA_LINE}\n# not Added by Google, mine\nb \u{fffd}\n{}\n",
                    vm1.line()
                ),
                Some(&vm0),
                format!("a\r\n# not Added by Google, mine\nb \u{fffd}\n{OURS}"),
            ),
            // Empty or missing file.
            (String::new(), Some(&vm0), OURS.into()),
            // No final newline: one is added before our lines.
            (
                "127.0.0.1 localhost".into(),
                None,
                format!("127.0.0.1 localhost\n{METADATA_LINE}\n"),
            ),
            // Marker with trailing blanks counts as ours.
            (
                format!("{DEBIAN}10.0.0.1 old.internal old  # Added by Google \t\n"),
                Some(&vm0),
                with_ours.clone(),
            ),
        ];
        for (current, host, want) in rows {
            let got = rewrite(current.as_bytes(), host, Stack::Ipv4);
            assert_eq!(
                String::from_utf8_lossy(&got),
                want,
                "from {current:?} with {host:?}"
            );
            // Idempotent: a second run writes nothing new.
            assert_eq!(
                rewrite(&got, host, Stack::Ipv4),
                got,
                "second run from {current:?}"
            );
        }
    }

    /// IPv6-only: the host line names the IPv6 address, the server is pinned at fd20:ce::254
    /// first, then at 169.254.169.254; each pin yields to a line of the admin's for its address.
    #[test]
    fn ipv6_only_instances_pin_the_ipv6_address_first() {
        let vm6 = entry("fd20:1:2:3:0:5::", "vm0.c.my-proj.internal");
        let v6_ours = format!(
            "fd20:1:2:3:0:5:: vm0.c.my-proj.internal vm0  # Added by Google\n{METADATA_LINE_V6}\n{METADATA_LINE}\n"
        );
        let rows: Vec<(String, Option<&HostEntry>, String)> = vec![
            (DEBIAN.into(), Some(&vm6), format!("{DEBIAN}{v6_ours}")),
            // From an IPv4 file (the instance changed stacks): all ours rewritten.
            (
                format!("{DEBIAN}{OURS}"),
                Some(&vm6),
                format!("{DEBIAN}{v6_ours}"),
            ),
            // No usable name: the two pins only.
            (
                DEBIAN.into(),
                None,
                format!("{DEBIAN}{METADATA_LINE_V6}\n{METADATA_LINE}\n"),
            ),
            // The admin's own IPv6 line for the server stays; our IPv4 pin still follows.
            (
                format!("{DEBIAN}fd20:ce::254 metadata.google.internal\n"),
                None,
                format!("{DEBIAN}fd20:ce::254 metadata.google.internal\n{METADATA_LINE}\n"),
            ),
            // A longer address that merely starts with the same digits is not the server's.
            (
                format!("{DEBIAN}fd20:ce::2540 other\n"),
                None,
                format!("{DEBIAN}fd20:ce::2540 other\n{METADATA_LINE_V6}\n{METADATA_LINE}\n"),
            ),
        ];
        for (current, host, want) in rows {
            let got = rewrite(current.as_bytes(), host, Stack::Ipv6Only);
            assert_eq!(String::from_utf8_lossy(&got), want, "from {current:?}");
            assert_eq!(rewrite(&got, host, Stack::Ipv6Only), got, "idempotent");
            // Back to IPv4: the IPv6 pin goes.
            assert!(
                !String::from_utf8_lossy(&rewrite(&got, None, Stack::Ipv4))
                    .contains(METADATA_LINE_V6)
            );
            assert_eq!(
                remove_ours(&got),
                remove_ours(current.as_bytes()),
                "undone byte for byte"
            );
        }
    }

    #[test]
    fn rewrite_keeps_non_utf8_bytes() {
        let current = b"10.0.0.5 caf\xe9\n";
        let got = rewrite(current, None, Stack::Ipv4);
        assert!(got.starts_with(current));
    }

    /// Undoing our edit gives back the original bytes (any file that ends with a newline).
    #[test]
    fn remove_ours_round_trips_byte_identically() {
        let vm0 = entry("10.138.0.7", "vm0.c.my-proj.internal");
        for original in [
            DEBIAN.to_string(),
            String::new(),
            "a\r\n\n# comment\n169.254.169.254 metadata.google.internal\n".into(),
            "x # Added by Google mid-line\n".into(),
        ] {
            for host in [Some(&vm0), None] {
                let edited = rewrite(original.as_bytes(), host, Stack::Ipv4);
                assert_eq!(
                    remove_ours(&edited),
                    original.as_bytes(),
                    "{original:?} {host:?}"
                );
            }
        }
    }

    /// What the guest-configs hook does to the file after us, restated from its documented steps:
    /// drop lines containing the phrase, append the host line, append the pin unless a line
    /// starts with 169.254.169.254.
    fn hook(current: &[u8], host: &HostEntry) -> Vec<u8> {
        let mut out: Vec<u8> = lines(current)
            .filter(|l| !l.windows(15).any(|w| w == b"Added by Google"))
            .flatten()
            .copied()
            .collect();
        out.extend_from_slice(
            format!(
                "{} {} {}  # Added by Google\n",
                host.ip, host.fqdn, host.short
            )
            .as_bytes(),
        );
        if !lines(&out).any(|l| l.starts_with(b"169.254.169.254")) {
            out.extend_from_slice(b"169.254.169.254 metadata.google.internal  # Added by Google\n");
        }
        out
    }

    /// A DHCP renew running the hook after us changes nothing, and we change nothing after it.
    #[test]
    fn no_flapping_with_the_guest_configs_hook() {
        let vm0 = entry("10.138.0.7", "vm0.c.my-proj.internal");
        for original in [
            DEBIAN.to_string(),
            format!("{DEBIAN}169.254.169.254 metadata.google.internal\n"),
            format!("{DEBIAN}{OURS}"),
        ] {
            let ours = rewrite(original.as_bytes(), Some(&vm0), Stack::Ipv4);
            assert_eq!(hook(&ours, &vm0), ours, "hook after us, from {original:?}");
            let theirs = hook(original.as_bytes(), &vm0);
            assert_eq!(
                rewrite(&theirs, Some(&vm0), Stack::Ipv4),
                theirs,
                "us after hook"
            );
        }
    }

    #[test]
    fn foreign_metadata_entries_are_found() {
        let text = format!(
            "{DEBIAN}10.9.9.9 metadata.google.internal\n169.254.169.254 metadata.google.internal\nfd20:ce::254 metadata.google.internal\n# 1.2.3.4 metadata.google.internal\n{METADATA_LINE}\n"
        );
        assert_eq!(
            foreign_metadata_entries(text.as_bytes()),
            ["10.9.9.9 metadata.google.internal"]
        );
    }
}
