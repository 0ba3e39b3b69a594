//! The pod scope's reverse proxy: the ingress controller holds one wildcard route per runner
//! pod (`*.<pod>.<domain>`) to this port, and the proxy maps each request's host to the
//! composition's published port in the pod, from the same plans the composition scope writes
//! to Kubernetes. A new composition is routable as soon as it is planned: no API write, no
//! controller rebuild.
//!
//! Data flows one way here too: the reconciler publishes plans into the [`registry`], which
//! builds a [`table`] and swaps it whole; requests ([`handler`], served by [`server`]) only
//! read it. The policies hold on any controller because the proxy enforces them itself
//! ([`limits`]: rate limit and open connections per composition; [`access`]: IP allow-list
//! and basic auth; health gating in the table).

mod access;
mod answer;
mod connection;
mod handler;
mod headers;
mod limits;
mod registry;
mod server;
mod table;
mod upstream;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::access::{Access, BasicAuth};
use self::handler::Context;
pub(crate) use self::registry::Registry;
use self::registry::{ProxySettings, TableHandle};
pub use self::server::ProxyError;
use self::server::ServerLimits;
use self::upstream::Upstreams;
use crate::config::ProxyConfig;
use crate::model::PlanSettings;
use crate::status::Status;

/// The largest request head the proxy reads (line and headers), as the sidecar's own endpoints.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The pod's proxy, bound and ready to serve (pod scope).
pub struct PodProxy {
    listener: TcpListener,
    ctx: Arc<Context>,
    limits: ServerLimits,
    policies: HashMap<String, Arc<Access>>,
    max_open_per_composition: usize,
}

impl PodProxy {
    /// Binds the proxy's port now, so that a taken port fails the start with one clear line;
    /// the access policies of the file become the proxy's (their htpasswd files were read and
    /// checked with the file).
    pub async fn bind(
        config: &ProxyConfig,
        settings: &PlanSettings,
        status: Arc<Status>,
    ) -> Result<Self, ProxyError> {
        let listener = server::bind(config.listen).await?;
        // bcrypt verifications of every policy share one turn: a flood of wrong passwords costs
        // one core at most.
        let verifying = Arc::new(tokio::sync::Semaphore::new(1));
        let policies = settings
            .access
            .policies
            .iter()
            .filter(|(_, p)| p.for_proxy())
            .map(|(name, p)| {
                let access = Access {
                    allow: p.ip_allow_list.clone(),
                    basic_auth: p
                        .basic_auth
                        .as_ref()
                        .map(|b| BasicAuth::new(&b.realm, b.users.clone(), verifying.clone())),
                };
                (name.clone(), Arc::new(access))
            })
            .collect();
        let ctx = Arc::new(Context {
            table: TableHandle::default(),
            upstreams: Upstreams::default(),
            trusted: config.trusted_proxies.clone(),
            idle_timeout: config.idle_timeout,
            status,
        });
        let limits = ServerLimits {
            max_connections: config.max_connections,
            max_header_bytes: MAX_HEADER_BYTES,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
        };
        Ok(Self {
            listener,
            ctx,
            limits,
            policies,
            max_open_per_composition: config.max_connections_per_composition,
        })
    }

    /// The port the pod's route points at.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// The server, which answers at once (503 until the first Docker listing is reconciled: a
    /// restarted sidecar's URLs come back as soon as it listens), and what feeds it.
    pub fn serve(self, cancel: CancellationToken) -> (impl Future<Output = ()> + Send, Publisher) {
        let publisher = Publisher {
            table: self.ctx.table.clone(),
            policies: self.policies,
            max_open_per_composition: self.max_open_per_composition,
        };
        let server = server::serve(self.listener, self.ctx, self.limits, cancel);
        (server, publisher)
    }
}

/// What feeds the proxy's table: made into the reconciler's output once the pod's address is
/// known.
pub struct Publisher {
    table: TableHandle,
    policies: HashMap<String, Arc<Access>>,
    max_open_per_composition: usize,
}

impl Publisher {
    /// The registry the reconciler publishes into; the published ports are dialled at `pod_ip`
    /// (a binding on every address, or on exactly the pod's, is reachable there), or at loopback
    /// when it is not known.
    pub(crate) fn into_registry(self, pod_ip: Option<Ipv4Addr>) -> Registry {
        let settings = ProxySettings {
            dial_ip: pod_ip.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4),
            max_open_per_composition: self.max_open_per_composition,
            policies: self.policies,
        };
        Registry::with_handle(Arc::new(settings), self.table)
    }
}

#[cfg(test)]
mod tests;
