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
