//! What the proxy serves, as the reconciler publishes it (pod scope): one entry per composition,
//! exposed or in its delete grace, from which the table is rebuilt and swapped whole when an
//! entry changes. Requests read the current table through a [`TableHandle`]; nothing here waits
//! on I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use super::access::Access;
use super::limits::Guard;
use super::table::{Destination, ProxyTable, Upstream};
use crate::model::{AppProtocol, Backend, DesiredComposition, Health};

/// The operator's settings the table is built with.
#[derive(Debug)]
pub(crate) struct ProxySettings {
    /// The address the published ports are dialled at: the pod's own (a binding on every
    /// address or on exactly the pod's is reachable there), loopback when it is not known.
    pub(crate) dial_ip: IpAddr,
    /// Most backend connections one composition may hold open.
    pub(crate) max_open_per_composition: usize,
    /// The access policies the proxy enforces, by name.
    pub(crate) policies: HashMap<String, Arc<Access>>,
}

/// One composition as published.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Published {
    Exposed {
        backends: Vec<Backend>,
        rate_limit_rps: Option<u32>,
        access: Option<String>,
    },
    /// In its delete grace: its hosts are kept (no other composition takes them) and answer 503.
    Withdrawn { hosts: BTreeSet<String> },
}

/// The current table, for the requests.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableHandle(Arc<RwLock<Arc<ProxyTable>>>);

impl TableHandle {
    pub(crate) fn current(&self) -> Arc<ProxyTable> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self, table: ProxyTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    settings: Arc<ProxySettings>,
    compositions: BTreeMap<String, Published>,
    guards: HashMap<String, Arc<Guard>>,
    complete: bool,
    table: TableHandle,
}

impl Registry {
    #[cfg(test)]
    pub(crate) fn new(settings: Arc<ProxySettings>) -> Self {
        Self::with_handle(settings, TableHandle::default())
    }

    /// A registry that publishes into `table` (which the server may already be reading).
    pub(crate) fn with_handle(settings: Arc<ProxySettings>, table: TableHandle) -> Self {
        Self {
            settings,
            compositions: BTreeMap::new(),
            guards: HashMap::new(),
            complete: false,
            table,
        }
    }

    #[cfg(test)]
    pub(crate) fn handle(&self) -> TableHandle {
        self.table.clone()
    }

    /// The first complete Docker listing is in: an unknown host is now a 404.
    pub(crate) fn listing_complete(&mut self) {
        if !self.complete {
            self.complete = true;
            self.rebuild();
        }
    }

    /// Serves `d`'s backends from now on; returns whether that changed anything.
    pub(crate) fn expose(&mut self, composition: &str, d: &DesiredComposition) -> bool {
        self.set(
            composition,
            Published::Exposed {
                backends: d.backends.clone(),
                rate_limit_rps: d.rate_limit_rps,
                access: d.access.clone(),
            },
        )
    }

    /// Stops dialling the composition's backends and keeps its hosts (its delete grace).
    pub(crate) fn withdraw(&mut self, composition: &str) -> bool {
        let hosts = self.hosts_of(composition);
        if hosts.is_empty() {
            return false;
        }
        self.set(composition, Published::Withdrawn { hosts })
    }

    /// Forgets the composition: its hosts are free.
    pub(crate) fn remove(&mut self, composition: &str) -> bool {
        let gone = self.compositions.remove(composition).is_some();
        self.guards.remove(composition);
        if gone {
            self.rebuild();
        }
        gone
    }

    /// The hosts a composition serves or keeps.
    pub(crate) fn hosts_of(&self, composition: &str) -> BTreeSet<String> {
        match self.compositions.get(composition) {
            Some(Published::Exposed { backends, .. }) => {
                backends.iter().map(|b| b.host.clone()).collect()
            }
            Some(Published::Withdrawn { hosts }) => hosts.clone(),
            None => BTreeSet::new(),
        }
    }

