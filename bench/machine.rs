//! The machine a run measured, recorded with its results.

use std::process::Command;

use serde_json::{Value, json};

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "nproc": run("nproc", &[]),
        "free_g": run("free", &["-g"]),
        "kernel": run("uname", &["-r"]),
        // The engine of the runner pods this run makes (pod.sh --engine), not whatever
        // dockerd is on the PATH.
        "docker_engine": engine_version(),
    })
}

/// "29 (29.8.0)": the runner pods' engine and the version the bed recorded for it.
fn engine_version() -> String {
    let engine = testbed::engine();
    let key = format!("ENGINE_{}_VERSION", engine.replace('.', "_"));
    let version = testbed::bed().env.get(&key).cloned().unwrap_or_default();
    format!("{engine} ({version})")
}

/// The machine's load over a phase: other engineers share its 2 cores, so a number means
/// little without it. /proc/loadavg's three figures at the start and the end, and its 1-minute
/// figure sampled every 5 s in between.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Load {
    pub at_start: Vec<f64>,
    pub at_end: Vec<f64>,
    pub mean_1m: f64,
    pub max_1m: f64,
    pub samples: usize,
}

pub fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// Samples the load until [`LoadWatch::finish`].
pub struct LoadWatch {
    at_start: Vec<f64>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadWatch {
    pub fn start() -> LoadWatch {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(one) = loadavg().first() {
                    into.lock().expect("lock").push(*one);
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
        LoadWatch {
            at_start: loadavg(),
            seen,
            task,
        }
    }

    pub fn finish(self) -> Load {
        self.task.abort();
        let seen = self.seen.lock().expect("lock").clone();
        let n = seen.len().max(1) as f64;
        Load {
            at_start: self.at_start,
            at_end: loadavg(),
            mean_1m: seen.iter().sum::<f64>() / n,
            max_1m: seen.iter().copied().fold(0.0, f64::max),
            samples: seen.len(),
        }
    }
}
