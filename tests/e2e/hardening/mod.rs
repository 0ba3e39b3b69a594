//! Issue #27 (sections 2-4), on the bed: rules that held only on paper before. Each test was
//! seen failing on the code before its fix (the commit that added it says how).

mod bounds;
mod exposure_time;
mod flaps;
mod hosts;
mod policies;
mod probes;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use testbed::{RunnerPod, bed, unique_namespace};

async fn setup(test: &str) -> (String, RunnerPod, kube::Client) {
    let bed = bed();
    let ns = unique_namespace(test);
    let pod = bed.runner_pod(&ns, "runner-0");
    let admin = bed.admin().await;
    (ns, pod, admin)
}

/// The hosts this pod's Leases hold, sorted.
async fn leased_hosts(admin: &kube::Client, ns: &str) -> Vec<String> {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=compose-ingress");
    let mut hosts: Vec<String> = leases
        .list(&selector)
        .await
        .expect("list leases")
        .items
        .into_iter()
        .filter_map(|l| l.metadata.annotations?.get("compose-ingress/host").cloned())
        .collect();
    hosts.sort();
    hosts
}

/// The state of composition `name` in a sidecar's `/exposures`.
fn state_of(exposures: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    exposures["compositions"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}
