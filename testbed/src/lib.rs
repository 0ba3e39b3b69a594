//! The test bed's Rust side, one crate for the integration tests (tests/e2e) and the benchmarks
//! (bench/): attach to (or start) the bed, make runner pods, run the sidecar against one, build
//! compose files, reach HTTP endpoints, wait for convergence. The bed itself is started by the
//! scripts in tests/testbed/ (see DESIGN.md, "The test bed").
//!
//! A library cannot know where cargo built the compose-ingress binary (`CARGO_BIN_EXE_*` exists
//! only for integration tests and benches): callers hand it in through [`Launch`].

mod bed;
mod compose;
mod docker_proxy;
mod docs;
mod helm;
mod http;
mod node;
mod objects;
mod pod;
mod proxy;
mod sidecar;
mod tls;
mod wait;

pub use bed::{Bed, bed, engine, on_engine, parse_env, repo_root, stdout_ok};
pub use compose::{ENABLE, compose_file, web};
pub use docker_proxy::DockerEventsProxy;
pub use docs::{
    Block, Inline, OUTPUT_MARK, TEST_MARK, blocks_of, compose_args, doc_block, doc_blocks,
    doc_commands, doc_inline, doc_inline_commands, inline_commands_of, is_command, run_doc_line,
    run_doc_line_ok, spawn_doc_line, stop_doc_line, substitute,
};
pub use helm::{chart_dir, helm, helm_ok};
pub use http::{
    LoadResult, http_get, load, raw_get, through_controller, through_ingress,
    through_ingress_within, traefik_addr,
};
pub use node::{
    DIND_CONTAINER, Deployment, SIDECAR_CONTAINER, container, kill_container, node_lock, pod_ready,
    projected_token, runner_image, sidecar_image,
};
pub use objects::{
    ingress_hosts, ingresses_of, project_selector, services_of, target_ports, wait_exposed,
    wait_gone,
};
pub use pod::{ComposeVersion, RunnerPod, pod_bound_token, unique_namespace};
pub use proxy::ApiProxy;
pub use sidecar::{
    DOMAIN, Launch, POD_PROXY_PORT, POD_SCOPE_RBAC, Sidecar, TRAEFIK_RBAC, domain, free_port,
    sidecar_kubeconfig, sidecar_kubeconfig_via, stop_process,
};
pub use tls::{SelfSigned, create_tls_secret, https_get, self_signed, served_certificate};
pub use wait::{CONVERGE, eventually};
