//! The bed's ingress controllers as the refresh phase drives them: the shared Traefik and the
//! dedicated-class Contour with its Envoy (tests/testbed/contour.sh). For each: its class, its
//! HTTP entry on loopback, and its processes (whose memory and CPU the phase reads in /proc).

use std::time::Instant;

use testbed::bed;

use crate::process::{clk_tck, cpu_ticks, proc_status_kib};

pub struct Controller {
    /// "traefik" or "contour" (results and plots name it).
    pub name: &'static str,
    pub class: String,
    /// host:port of its plain-HTTP entry.
    pub web: String,
    /// (process name, pid): what the controller costs is the sum of these.
    pub processes: Vec<(&'static str, u32)>,
}

fn pid_of(name: &str) -> u32 {
    let path = std::path::Path::new(bed().get("TESTBED_DIR")).join(format!("{name}.pid"));
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", path.display()))
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

pub fn traefik() -> Controller {
    Controller {
        name: "traefik",
        class: "traefik".into(),
        web: addr(bed().get("TRAEFIK_WEB")),
        processes: vec![("traefik", pid_of("traefik"))],
    }
}

/// Contour and Envoy; None on a bed started without them.
pub fn contour() -> Option<Controller> {
    let b = bed();
    let web = b.env.get("CONTOUR_WEB")?;
    Some(Controller {
        name: "contour",
        class: b.get("CONTOUR_CLASS").to_string(),
        web: addr(web),
        processes: vec![("contour", pid_of("contour")), ("envoy", pid_of("envoy"))],
    })
}

/// Memory and CPU of one process over a window.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProcCost {
    pub process: String,
    /// Resident set at the end of the window.
    pub rss_mib: f64,
    /// CPU time over the window, in % of one core.
    pub cpu_percent: f64,
}

/// CPU counters of a controller's processes at the start of a window.
pub struct Window {
    start: Instant,
    ticks: Vec<u64>,
}

impl Controller {
    pub fn window(&self) -> Window {
        Window {
            start: Instant::now(),
            ticks: self.processes.iter().map(|(_, p)| cpu_ticks(*p)).collect(),
        }
    }

    /// Each process's cost since `w` began.
    pub fn cost_since(&self, w: &Window) -> Vec<ProcCost> {
        let secs = w.start.elapsed().as_secs_f64().max(1e-3);
        self.processes
            .iter()
            .zip(&w.ticks)
            .map(|((name, pid), t0)| ProcCost {
                process: name.to_string(),
                rss_mib: proc_status_kib(*pid, "VmRSS:") as f64 / 1024.0,
                cpu_percent: 100.0 * cpu_ticks(*pid).saturating_sub(*t0) as f64 / clk_tck() / secs,
            })
            .collect()
    }
}
