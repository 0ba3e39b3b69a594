//! The proxy's table (pure): which composition's published port answers a request's host and
//! path. One table is built from every composition the reconciler published
//! ([`super::registry`]) and swapped whole; requests only read it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::limits::Guard;

/// How the proxy speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// HTTP/1.1 (WebSocket upgrades too).
    Http1,
    /// HTTP/2 with prior knowledge (`compose-ingress.protocol=h2c|grpc`).
    H2c,
}

/// Where one (host, path prefix) goes.
#[derive(Debug)]
pub(crate) struct Destination {
    pub(crate) composition: String,
    pub(crate) service: String,
    pub(crate) container_port: u16,
    /// The published host port in the pod, at the pod's address (or loopback): only ever an
    /// address Docker says the composition publishes.
    pub(crate) address: SocketAddr,
    pub(crate) upstream: Upstream,
    /// Not routed now, with the one-line reason (a healthcheck that does not pass): answered
    /// 503 and never dialled.
    pub(crate) gated: Option<String>,
    pub(crate) guard: Arc<Guard>,
}

#[derive(Debug)]
enum HostEntry {
    /// Path prefixes, longest first.
    Routes(Vec<(String, Arc<Destination>)>),
    /// The composition is in its delete grace: the host stays its own, nothing is dialled.
    Withdrawn { composition: String },
}

/// What a request's host and path find.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Found(&'a Arc<Destination>),
    Withdrawn {
        composition: &'a str,
    },
    /// No composition has this host (or none of its paths matches): 404, naming nothing.
    Unknown,
    /// The sidecar has not listed Docker completely yet: the host may be a composition it has
    /// not seen, so the answer is "try again", not "no such host".
    Starting,
}

#[derive(Debug, Default)]
pub(crate) struct ProxyTable {
    /// The first complete Docker listing is in.
    complete: bool,
    hosts: HashMap<String, HostEntry>,
}

impl ProxyTable {
    pub(crate) fn builder(complete: bool) -> TableBuilder {
        TableBuilder {
            table: ProxyTable {
                complete,
                hosts: HashMap::new(),
            },
        }
    }

    /// Finds the destination of `host` (as the request gave it) and `path`.
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Lookup<'_> {
        let host = normalize_host(host);
        match self.hosts.get(host.as_str()) {
            Some(HostEntry::Routes(routes)) => routes
                .iter()
                .find(|(prefix, _)| prefix_matches(prefix, path))
                .map_or(Lookup::Unknown, |(_, d)| Lookup::Found(d)),
            Some(HostEntry::Withdrawn { composition }) => Lookup::Withdrawn { composition },
            None if self.complete => Lookup::Unknown,
            None => Lookup::Starting,
        }
    }

    #[cfg(test)]
    pub(crate) fn hosts(&self) -> usize {
        self.hosts.len()
    }
}

pub(crate) struct TableBuilder {
    table: ProxyTable,
}

impl TableBuilder {
    /// Adds a route; a (host, prefix) taken already keeps its first destination (the plan and
    /// the pod's host claims never give one twice).
    pub(crate) fn route(&mut self, host: &str, prefix: &str, to: Arc<Destination>) {
        let entry = self
            .table
            .hosts
            .entry(host.to_ascii_lowercase())
            .or_insert_with(|| HostEntry::Routes(Vec::new()));
        if let HostEntry::Routes(routes) = entry
            && !routes.iter().any(|(p, _)| p == prefix)
        {
            routes.push((prefix.to_string(), to));
            routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        }
    }

    pub(crate) fn withdrawn(&mut self, host: &str, composition: &str) {
        self.table
            .hosts
            .entry(host.to_ascii_lowercase())
            .or_insert_with(|| HostEntry::Withdrawn {
                composition: composition.to_string(),
            });
    }

    pub(crate) fn build(self) -> ProxyTable {
        self.table
    }
}

