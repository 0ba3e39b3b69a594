//! compose-ingress: expose docker-compose projects of a dind runner pod through Kubernetes.
//!
//! Data flows one way: [`docker`] (events, listings) -> [`model`] (observed state) ->
//! [`plan`] (pure) -> [`render`] (pure) -> [`cluster`] (server-side apply, delete), driven by
//! the level-triggered [`reconcile`] loop.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn_limits;
pub mod docker;
pub mod events;
pub mod http_get;
pub mod kube_client;
pub mod labels;
pub mod lease_watch;
pub mod logging;
pub mod managed_fields;
pub mod model;
pub mod naming;
pub mod plan;
pub mod policy;
// Wired into the reconciler and main in the next commits (pod scope, issue #26).
#[allow(dead_code, unused_imports)]
pub(crate) mod proxy;
pub mod reconcile;
pub mod render;
pub mod retry;
pub mod routable;
pub mod shutdown;
pub mod status;
pub mod telemetry;
