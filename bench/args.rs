//! The bench's settings: its command line and the size of each phase (full or smoke).

use std::path::PathBuf;

/// The phases, in the order a full run measures them (`--only` takes a comma list of them).
pub const PHASES: [&str; 11] = [
    "e2o",
    "hol",
    "routable",
    "refresh",
    "reload",
    "side",
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
        if self.smoke {
            Scale::smoke()
        } else {
            Scale::full()
        }
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
            refresh_idle: std::time::Duration::from_secs(5),
            isolation_fillers: 10000,
            isolation_samples: 30,
            isolation_churn_ticks_per_s: 10.0,
            reload_levels: vec![0, 2000, 5000, 10000, 20000],
            reload_samples: 10,
            side_samples: 20,
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
            refresh_idle: std::time::Duration::from_millis(500),
            isolation_fillers: 5,
            isolation_samples: 1,
            isolation_churn_ticks_per_s: 5.0,
            reload_levels: vec![10],
            reload_samples: 2,
            side_samples: 2,
            burst_compositions: 5,
            restart_live: 5,
            restart_orphans: 2,
            cost_compositions: 10,
            ratelimit_rps: vec![5],
            ratelimit_load: std::time::Duration::from_secs(2),
        }
    }
}
