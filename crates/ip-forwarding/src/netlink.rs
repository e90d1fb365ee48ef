//! The kernel edge, through rtnetlink: list links, list/add/delete our routes in table `local`,
//! and wake up when something we care about changes (self-healing).
//!
//! Kernel facts this relies on:
//! - route dumps ignore the table/protocol filter unless strict checking is on, so every dump is
//!   filtered here (table 255, type local, our protocol);
//! - deletes carry our protocol id, and the kernel (IPv4 `fib_table_delete`, IPv6
//!   `ip6_route_del`) skips routes of any other protocol: a second guard next to ours;
//! - routes flushed because a link went down produce no RTM_DELROUTE, but the link change does,
//!   so link events also wake us.

use crate::plan::{Link, Prefix, Route};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The `local` routing table (`RT_TABLE_LOCAL`; rtnetlink has no constant for it).
pub const TABLE_LOCAL: u32 = 255;

const RTMGRP_LINK: u32 = 1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// How long to wait after a first relevant event for the rest of a burst (an `ip route flush`,
/// a networkd restart) before reconciling once.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

const EEXIST: i32 = 17;
const ESRCH: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot subscribe to netlink route and link events: {0}")]
    Subscribe(#[source] std::io::Error),
    #[error("netlink request failed while {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

impl Error {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

/// A request connection plus a separate event subscription: a burst of events filling one
/// socket's buffer must not make a request fail with ENOBUFS.
pub struct Netlink {
    handle: rtnetlink::Handle,
    events: Events,
}

struct Events {
    rx: BoxStream<'static, (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// Kept so the connection task stays alive.
    _handle: rtnetlink::Handle,
    /// Set when a relevant event arrived and we are waiting out the debounce; kept in `self` so
    /// that a cancelled `changed()` (it runs inside `select!`) loses nothing.
    due: Option<Instant>,
    closed: bool,
}

impl Netlink {
    /// Open the sockets in the calling thread's network namespace and spawn their connection
    /// tasks on the current tokio runtime.
    pub fn open() -> Result<Netlink, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        tokio::spawn(conn);
        let (mut conn, ev_handle, rx) = rtnetlink::new_connection().map_err(Error::Socket)?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, groups))
            .map_err(Error::Subscribe)?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            events: Events {
                rx: rx.boxed(),
                _handle: ev_handle,
                due: None,
                closed: false,
            },
        })
    }

    /// The underlying handle, for tests and tools that need raw access.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    pub async fn links(&self) -> Result<Vec<Link>, Error> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|source| Error::Request {
                what: "listing links".into(),
                source,
            })?;
            let mut link = Link {
                index: msg.header.index,
                name: String::new(),
                mac: String::new(),
            };
            for attr in msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => link.name = n,
                    LinkAttribute::Address(a) => link.mac = format_mac(&a),
                    _ => {}
                }
            }
            links.push(link);
        }
        Ok(links)
    }

    /// Our routes: table local, type local, protocol `proto`, both families.
    pub async fn routes(&self, proto: u8) -> Result<BTreeSet<Route>, Error> {
        // AF_UNSPEC dumps every family.
        let mut stream = self.handle.route().get(RouteMessage::default()).execute();
        let mut routes = BTreeSet::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|source| Error::Request {
                what: "listing routes".into(),
                source,
            })?;
            if let Some(r) = our_route(&msg, proto) {
                routes.insert(r);
            }
        }
        Ok(routes)
    }

    /// `ip route add to local DST scope host dev IF proto P table local`. Already present is
    /// success.
    pub async fn add(&self, route: &Route, proto: u8) -> Result<(), Error> {
        let msg = route_message(route, proto);
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(source) => {
                let e = Error::Request {
                    what: format!("adding local route {} dev #{}", route.dst, route.ifindex),
                    source,
                };
                if e.errno() == Some(EEXIST) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Delete one of our routes. Already gone is success.
    pub async fn del(&self, route: &Route, proto: u8) -> Result<(), Error> {
        let msg = route_message(route, proto);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(source) => {
                let e = Error::Request {
                    what: format!("deleting local route {} dev #{}", route.dst, route.ifindex),
                    source,
                };
                if e.errno() == Some(ESRCH) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Resolves when something happened that may have cost us a route: one of our routes was
    /// deleted, a link appeared, changed or went away, or the event socket overflowed. Bursts
    /// are coalesced for [`DEBOUNCE`]. Cancel-safe.
    pub async fn changed(&mut self, proto: u8) {
        let ev = &mut self.events;
        if ev.due.is_none() {
            loop {
                if ev.closed {
                    return std::future::pending().await;
                }
                match ev.rx.next().await {
                    Some((msg, _)) if relevant(&msg, proto) => break,
                    Some(_) => {}
                    None => {
                        tracing::error!(
                            "netlink event subscription closed; routes are now only repaired on metadata changes"
                        );
                        ev.closed = true;
                    }
                }
            }
            ev.due = Some(Instant::now() + DEBOUNCE);
        }
        if let Some(due) = ev.due {
            tokio::time::sleep_until(due).await;
        }
        // Everything queued so far is covered by the reconcile that follows.
        while let Some(Some(_)) = ev.rx.next().now_or_never() {}
        ev.due = None;
    }
}

fn relevant(msg: &NetlinkMessage<RouteNetlinkMessage>, proto: u8) -> bool {
    match &msg.payload {
        NetlinkPayload::Overrun(_) => true,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => {
            our_route(r, proto).is_some()
        }
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_),
        ) => true,
        _ => false,
    }
}

fn table_of(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// The route in `msg` if it is one of ours (table local, type local, protocol `proto`).
pub fn our_route(msg: &RouteMessage, proto: u8) -> Option<Route> {
    if u8::from(msg.header.protocol) != proto
        || msg.header.kind != RouteType::Local
        || table_of(msg) != TABLE_LOCAL
    {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst.or(match msg.header.address_family {
        AddressFamily::Inet => Some(IpAddr::V4(0.into())),
        AddressFamily::Inet6 => Some(IpAddr::V6(0u128.into())),
        _ => None,
    })?;
    Some(Route {
        dst: Prefix::new(dst, msg.header.destination_prefix_length)?,
        ifindex: oif?,
    })
}

fn route_message(route: &Route, proto: u8) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = if route.dst.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    h.destination_prefix_length = route.dst.len;
    h.table = TABLE_LOCAL as u8;
    h.protocol = RouteProtocol::from(proto);
    h.scope = RouteScope::Host;
    h.kind = RouteType::Local;
    debug_assert_ne!(h.table, RouteHeader::RT_TABLE_UNSPEC);
    msg.attributes.extend([
        RouteAttribute::Table(TABLE_LOCAL),
        RouteAttribute::Destination(match route.dst.addr {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }),
        RouteAttribute::Oif(route.ifindex),
    ]);
    msg
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_routes_are_recognised_by_table_type_and_protocol_only() {
        let r = Route {
            dst: crate::plan::parse_prefix("10.1.2.3").unwrap(),
            ifindex: 7,
        };
        let ours = route_message(&r, 66);
        assert_eq!(our_route(&ours, 66), Some(r));
        assert_eq!(our_route(&ours, 42), None, "other protocol id");
        let mut unicast = ours.clone();
        unicast.header.kind = RouteType::Unicast;
        assert_eq!(our_route(&unicast, 66), None, "not type local");
        let mut main = ours.clone();
        main.header.table = RouteHeader::RT_TABLE_MAIN;
        main.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        assert_eq!(our_route(&main, 66), None, "not table local");
    }

    #[test]
    fn macs_are_lower_case_colon_separated() {
        assert_eq!(
            format_mac(&[0x42, 0x01, 0x0A, 0x8a, 0, 7]),
            "42:01:0a:8a:00:07"
        );
    }
}
