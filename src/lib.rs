//! compose-ingress: expose docker-compose projects of a dind runner pod through Kubernetes.
//!
//! Data flows one way: [`docker`] (events, listings) -> [`model`] (observed state) ->
//! [`plan`] (pure) -> [`render`] (pure) -> [`cluster`] (server-side apply, delete), driven by
//! the level-triggered [`reconcile`] loop. The pure layers import no I/O module (checked by
//! the test in src/layers.rs); docs/design.md maps the pipeline and where each rule lives.

// pub(crate) by default: only what the binary (src/main.rs), tests/ and bench/ use is public,
// so that the dead-code lint sees every other item.
#![warn(unreachable_pub)]

mod variants;

mod accept;
pub(crate) mod api_reach;

pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn_limits;
pub mod docker;
pub mod events;
pub mod gateway_listener;
pub mod kube_client;
pub mod labels;
#[cfg(test)]
mod layers;
pub mod lease_watch;
pub mod logging;
pub(crate) mod managed_fields;
pub mod model;
pub mod naming;
mod objects;
pub mod plan;
pub mod pod_route;
pub(crate) mod policy;
pub mod probe_socket;
pub mod proxy;
pub mod reconcile;
mod render;
pub mod retry;
pub mod routable;
pub mod shutdown;
pub mod status;
pub mod telemetry;
#[doc(hidden)]
pub mod test_support;
