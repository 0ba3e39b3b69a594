//! Integration tests on the real test bed (dockerd + docker-compose in network-namespace
//! "runner pods", kube-apiserver/etcd/kube-controller-manager, Traefik). One test binary so the
//! heavy dependencies link once. The bed is started by `tests/testbed/up.sh` (the `./test`
//! script does it first); a test run that finds no bed starts it itself.

mod support;

mod admission;
mod compose_v2;
mod deploy;
mod disruptive;
mod operability;

mod scenarios;
mod sidecar;
mod smoke;
