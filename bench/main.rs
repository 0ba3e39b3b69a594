//! Benchmarks of compose-ingress on the real test bed (see BENCHMARKS.md).
//!
//!   cargo bench --bench bench                      # every phase, full size (~53 min)
//!   cargo bench --bench bench -- --smoke           # tiny run of every phase (CI keeps it alive)
//!   cargo bench --bench bench -- --only e2o,burst  # some phases: e2o hol routable refresh reload side proxy proxy-rss pod-route burst restart ratelimit wait health
//!   cargo bench --bench bench -- --only refresh --refresh-scopes pod --levels 0,2000,10000 --no-isolation
//!   cargo bench --bench bench -- --replot          # redraw the plots from results.json
//!
//! `cargo bench` builds the sidecar with the release settings (the bench profile inherits them)
//! and runs this program (harness = false; it ignores the `--bench` flag cargo adds). It starts
//! the bed with tests/testbed/up.sh, makes its own runner pods (tests/testbed/pod.sh) and
//! namespaces (`bench-*`), runs the release sidecar as the pod's ServiceAccount (the bed's
//! sidecar runner from the testbed/ crate, as the integration tests do), and writes the
//! results (`results.json`, `results.md`) and plots (`*.png`) into the output directory
//! (default bench/plots for a full run, target/bench-smoke for --smoke). Every loop has a count
//! and a deadline; traffic goes only to loopback and the bed's 198.18.x.y pod addresses.
//!
//! This file only wires the phases (one module each) to the command line and results.json.

mod args;
mod burst;
mod charts;
mod clock;
mod cluster;
mod compose;
mod controllers;
mod docker;
mod e2o;
mod fillers;
mod health;
mod hol;
mod http;
mod isolation;
mod late;
mod load;
mod machine;
mod pod_route;
mod pods;
mod process;
mod proxy_cost;
mod proxy_rss;
mod ratelimit;
mod refresh;
mod reload;
mod reload_conf;
mod restart_cost;
mod routable;
mod scope;
mod side_by_side;
mod stats;
mod steady;
mod wait;

use clap::Parser;
use serde_json::{Value, json};
use testbed::{Bed, Launch, bed};

use crate::args::Args;
use crate::charts::{load_font, plot_e2o, plot_refresh, plot_reload, plot_routable};
use crate::clock::say;
use crate::e2o::{E2oResult, phase_e2o};
use crate::routable::{RoutableResult, phase_routable};

/// The release sidecar (the bench profile inherits the release settings), run by the bed's
/// sidecar runner with the bench's settings.
const SIDECAR: Launch = Launch::bench(env!("CARGO_BIN_EXE_compose-ingress"));