/// A request's host as the table keys it: lowercase, without a port or a trailing dot.
pub(crate) fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        // `[v6]:port` or `name:port`; a bare v6 literal has colons of its own.
        Some((h, port))
            if (h.ends_with(']') || !h.contains(':'))
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        _ => host,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Kubernetes' `Prefix` match: by whole path elements, so `/api` matches `/api` and `/api/v1`,
/// never `/apis`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(service: &str) -> Arc<Destination> {
        Arc::new(Destination {
            composition: "demo".into(),
            service: service.into(),
            container_port: 80,
            address: "127.0.0.1:32768".parse().unwrap(),
            upstream: Upstream::Http1,
            gated: None,
            guard: Arc::new(Guard::new(None, 8, None)),
        })
    }

    fn found(t: &ProxyTable, host: &str, path: &str) -> Option<String> {
        match t.lookup(host, path) {
            Lookup::Found(d) => Some(d.service.clone()),
            _ => None,
        }
    }

    #[test]
    fn hosts_match_whatever_their_case_port_or_trailing_dot() {
        let mut b = ProxyTable::builder(true);
        b.route("web-80-demo.runner-0.example.com", "/", dest("web"));
        let t = b.build();
        for host in [
            "web-80-demo.runner-0.example.com",
            "WEB-80-demo.Runner-0.example.com",
            "web-80-demo.runner-0.example.com:443",
            "web-80-demo.runner-0.example.com.",
        ] {
            assert_eq!(found(&t, host, "/x").as_deref(), Some("web"), "{host}");
        }
        assert!(matches!(
            t.lookup("other.runner-0.example.com", "/"),
            Lookup::Unknown
        ));
        assert!(matches!(t.lookup("", "/"), Lookup::Unknown));
    }

    #[test]
    fn the_longest_prefix_wins_by_whole_path_elements() {
        let mut b = ProxyTable::builder(true);
        b.route("h.example.com", "/", dest("front"));
        b.route("h.example.com", "/api", dest("api"));
        b.route("h.example.com", "/api/admin/", dest("admin"));
        let t = b.build();
        assert_eq!(found(&t, "h.example.com", "/").as_deref(), Some("front"));
        assert_eq!(found(&t, "h.example.com", "/api").as_deref(), Some("api"));
        assert_eq!(
            found(&t, "h.example.com", "/api/v1").as_deref(),
            Some("api")
        );
        assert_eq!(
            found(&t, "h.example.com", "/apis").as_deref(),
            Some("front")
        );
        assert_eq!(
            found(&t, "h.example.com", "/api/admin").as_deref(),
            Some("admin")
        );
        assert_eq!(
            found(&t, "h.example.com", "/api/admin/x").as_deref(),
            Some("admin")
        );
    }

    #[test]
    fn a_host_with_no_matching_path_is_unknown() {
        let mut b = ProxyTable::builder(true);
        b.route("h.example.com", "/api", dest("api"));
        let t = b.build();
        assert!(matches!(t.lookup("h.example.com", "/"), Lookup::Unknown));
    }

    #[test]
    fn before_the_first_complete_listing_an_unknown_host_is_starting() {
        let t = ProxyTable::builder(false).build();
        assert!(matches!(t.lookup("x.example.com", "/"), Lookup::Starting));
        let t = ProxyTable::builder(true).build();
        assert!(matches!(t.lookup("x.example.com", "/"), Lookup::Unknown));
    }

    #[test]
    fn a_withdrawn_host_names_its_composition() {
        let mut b = ProxyTable::builder(true);
        b.withdrawn("h.example.com", "demo");
        let t = b.build();
        assert!(matches!(
            t.lookup("h.example.com", "/"),
            Lookup::Withdrawn {
                composition: "demo"
            }
        ));
        assert_eq!(t.hosts(), 1);
    }

    #[test]
    fn ports_and_ipv6_literals_are_normalized() {
        assert_eq!(normalize_host("A.example.com:8080"), "a.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("::1"), "::1");
    }
}
