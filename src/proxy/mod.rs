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
mod handler;
mod headers;
mod limits;
mod registry;
mod server;
mod table;
mod upstream;

pub(crate) use access::{Access, BasicAuth, Cidr, Htpasswd};
pub(crate) use handler::Context;
pub(crate) use registry::{ProxySettings, Registry, TableHandle};
pub(crate) use server::{ProxyError, ServerLimits, bind, serve};
pub(crate) use upstream::Upstreams;

#[cfg(test)]
mod tests;