    /// The composition that serves or keeps `host`, other than `except`.
    pub(crate) fn holder_of(&self, host: &str, except: &str) -> Option<&str> {
        self.compositions
            .iter()
            .filter(|(c, _)| c.as_str() != except)
            .find(|(c, _)| self.hosts_of(c).contains(host))
            .map(|(c, _)| c.as_str())
    }

    /// How many hosts every composition but `except` serves or keeps (the pod's host cap).
    pub(crate) fn host_count_without(&self, except: &str) -> usize {
        self.compositions
            .keys()
            .filter(|c| c.as_str() != except)
            .map(|c| self.hosts_of(c).len())
            .sum()
    }

    /// Every composition published (exposed or in its grace).
    pub(crate) fn compositions(&self) -> BTreeSet<String> {
        self.compositions.keys().cloned().collect()
    }

    pub(crate) fn has(&self, composition: &str) -> bool {
        self.compositions.contains_key(composition)
    }

    fn set(&mut self, composition: &str, published: Published) -> bool {
        if self.compositions.get(composition) == Some(&published) {
            return false;
        }
        self.compositions.insert(composition.to_string(), published);
        self.rebuild();
        true
    }

    /// The guard of a composition: the same one while its limit and policy stay (a rebuild never
    /// resets a bucket or the count of open connections), a new one when they change.
    fn guard(&mut self, composition: &str, rps: Option<u32>, access: Option<&str>) -> Arc<Guard> {
        let max = self.settings.max_open_per_composition;
        if let Some(g) = self.guards.get(composition)
            && g.same_terms(rps, access, max)
        {
            return g.clone();
        }
        let policy = access.and_then(|name| {
            self.settings
                .policies
                .get(name)
                .map(|a| (name.to_string(), a.clone()))
        });
        let g = Arc::new(Guard::new(rps, max, policy));
        self.guards.insert(composition.to_string(), g.clone());
        g
    }

    fn rebuild(&mut self) {
        let mut builder = ProxyTable::builder(self.complete);
        let entries: Vec<(String, Published)> = self
            .compositions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (composition, published) in entries {
            match published {
                Published::Exposed {
                    backends,
                    rate_limit_rps,
                    access,
                } => {
                    let guard = self.guard(&composition, rate_limit_rps, access.as_deref());
                    for b in &backends {
                        let to = Arc::new(self.destination(&composition, b, guard.clone()));
                        builder.route(&b.host, &b.path, to);
                    }
                }
                Published::Withdrawn { hosts } => {
                    for host in &hosts {
                        builder.withdrawn(host, &composition);
                    }
                }
            }
        }
        self.table.store(builder.build());
    }

    fn destination(&self, composition: &str, b: &Backend, guard: Arc<Guard>) -> Destination {
        Destination {
            composition: composition.to_string(),
            service: b.service.clone(),
            container_port: b.container_port,
            address: SocketAddr::new(self.settings.dial_ip, b.host_port),
            upstream: match b.protocol {
                Some(AppProtocol::H2c | AppProtocol::Grpc) => Upstream::H2c,
                _ => Upstream::Http1,
            },
            gated: (!b.ready).then(|| gate_reason(b)),
            guard,
        }
    }
}