/// Runs on the main thread's stack: each phase's future is boxed (below), so the future that
/// `block_on` polls holds pointers, not the phases' states (they once overflowed 8 MiB as one
/// large future, and a 256 MiB thread carried them).
fn main() {
    let args = Args::parse();
    let scale = args.scale();
    let out = args.out_dir();
    say(format!(
        "output: {} (smoke: {})",
        out.display(),
        scale.smoke
    ));
    load_font();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let b: &Bed = bed();
        say(format!("test bed up ({})", b.dir.display()));
        let path = out.join("results.json");
        let mut results: serde_json::Map<String, Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        results.insert("machine".into(), machine::machine());
        let save = |results: &serde_json::Map<String, Value>| {
            std::fs::write(&path, serde_json::to_string_pretty(results).expect("json"))
                .expect("write results.json");
        };
        if args.replot {
            // Redraw the plots from results.json (no measurement).
            let get = |k: &str| results.get(k).cloned().unwrap_or(Value::Null);
            if let Ok(r) = serde_json::from_value::<Vec<E2oResult>>(get("event_to_object")) {
                plot_e2o(&r, &out.join("event_to_object.png")).expect("plot e2o");
            }
            if let Ok(r) = serde_json::from_value::<Vec<RoutableResult>>(get("time_to_routable")) {
                plot_routable(&r, &out.join("time_to_routable.png")).expect("plot routable");
            }
            if let Ok(r) = serde_json::from_value::<refresh::RefreshResult>(get("refresh")) {
                plot_refresh(&r.points, &out.join("refresh.png")).expect("plot refresh");
            }
            if let Ok(r) = serde_json::from_value::<reload::ReloadResult>(get("reload")) {
                plot_reload(&r.points, &out.join("reload.png")).expect("plot reload");
            }
            say("plots redrawn");
            return;
        }
        if args.runs("e2o") {
            let r = Box::pin(phase_e2o(&scale)).await;
            if let Err(e) = plot_e2o(&r, &out.join("event_to_object.png")) {
                say(format!("plot e2o: {e}"));
            }
            results.insert("event_to_object".into(), json!(r));
            save(&results);
        }
        if args.runs("hol") {
            let r = Box::pin(hol::phase_hol(&scale)).await;
            results.insert("head_of_line".into(), json!(r));
            save(&results);
        }
        if args.runs("routable") {
            let r = Box::pin(phase_routable(&scale)).await;
            if let Err(e) = plot_routable(&r, &out.join("time_to_routable.png")) {
                say(format!("plot routable: {e}"));
            }
            results.insert("time_to_routable".into(), json!(r));
            save(&results);
        }
        if args.runs("refresh") {
            let mut r = Box::pin(refresh::phase_refresh(&scale)).await;
            if let Some(earlier) = results
                .get("refresh")
                .and_then(|v| serde_json::from_value::<refresh::RefreshResult>(v.clone()).ok())
            {
                r.keep_earlier(earlier);
            }
            if let Err(e) = plot_refresh(&r.points, &out.join("refresh.png")) {
                say(format!("plot refresh: {e}"));
            }
            results.insert("refresh".into(), json!(r));
            save(&results);
        }
        if args.runs("reload") {
            let r = Box::pin(reload::phase_reload(&scale)).await;
            if let Err(e) = plot_reload(&r.points, &out.join("reload.png")) {
                say(format!("plot reload: {e}"));
            }
            results.insert("reload".into(), json!(r));
            save(&results);
        }
        if args.runs("side") {
            let r = Box::pin(side_by_side::phase_side(&scale)).await;
            results.insert("side_by_side".into(), json!(r));
            save(&results);
        }
        if args.runs("proxy") {
            let r = Box::pin(proxy_cost::phase_proxy(&scale)).await;
            results.insert("proxy".into(), json!(r));
            save(&results);
        }
        if args.runs("proxy-rss") {
            let r = Box::pin(proxy_rss::phase_proxy_rss(&scale)).await;
            results.insert("proxy_rss".into(), json!(r));
            save(&results);
        }
        if args.runs("pod-route") {
            let r = Box::pin(pod_route::phase_pod_route(&scale)).await;
            results.insert("pod_route".into(), json!(r));
            save(&results);
        }
        if args.runs("burst") {
            let r = Box::pin(burst::phase_burst(&scale)).await;
            results.insert("burst".into(), json!(r));
            save(&results);
        }
        if args.runs("restart") {
            let (r, c) = Box::pin(restart_cost::phase_restart_and_cost(&scale)).await;
            results.insert("restart".into(), json!(r));
            results.insert("cost".into(), json!(c));
            save(&results);
        }
        if args.runs("ratelimit") {
            let r = Box::pin(ratelimit::phase_ratelimit(&scale)).await;
            results.insert("ratelimit".into(), json!(r));
            save(&results);
        }
        if args.runs("wait") {
            let r = Box::pin(wait::phase_wait(&scale)).await;
            results.insert("wait".into(), json!(r));
            save(&results);
        }
        if args.runs("health") {
            let r = Box::pin(health::phase_health(&scale)).await;
            results.insert("health".into(), json!(r));
            save(&results);
        }
        say(format!("results in {}", path.display()));
    });
}
