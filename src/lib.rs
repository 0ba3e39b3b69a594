//! compose-ingress: expose docker-compose projects of a dind runner pod through Kubernetes.

pub mod labels;
pub mod model;
pub mod naming;
pub mod plan;
pub mod render;
