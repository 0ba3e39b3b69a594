//! The bench's settings: its command line and the size of each phase (full or smoke).

use std::path::PathBuf;

use crate::scope::Scope;

/// The phases, in the order a full run measures them (`--only` takes a comma list of them).
pub const PHASES: [&str; 14] = [
    "e2o",
    "hol",
    "routable",
    "refresh",
    "reload",
    "side",
    "proxy",
    "proxy-rss",
    "pod-route",
    "burst",
    "restart",
    "ratelimit",
    "wait",
    "health",
];

/// `cargo bench --bench bench -- [--smoke] [--only PHASE,..] [--replot] [--out DIR]`
#[derive(Debug, clap::Parser)]
#[command(
    name = "bench",
    about = "Benchmarks of compose-ingress on the test bed (see BENCHMARKS.md)"
)]
pub struct Args {
    /// A tiny run of every phase (CI keeps it alive); writes to target/bench-smoke by default.
    #[arg(long)]
    pub smoke: bool,
    /// Only these phases (comma-separated), in the bench's own order.
    #[arg(long, value_name = "PHASE,..", value_delimiter = ',', value_parser = PHASES)]
    pub only: Vec<String>,
    /// Redraw the plots from the output directory's results.json; measure nothing.
    #[arg(long)]
    pub replot: bool,
    /// Where results.json, results.md and the plots go [default: bench/plots, or
    /// target/bench-smoke with --smoke].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// refresh: only these route scopes (default: both).
    #[arg(long, value_name = "SCOPE,..", value_delimiter = ',', value_parser = ["composition", "pod"])]
    pub refresh_scopes: Vec<String>,
    /// refresh and pod-route: these filler levels instead of the run's own.
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub levels: Vec<usize>,
    /// refresh: without its isolation part (a dedicated class under a loaded shared controller).
    #[arg(long)]
    pub no_isolation: bool,
    /// `cargo bench` passes `--bench` to every `harness = false` benchmark; accepted, ignored.
    #[arg(long = "bench", hide = true)]
    _cargo_bench: bool,
}

impl Args {
    /// Whether `phase` runs: every phase by default, or those `--only` names.
    pub fn runs(&self, phase: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == phase)
    }

    pub fn scale(&self) -> Scale {
        let mut scale = if self.smoke {
            Scale::smoke()
        } else {
            Scale::full()
        };
        if !self.refresh_scopes.is_empty() {
            scale.refresh_scopes = self
                .refresh_scopes
                .iter()
                .filter_map(|s| Scope::parse(s))
                .collect();
        }
        if !self.levels.is_empty() {
            scale.refresh_levels = self.levels.clone();
            scale.pod_route_levels = self.levels.clone();
        }
        scale.refresh_isolation &= !self.no_isolation;
        scale
    }

    /// The output directory, created if missing.
    pub fn out_dir(&self) -> PathBuf {
        let out = self.out.clone().unwrap_or_else(|| {
            testbed::repo_root().join(if self.smoke {
                "target/bench-smoke"
            } else {
                "bench/plots"
            })
        });
        std::fs::create_dir_all(&out).expect("create output directory");
        out
    }
}

