//! The pure core: from a metadata snapshot, the local links and the config, compute the set of
//! routes that should exist; and the difference between that set and what the kernel has.
//! No I/O here, so every rule of SPEC.md §4 is a table row in the tests below.

use gce_metadata::NetworkInterface;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the `[IpForwarding]` section means to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Route protocol id that marks our routes (`proto 66`).
    pub proto: u8,
    pub ip_aliases: bool,
    pub target_instance_ips: bool,
}

/// The protocol id used when the configured one is unusable.
pub const DEFAULT_PROTO: u8 = 66;

/// Protocol ids the kernel and iproute2 assign themselves (unspec, redirect, kernel, boot,
/// static). Owning one of them would make us delete routes we did not create.
const RESERVED_PROTOS: std::ops::RangeInclusive<u8> = 0..=4;

impl Default for Options {
    fn default() -> Self {
        Options {
            proto: DEFAULT_PROTO,
            ip_aliases: true,
            target_instance_ips: true,
        }
    }
}

impl Options {
    /// Build from the raw config values. A reserved protocol id is replaced by 66 and reported:
    /// a bad value must not crash the daemon, and must not make it own the kernel's routes.
    pub fn new(proto: u8, ip_aliases: bool, target_instance_ips: bool) -> (Options, Option<u8>) {
        let (proto, rejected) = if RESERVED_PROTOS.contains(&proto) {
            (DEFAULT_PROTO, Some(proto))
        } else {
            (proto, None)
        };
        let opts = Options {
            proto,
            ip_aliases,
            target_instance_ips,
        };
        (opts, rejected)
    }
}

/// A network prefix with the host bits cleared (what the kernel stores and dumps back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `addr/len` with host bits cleared; `None` if `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
            _ => return None,
        };
        Some(Prefix { addr, len })
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why an address from metadata was not turned into a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not an IPv4/IPv6 address, or a malformed `/prefix`.
    Syntax,
    /// The prefix is longer than the family allows (`/33`, `/129`).
    PrefixTooLong,
    /// `/0` would make every destination local and cut the machine off the network.
    DefaultRoute,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::Syntax => "not an IP address or CIDR range",
            Invalid::PrefixTooLong => "prefix length out of range",
            Invalid::DefaultRoute => "a /0 range would make every address local",
        })
    }
}

/// Parse a forwarded IP or alias range: a bare address (→ /32 or /128) or `addr/len`.
/// Surrounding whitespace is ignored; nothing else is forgiven (std's parsers reject
/// `1111.1.1.1`, `1.1.1.`, `1.1.1.a`, `1.1.1.1.1`, leading zeros and zone ids).
pub fn parse_prefix(s: &str) -> Result<Prefix, Invalid> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        None => (s, None),
        Some((a, l)) => (a, Some(l)),
    };
    let addr: IpAddr = addr.parse().map_err(|_| Invalid::Syntax)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        // Digits only: u8's parser would accept a leading `+`.
        Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
            l.parse::<u8>().map_err(|_| Invalid::PrefixTooLong)?
        }
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(Invalid::PrefixTooLong);
        }
        Some(_) => return Err(Invalid::Syntax),
    };
    if len == 0 {
        return Err(Invalid::DefaultRoute);
    }
    Prefix::new(addr, len).ok_or(Invalid::PrefixTooLong)
}

/// A local interface, as far as matching is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// One of our routes: `local DST dev IFINDEX table local proto P scope host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Prefix,
    pub ifindex: u32,
}

/// Something about the snapshot worth telling a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    InvalidAddress {
        mac: String,
        field: &'static str,
        value: String,
        why: Invalid,
    },
    /// A metadata NIC with no local interface carrying its MAC.
    NicNotFound { mac: String },
}

impl Warning {
    /// A key under which this warning is logged only once.
    pub fn key(&self) -> String {
        match self {
            Warning::InvalidAddress {
                mac, field, value, ..
            } => {
                format!("invalid {mac} {field} {value}")
            }
            Warning::NicNotFound { mac } => format!("missing {mac}"),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::InvalidAddress {
                mac,
                field,
                value,
                why,
            } => write!(
                f,
                "skipping {field} entry {value:?} of the NIC with MAC {mac}: {why}"
            ),
            Warning::NicNotFound { mac } => write!(
                f,
                "no local interface has MAC {mac}; its forwarded IPs are not routed until it appears"
            ),
        }
    }
}

/// Normalise a MAC for comparison: trimmed, lower case.
pub fn normalize_mac(mac: &str) -> String {
    mac.trim().to_ascii_lowercase()
}

/// The link a metadata NIC refers to. Several links can share a MAC (VLANs, bonds, bridges
/// take their parent's): the lowest index is the one created first, the physical NIC.
fn link_for<'a>(links: &'a [Link], mac: &str) -> Option<&'a Link> {
    links
        .iter()
        .filter(|l| normalize_mac(&l.mac) == mac)
        .min_by_key(|l| l.index)
}

