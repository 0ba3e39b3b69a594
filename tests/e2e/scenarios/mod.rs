//! The sidecar, end to end on the test bed: each scenario of the sidecar issue is a test here,
//! run against a real dockerd + docker-compose, a real apiserver with garbage collector and
//! EndpointSlice controller, and Traefik routing real HTTP to the containers. The sidecar runs
//! as its ServiceAccount with the Role from deploy/base/rbac.yaml.
//!
//! One file per topic; every test keeps its path `scenarios::<name>` (`::v1`/`::v2` for the
//! scenarios run with both Compose versions), which ./test, the docs and CI logs name.

mod cli;
mod exposure;
mod kompose;
mod labels;
mod lifecycle;
mod ownership;
mod sigterm;

use testbed::{RunnerPod, bed, domain, unique_namespace};

use cli::{
    dry_run_prints_the_objects_and_writes_nothing,
    server_dry_run_validates_with_the_apiserver_and_writes_nothing,
};
use exposure::{
    compositions_running_before_the_sidecar_are_exposed_at_start,
    gateway_mode_creates_an_httproute_that_routes,
    nothing_is_created_for_services_that_do_not_qualify,
    opted_in_service_gets_service_and_ingress_and_is_routable,
    scaled_service_exposes_its_first_replica, services_started_in_steps_are_exposed_in_one_write,
};
use labels::bad_labels_are_refused_one_warning_each_and_others_still_expose;
use lifecycle::{
    compose_down_deletes_after_the_grace_and_a_restart_within_it_keeps_the_objects,
    deleting_the_runner_pod_garbage_collects_the_sidecar_objects,
    dockerd_restart_under_a_running_sidecar_converges,
    orphans_of_a_killed_sidecar_are_deleted_by_the_next_start,
};
use ownership::{
    objects_that_are_not_this_pods_are_never_touched,
    two_pods_racing_for_one_host_exactly_one_wins_without_flapping,
};
use sigterm::{
    sigterm_of_a_terminating_pod_deletes_its_objects_and_exits_zero,
    sigterm_of_the_sidecar_alone_keeps_the_objects_and_exits_zero,
    sigterm_with_cleanup_always_deletes_the_objects,
};

fn host_of(ns: &str, service: &str, port: u16, project: &str, pod: &str) -> String {
    format!("{service}-{port}-{project}-{pod}.{}", domain(ns))
}

async fn setup(test: &str) -> (String, RunnerPod, kube::Client) {
    setup_on(test, &testbed::engine()).await
}

/// Like [`setup`], with the runner pod on Docker Engine `engine`.
async fn setup_on(test: &str, engine: &str) -> (String, RunnerPod, kube::Client) {
    let bed = bed();
    let ns = unique_namespace(test);
    let pod = bed.runner_pod_on(&ns, "runner-0", engine);
    let admin = bed.admin().await;
    (ns, pod, admin)
}

/// One test per Compose version (v1: Debian's docker-compose 1.29; v2: built from its Go
/// module), from one scenario body: `scenarios::<name>::v1` and `scenarios::<name>::v2`.
macro_rules! for_each_compose {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use testbed::ComposeVersion;
            #[tokio::test]
            async fn v1() {
                super::$name(ComposeVersion::V1).await
            }
            #[tokio::test]
            async fn v2() {
                super::$name(ComposeVersion::V2).await
            }
        }
    )*};
}

/// The scenarios whose behaviour depends on the Docker Engine (the start-up listing, event
/// replay after a reconnect, port bindings, a dockerd restart, the settle logic, a restart within
/// the grace) run on the oldest engine the sidecar supports too, Debian's 20.10:
/// `scenarios::oldest_engine::<name>::v1_engine_20_10` and `::v2_engine_20_10` (every scenario
/// runs on Docker 29).
macro_rules! on_the_oldest_engine_too {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use testbed::{ComposeVersion, on_engine};
            #[tokio::test]
            async fn v1_engine_20_10() {
                on_engine("20.10", super::super::$name(ComposeVersion::V1)).await
            }
            #[tokio::test]
            async fn v2_engine_20_10() {
                on_engine("20.10", super::super::$name(ComposeVersion::V2)).await
            }
        }
    )*};
}