/// Why a service is not routed, in one line.
fn gate_reason(b: &Backend) -> String {
    match b.health {
        Health::Starting => format!(
            "service {} is starting: its healthcheck has not passed yet",
            b.service
        ),
        Health::Unhealthy => format!("service {} is unhealthy: its healthcheck fails", b.service),
        Health::None | Health::Healthy => format!("service {} is not ready", b.service),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::table::Lookup;

    fn settings() -> Arc<ProxySettings> {
        Arc::new(ProxySettings {
            dial_ip: "198.18.1.2".parse().unwrap(),
            max_open_per_composition: 8,
            policies: HashMap::new(),
        })
    }

    fn backend(service: &str, host: &str, host_port: u16) -> Backend {
        Backend {
            service: service.into(),
            container_port: 80,
            host_port,
            port_name: "p".into(),
            service_port: 1024,
            host: host.into(),
            path: "/".into(),
            chosen_host: false,
            protocol: None,
            ready: true,
            health: Health::None,
            class: None,
            tls_secret: None,
        }
    }

    fn composition(name: &str, backends: Vec<Backend>) -> DesiredComposition {
        DesiredComposition {
            name: name.into(),
            object_name: format!("ci-{name}"),
            backends,
            rate_limit_rps: Some(5),
            access: None,
        }
    }

    fn address_of(r: &Registry, host: &str) -> Option<SocketAddr> {
        match r.handle().current().lookup(host, "/") {
            Lookup::Found(d) => Some(d.address),
            _ => None,
        }
    }

    #[test]
    fn an_exposed_composition_is_dialled_at_its_published_port_on_the_pod() {
        let mut r = Registry::new(settings());
        r.listing_complete();
        let d = composition(
            "demo",
            vec![backend("web", "web.runner-0.example.com", 32768)],
        );
        assert!(r.expose("demo", &d));
        assert!(!r.expose("demo", &d), "the same plan again changes nothing");
        assert_eq!(
            address_of(&r, "web.runner-0.example.com"),
            Some("198.18.1.2:32768".parse().unwrap())
        );
    }

    #[test]
    fn a_new_host_port_keeps_the_guard_and_a_new_limit_replaces_it() {
        let mut r = Registry::new(settings());
        let host = "web.runner-0.example.com";
        r.expose(
            "demo",
            &composition("demo", vec![backend("web", host, 32768)]),
        );
        let guard = |r: &Registry| match r.handle().current().lookup(host, "/") {
            Lookup::Found(d) => d.guard.clone(),
            other => panic!("{other:?}"),
        };
        let first = guard(&r);
        r.expose(
            "demo",
            &composition("demo", vec![backend("web", host, 32999)]),
        );
        assert!(Arc::ptr_eq(&first, &guard(&r)), "same limit: same bucket");
        let mut d = composition("demo", vec![backend("web", host, 32999)]);
        d.rate_limit_rps = Some(1);
        r.expose("demo", &d);
        assert!(
            !Arc::ptr_eq(&first, &guard(&r)),
            "a new limit is a new bucket"
        );
    }

    #[test]
    fn a_withdrawn_composition_keeps_its_hosts_until_removed() {
        let mut r = Registry::new(settings());
        r.listing_complete();
        let host = "web.runner-0.example.com";
        r.expose(
            "demo",
            &composition("demo", vec![backend("web", host, 32768)]),
        );
        assert!(r.withdraw("demo"));
        assert!(matches!(
            r.handle().current().lookup(host, "/"),
            Lookup::Withdrawn {
                composition: "demo"
            }
        ));
        assert_eq!(r.holder_of(host, "other"), Some("demo"));
        assert_eq!(r.host_count_without("other"), 1);
        assert!(r.remove("demo"));
        assert!(matches!(
            r.handle().current().lookup(host, "/"),
            Lookup::Unknown
        ));
        assert_eq!(r.holder_of(host, "other"), None);
        assert!(!r.withdraw("demo"), "nothing to withdraw");
    }

    #[test]
    fn an_unready_backend_is_gated_with_its_reason() {
        let mut r = Registry::new(settings());
        let mut b = backend("web", "web.runner-0.example.com", 32768);
        b.ready = false;
        b.health = Health::Starting;
        b.protocol = Some(AppProtocol::Grpc);
        r.expose("demo", &composition("demo", vec![b]));
        match r.handle().current().lookup("web.runner-0.example.com", "/") {
            Lookup::Found(d) => {
                assert!(d.gated.as_deref().is_some_and(|g| g.contains("starting")));
                assert_eq!(d.upstream, Upstream::H2c);
            }
            other => panic!("{other:?}"),
        }
    }
}