/// How much each phase measures.
#[derive(Clone, Debug)]
pub struct Scale {
    pub smoke: bool,
    pub e2o_n: usize,
    /// Orphan compositions whose graces end together, and compositions arriving meanwhile.
    pub hol_orphans: usize,
    pub hol_arrivals: usize,
    pub routable_levels: Vec<usize>,
    pub routable_samples: usize,
    /// Filler routes per point of the refresh curve, samples per point, and the quiet window
    /// over which a controller's idle cost is read.
    pub refresh_levels: Vec<usize>,
    pub refresh_samples: usize,
    /// Samples per scope at the largest level (the pod scope's goal is stated there).
    pub refresh_samples_largest: usize,
    pub refresh_scopes: Vec<Scope>,
    pub refresh_isolation: bool,
    pub refresh_idle: std::time::Duration,
    /// Isolation: fillers on the shared controller, samples per class, churn ticks per second
    /// (each a create and a delete).
    pub isolation_fillers: usize,
    pub isolation_samples: usize,
    pub isolation_churn_ticks_per_s: f64,
    /// Reload cost of a reloading proxy (nginx, haproxy): server blocks per point, reloads
    /// per point.
    pub reload_levels: Vec<usize>,
    pub reload_samples: usize,
    pub side_samples: usize,
    /// Proxy cost: concurrent clients per point, each point `proxy_rounds` × (a direct run and
    /// a proxied run) of `proxy_run`.
    pub proxy_concurrency: Vec<usize>,
    pub proxy_run: std::time::Duration,
    pub proxy_rounds: usize,
    /// Proxy memory: compositions mapped, and connections (then WebSockets) held open.
    pub rss_compositions: usize,
    pub rss_connections: usize,
    /// Pod route: filler levels, new pod routes per level.
    pub pod_route_levels: Vec<usize>,
    pub pod_route_samples: usize,
    pub burst_compositions: usize,
    pub restart_live: usize,
    pub restart_orphans: usize,
    pub cost_compositions: usize,
    /// Configured limits of the ratelimit phase, each loaded at 4× for `ratelimit_load`.
    pub ratelimit_rps: Vec<u32>,
    pub ratelimit_load: std::time::Duration,
}

impl Scale {
    fn full() -> Scale {
        Scale {
            smoke: false,
            e2o_n: 200,
            hol_orphans: 100,
            hol_arrivals: 20,
            routable_levels: vec![0, 100, 500, 1000, 2000],
            routable_samples: 12,
            refresh_levels: vec![0, 2000, 5000, 10000, 20000],
            refresh_samples: 30,
            refresh_samples_largest: 100,
            refresh_scopes: Scope::ALL.to_vec(),
            refresh_isolation: true,
            refresh_idle: std::time::Duration::from_secs(5),
            isolation_fillers: 10000,
            isolation_samples: 30,
            isolation_churn_ticks_per_s: 10.0,
            reload_levels: vec![0, 2000, 5000, 10000, 20000],
            reload_samples: 10,
            side_samples: 100,
            proxy_concurrency: vec![1, 16, 64],
            proxy_run: std::time::Duration::from_secs(5),
            proxy_rounds: 3,
            rss_compositions: 1000,
            rss_connections: 200,
            pod_route_levels: vec![0, 2000, 10000],
            pod_route_samples: 10,
            burst_compositions: 100,
            restart_live: 500,
            restart_orphans: 50,
            cost_compositions: 1000,
            ratelimit_rps: vec![5, 20, 50, 100],
            ratelimit_load: std::time::Duration::from_secs(10),
        }
    }
    fn smoke() -> Scale {
        Scale {
            smoke: true,
            e2o_n: 5,
            hol_orphans: 3,
            hol_arrivals: 2,
            routable_levels: vec![0],
            routable_samples: 2,
            refresh_levels: vec![5],
            refresh_samples: 2,
            refresh_samples_largest: 2,
            refresh_scopes: Scope::ALL.to_vec(),
            refresh_isolation: true,
            refresh_idle: std::time::Duration::from_millis(500),
            isolation_fillers: 5,
            isolation_samples: 1,
            isolation_churn_ticks_per_s: 5.0,
            reload_levels: vec![10],
            reload_samples: 2,
            side_samples: 2,
            proxy_concurrency: vec![1, 4],
            proxy_run: std::time::Duration::from_millis(500),
            proxy_rounds: 1,
            rss_compositions: 5,
            rss_connections: 8,
            pod_route_levels: vec![0],
            pod_route_samples: 1,
            burst_compositions: 5,
            restart_live: 5,
            restart_orphans: 2,
            cost_compositions: 10,
            ratelimit_rps: vec![5],
            ratelimit_load: std::time::Duration::from_secs(2),
        }
    }
}
