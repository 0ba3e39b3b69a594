//! /proc readings of a process: memory and CPU time, and its cost over a window.

use std::process::Command;
use std::time::{Duration, Instant};

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12) // utime (field 14) and stime (15); `rest` starts at field 3
}

pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    pub rss_mib: f64,
    pub hwm_mib: f64,
    pub cpu_percent: f64,
    pub window_s: f64,
}

pub async fn measure_cost(pid: u32, window: Duration) -> Cost {
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    let mut rss_max = 0;
    while start.elapsed() < window {
        rss_max = rss_max.max(proc_status_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ticks = cpu_ticks(pid).saturating_sub(t0) as f64;
    Cost {
        rss_mib: rss_max as f64 / 1024.0,
        hwm_mib: proc_status_kib(pid, "VmHWM:") as f64 / 1024.0,
        cpu_percent: 100.0 * ticks / clk_tck() / start.elapsed().as_secs_f64(),
        window_s: start.elapsed().as_secs_f64(),
    }
}