mod oldest_engine {
    on_the_oldest_engine_too!(
        opted_in_service_gets_service_and_ingress_and_is_routable,
        compose_down_deletes_after_the_grace_and_a_restart_within_it_keeps_the_objects,
        services_started_in_steps_are_exposed_in_one_write,
        compositions_running_before_the_sidecar_are_exposed_at_start,
        dockerd_restart_under_a_running_sidecar_converges,
    );
}

for_each_compose!(
    opted_in_service_gets_service_and_ingress_and_is_routable,
    gateway_mode_creates_an_httproute_that_routes,
    nothing_is_created_for_services_that_do_not_qualify,
    compose_down_deletes_after_the_grace_and_a_restart_within_it_keeps_the_objects,
    scaled_service_exposes_its_first_replica,
    services_started_in_steps_are_exposed_in_one_write,
    compositions_running_before_the_sidecar_are_exposed_at_start,
    orphans_of_a_killed_sidecar_are_deleted_by_the_next_start,
    dockerd_restart_under_a_running_sidecar_converges,
    deleting_the_runner_pod_garbage_collects_the_sidecar_objects,
    sigterm_of_a_terminating_pod_deletes_its_objects_and_exits_zero,
    sigterm_of_the_sidecar_alone_keeps_the_objects_and_exits_zero,
    sigterm_with_cleanup_always_deletes_the_objects,
    bad_labels_are_refused_one_warning_each_and_others_still_expose,
    two_pods_racing_for_one_host_exactly_one_wins_without_flapping,
    objects_that_are_not_this_pods_are_never_touched,
    dry_run_prints_the_objects_and_writes_nothing,
    server_dry_run_validates_with_the_apiserver_and_writes_nothing,
);

// Scenarios that run once (not per Compose version): their bodies live in the topic files, these
// wrappers keep their paths `scenarios::<name>`.
#[tokio::test]
async fn plain_containers_are_exposed_only_with_the_flag() {
    exposure::plain_containers_are_exposed_only_with_the_flag().await
}

#[tokio::test]
async fn a_start_event_that_never_reaches_the_sidecar_still_exposes_the_composition() {
    lifecycle::a_start_event_that_never_reaches_the_sidecar_still_exposes_the_composition().await
}

#[tokio::test]
async fn the_label_examples_answer_at_the_urls_their_comments_give() {
    labels::the_label_examples_answer_at_the_urls_their_comments_give().await
}

#[tokio::test]
async fn compositions_over_a_cap_are_refused_whole_with_a_reason() {
    labels::compositions_over_a_cap_are_refused_whole_with_a_reason().await
}

#[tokio::test]
async fn a_lease_deleted_by_hand_is_claimed_again_at_the_next_resync() {
    ownership::a_lease_deleted_by_hand_is_claimed_again_at_the_next_resync().await
}

#[tokio::test]
async fn a_host_given_up_by_its_holder_goes_to_the_refused_composition_at_once() {
    ownership::a_host_given_up_by_its_holder_goes_to_the_refused_composition_at_once().await
}

#[tokio::test]
async fn a_chosen_host_cannot_squat_another_pods_template_host() {
    ownership::a_chosen_host_cannot_squat_another_pods_template_host().await
}

#[tokio::test]
async fn kompose_labels_rate_limits_and_tls_shape_the_ingress() {
    labels::kompose_labels_rate_limits_and_tls_shape_the_ingress().await
}

#[test]
fn bad_flags_fail_at_start_with_one_line_and_exit_code_2() {
    cli::bad_flags_fail_at_start_with_one_line_and_exit_code_2()
}
