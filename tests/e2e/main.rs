//! Integration tests on the real test bed (dockerd + docker-compose in network-namespace
//! "runner pods", kube-apiserver/etcd/kube-controller-manager, Traefik). One test binary so the
//! heavy dependencies link once. The bed is started by `tests/testbed/up.sh` (the `./test`
//! script does it first); a test run that finds no bed starts it itself. The bed's Rust side
//! (runner pods, the sidecar runner, compose files, waits) is the testbed/ crate, which the
//! benchmarks share.

mod admission;
mod ci_job;
mod compose_v2;
mod dedicated_class;
mod deploy;
mod disruptive;
mod doc_samples;
mod engines;
mod field_manager;
mod first_errors;
mod frozen_apiserver;
mod hardening;
mod health;
mod helm;
mod helm_sidecar_only;
mod image_build;
mod monitoring;
mod node;
mod operability;
mod pod_scope;
mod policies;

mod scenarios;
mod smoke;

/// The sidecar as the tests run it: the binary cargo built for this test run (only an
/// integration test knows its path), with the test settings of the bed's sidecar runner.
const SIDECAR: testbed::Launch = testbed::Launch::tests(env!("CARGO_BIN_EXE_compose-ingress"));