/// The routes the snapshot asks for on this machine, and the problems found on the way.
pub fn desired_routes(
    nics: &[NetworkInterface],
    links: &[Link],
    opts: &Options,
) -> (BTreeSet<Route>, Vec<Warning>) {
    let mut routes = BTreeSet::new();
    let mut warnings = Vec::new();
    for nic in nics {
        let mac = normalize_mac(&nic.mac);
        let mut fields: Vec<(&'static str, &[String])> = vec![
            ("forwardedIps", &nic.forwarded_ips),
            ("forwardedIpv6s", &nic.forwarded_ipv6s),
        ];
        if opts.ip_aliases {
            fields.push(("ipAliases", &nic.ip_aliases));
        }
        if opts.target_instance_ips {
            fields.push(("targetInstanceIps", &nic.target_instance_ips));
        }
        let wanted: Vec<Prefix> = fields
            .into_iter()
            .flat_map(|(field, values)| values.iter().map(move |v| (field, v)))
            .filter_map(|(field, value)| match parse_prefix(value) {
                Ok(p) => Some(p),
                Err(why) => {
                    warnings.push(Warning::InvalidAddress {
                        mac: mac.clone(),
                        field,
                        value: value.clone(),
                        why,
                    });
                    None
                }
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        match link_for(links, &mac) {
            Some(link) => routes.extend(wanted.into_iter().map(|dst| Route {
                dst,
                ifindex: link.index,
            })),
            None => warnings.push(Warning::NicNotFound { mac }),
        }
    }
    (routes, warnings)
}

/// `(to_add, to_remove)` that turn `current` into `desired`.
pub fn diff(desired: &BTreeSet<Route>, current: &BTreeSet<Route>) -> (Vec<Route>, Vec<Route>) {
    let add = desired.difference(current).copied().collect();
    let remove = current.difference(desired).copied().collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        parse_prefix(s).unwrap()
    }

    fn nic(mac: &str) -> NetworkInterface {
        NetworkInterface {
            mac: mac.to_string(),
            ..Default::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: "42:01:0a:8a:00:07".into(),
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mac: "42:01:0a:8a:00:08".into(),
            },
        ]
    }

    #[test]
    fn spec_section_4_valid_and_invalid_forwarded_ips() {
        let rows: &[(&str, Result<&str, Invalid>)] = &[
            ("1.1.1.1", Ok("1.1.1.1/32")),
            ("1.1.1.1/11", Ok("1.0.0.0/11")),
            ("1111.1.1.1", Err(Invalid::Syntax)),
            ("1.1.1.", Err(Invalid::Syntax)),
            ("1.1.1.a", Err(Invalid::Syntax)),
            ("123.123.123.123/123", Err(Invalid::PrefixTooLong)),
            ("123.123.123.123/", Err(Invalid::Syntax)),
            ("1.1.1.1.1", Err(Invalid::Syntax)),
        ];
        for (input, want) in rows {
            let got = parse_prefix(input).map(|p| p.to_string());
            assert_eq!(got, want.map(str::to_string), "{input:?}");
        }
    }

    #[test]
    fn other_malformed_inputs_are_rejected() {
        let rows: &[(&str, Invalid)] = &[
            ("", Invalid::Syntax),
            ("   ", Invalid::Syntax),
            ("1.1.1.1/+8", Invalid::Syntax),
            ("1.1.1.1/-1", Invalid::Syntax),
            ("1.1.1.1/8/8", Invalid::Syntax),
            ("1.1.1.1/ 8", Invalid::Syntax),
            ("1.1.1.1/33", Invalid::PrefixTooLong),
            ("1.1.1.1/256", Invalid::PrefixTooLong),
            ("1.1.1.1/00000032", Invalid::PrefixTooLong),
            ("01.1.1.1", Invalid::Syntax),
            ("2001:db8::1/129", Invalid::PrefixTooLong),
            ("2001:db8:::1", Invalid::Syntax),
            ("2001:db8::g", Invalid::Syntax),
            ("fe80::1%eth0", Invalid::Syntax),
            ("[2001:db8::1]", Invalid::Syntax),
            ("0.0.0.0/0", Invalid::DefaultRoute),
            ("::/0", Invalid::DefaultRoute),
        ];
        for (input, want) in rows {
            assert_eq!(parse_prefix(input), Err(*want), "{input:?}");
        }
    }

    #[test]
    fn bare_addresses_get_host_prefixes_and_cidrs_keep_theirs() {
        let rows = [
            ("10.1.2.3", "10.1.2.3/32"),
            (" 10.1.2.3\n", "10.1.2.3/32"),
            ("10.24.3.0/24", "10.24.3.0/24"),
            ("10.24.3.77/24", "10.24.3.0/24"),
            ("10.1.2.3/32", "10.1.2.3/32"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("2001:db8::/96", "2001:db8::/96"),
            ("2001:db8::5/64", "2001:db8::/64"),
            ("1.2.3.4/1", "0.0.0.0/1"),
        ];
        for (input, want) in rows {
            assert_eq!(p(input).to_string(), want, "{input:?}");
        }
    }

    #[test]
    fn nics_match_local_links_by_mac_ignoring_case() {
        let mut a = nic("42:01:0A:8A:00:07");
        a.forwarded_ips = strings(&["10.1.2.3"]);
        let mut b = nic(" 42:01:0a:8a:00:08 ");
        b.forwarded_ipv6s = strings(&["2001:db8::1"]);
        let (routes, warnings) = desired_routes(&[a, b], &links(), &Options::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        let want: BTreeSet<Route> = [
            Route {
                dst: p("10.1.2.3"),
                ifindex: 2,
            },
            Route {
                dst: p("2001:db8::1"),
                ifindex: 3,
            },
        ]
        .into();
        assert_eq!(routes, want);
    }

    #[test]
    fn the_lowest_index_wins_when_links_share_a_mac() {
        let mut l = links();
        l.push(Link {
            index: 9,
            name: "eth0.100".into(),
            mac: "42:01:0a:8a:00:07".into(),
        });
        l.reverse();
        let mut a = nic("42:01:0a:8a:00:07");
        a.forwarded_ips = strings(&["10.1.2.3"]);
        let (routes, _) = desired_routes(&[a], &l, &Options::default());
        assert_eq!(routes.iter().map(|r| r.ifindex).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn wanted_addresses_follow_the_alias_and_target_instance_flags() {
        let mut n = nic("42:01:0a:8a:00:07");
        n.forwarded_ips = strings(&["10.0.0.1"]);
        n.forwarded_ipv6s = strings(&["2001:db8::1"]);
        n.ip_aliases = strings(&["10.24.3.0/24"]);
        n.target_instance_ips = strings(&["10.0.0.9"]);
        let rows = [
            (
                true,
                true,
                vec![
                    "10.0.0.1/32",
                    "10.0.0.9/32",
                    "10.24.3.0/24",
                    "2001:db8::1/128",
                ],
            ),
            (
                false,
                true,
                vec!["10.0.0.1/32", "10.0.0.9/32", "2001:db8::1/128"],
            ),
            (
                true,
                false,
                vec!["10.0.0.1/32", "10.24.3.0/24", "2001:db8::1/128"],
            ),
            (false, false, vec!["10.0.0.1/32", "2001:db8::1/128"]),
        ];
        for (ip_aliases, target_instance_ips, want) in rows {
            let opts = Options {
                ip_aliases,
                target_instance_ips,
                ..Options::default()
            };
            let (routes, _) = desired_routes(std::slice::from_ref(&n), &links(), &opts);
            let got: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
            assert_eq!(
                got, want,
                "ip_aliases={ip_aliases} target={target_instance_ips}"
            );
        }
    }

    #[test]
    fn invalid_addresses_are_skipped_with_one_warning_each() {
        let mut n = nic("42:01:0a:8a:00:07");
        n.forwarded_ips = strings(&["1.1.1.a", "10.0.0.1", "1.1.1.1.1"]);
        n.ip_aliases = strings(&["10.0.0.0/33"]);
        let (routes, warnings) = desired_routes(&[n], &links(), &Options::default());
        assert_eq!(routes.len(), 1);
        let values: Vec<String> = warnings
            .iter()
            .map(|w| match w {
                Warning::InvalidAddress { value, .. } => value.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(values, ["1.1.1.a", "1.1.1.1.1", "10.0.0.0/33"]);
    }

    #[test]
    fn a_nic_missing_locally_is_reported_and_routes_nothing() {
        let mut n = nic("42:01:0a:8a:00:99");
        n.forwarded_ips = strings(&["10.0.0.1"]);
        let quiet = nic("42:01:0a:8a:00:98"); // nothing wanted: nothing to report
        let (routes, warnings) = desired_routes(&[n, quiet], &links(), &Options::default());
        assert!(routes.is_empty());
        assert_eq!(
            warnings,
            [Warning::NicNotFound {
                mac: "42:01:0a:8a:00:99".into()
            }]
        );
    }

    #[test]
    fn diff_adds_what_is_missing_and_removes_what_is_stale() {
        let r = |s: &str, i| Route {
            dst: p(s),
            ifindex: i,
        };
        let desired: BTreeSet<Route> =
            [r("10.0.0.1", 2), r("10.0.0.2", 2), r("10.0.0.3", 3)].into();
        let current: BTreeSet<Route> =
            [r("10.0.0.2", 2), r("10.0.0.3", 2), r("10.0.0.4", 2)].into();
        let (add, remove) = diff(&desired, &current);
        assert_eq!(add, [r("10.0.0.1", 2), r("10.0.0.3", 3)]);
        assert_eq!(remove, [r("10.0.0.3", 2), r("10.0.0.4", 2)]);
        let (add, remove) = diff(&desired, &desired);
        assert!(add.is_empty() && remove.is_empty());
    }

    #[test]
    fn reserved_protocol_ids_fall_back_to_66() {
        for (configured, want, rejected) in [
            (66, 66, None),
            (42, 42, None),
            (5, 5, None),
            (255, 255, None),
            (0, 66, Some(0)),
            (2, 66, Some(2)),
            (4, 66, Some(4)),
        ] {
            let (o, r) = Options::new(configured, true, true);
            assert_eq!((o.proto, r), (want, rejected), "{configured}");
        }
    }
}
