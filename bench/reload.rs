//! Phase "reload" (issue 28): the reload cost of NGINX- and HAProxy-style controllers. No such
//! controller can be built here (their modules are not served), so this measures the part of
//! them that grows with the number of routes on the real proxies, Debian's nginx and haproxy:
//! with N hosts configured (reload_conf.rs), a new host costs a config check (`nginx -t`,
//! `haproxy -c`) and a reload until the new host answers, while steady traffic (steady.rs)
//! counts what clients see during the reloads. This is the proxy's share only: the floor under
//! any controller that rewrites its config and reloads per change.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::args::Scale;
use crate::clock::say;
use crate::http::http_get;
use crate::process::proc_status_kib;
use crate::reload_conf::{
    BACKEND_PORT, HAPROXY_PORT, NGINX_PORT, STEADY_HOST, backend_conf, haproxy_conf, host,
    nginx_conf,
};
use crate::stats::{Stats, stats};
use crate::steady::{Seen, Steady};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReloadPoint {
    pub proxy: String,
    /// Hosts configured before each new one.
    pub hosts: usize,
    /// The config check alone (`nginx -t`, `haproxy -c`).
    pub check: Stats,
    /// From the reload signal to the new host's first 200.
    pub reload: Stats,
    /// Writing the config + check + reload → first 200: a controller's floor per change.
    pub total: Stats,
    pub failed: usize,
    /// The longest time the previous generation of processes lived on after a reload.
    pub old_workers_gone_max_s: f64,
    /// What steady clients saw during this point's reloads.
    pub steady: Seen,
    /// Resident memory of all the proxy's processes after the point.
    pub rss_mib: f64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReloadResult {
    pub nginx_version: String,
    pub haproxy_version: String,
    pub points: Vec<ReloadPoint>,
}

#[derive(Clone, Copy, PartialEq)]
enum Proxy {
    Nginx,
    Haproxy,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        }
    }
    fn port(self) -> u16 {
        match self {
            Proxy::Nginx => NGINX_PORT,
            Proxy::Haproxy => HAPROXY_PORT,
        }
    }
    fn conf(self, dir: &Path) -> PathBuf {
        dir.join(match self {
            Proxy::Nginx => "nginx.conf",
            Proxy::Haproxy => "haproxy.cfg",
        })
    }
    /// Writes the configuration for hosts 0..n, as a controller rewrites it on a change.
    fn write(self, dir: &Path, n: usize) {
        match self {
            Proxy::Nginx => std::fs::write(self.conf(dir), nginx_conf(dir, 0..n)),
            Proxy::Haproxy => {
                let (cfg, map) = haproxy_conf(dir, 0..n);
                std::fs::write(dir.join("hosts.map"), map)
                    .and_then(|_| std::fs::write(self.conf(dir), cfg))
            }
        }
        .expect("write proxy config");
    }
    fn command(self, dir: &Path) -> Command {
        let conf = self.conf(dir);
        let mut c = match self {
            Proxy::Nginx => {
                let mut c = Command::new("nginx");
                c.arg("-p").arg(dir).arg("-c").arg(&conf);
                c.arg("-e").arg(dir.join("nginx-error.log"));
                c
            }
            Proxy::Haproxy => {
                let mut c = Command::new("haproxy");
                c.arg("-f").arg(&conf);
                c
            }
        };
        c.stdin(Stdio::null());
        c
    }
    /// The config check a controller runs before a reload; its duration.
    fn check(self, dir: &Path) -> Duration {
        let t = Instant::now();
        let mut c = self.command(dir);
        c.arg(if self == Proxy::Nginx { "-t" } else { "-c" })
            .arg("-q");
        let out = c.output().expect("run the config check");
        assert!(
            out.status.success(),
            "{} config check failed: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    }
    /// Starts the proxy in the foreground (a master and its workers).
    fn start(self, dir: &Path) -> Child {
        let mut c = self.command(dir);
        match self {
            Proxy::Nginx => c.args(["-g", "daemon off;"]),
            Proxy::Haproxy => c.args(["-W", "-db"]),
        };
        let log = std::fs::File::create(dir.join(format!("{}.out", self.name()))).expect("log");
        c.stdout(log.try_clone().expect("log")).stderr(log);
        c.spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name()))
    }
    /// The reload signal: nginx's master re-reads on HUP, haproxy's master-worker on USR2.
    fn reload(self, master: u32) {
        let sig = if self == Proxy::Nginx {
            "-HUP"
        } else {
            "-USR2"
        };
        let ok = Command::new("kill")
            .args([sig, &master.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "signal {} to {}", sig, self.name());
    }
}

/// The children of `pid` (the proxy's workers), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| {
                    let rest = t.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn rss_mib(master: u32) -> f64 {
    std::iter::once(master)
        .chain(children(master))
        .map(|p| proc_status_kib(p, "VmRSS:"))
        .sum::<u64>() as f64
        / 1024.0
}

/// Polls `host` through `addr` until 200; the time it took, or None after `limit`.
async fn until_200(addr: &str, host: &str, limit: Duration) -> Option<f64> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some((200, _)) = http_get(addr, host, "/", Duration::from_secs(2)).await {
            return Some(t.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

pub async fn phase_reload(scale: &Scale) -> ReloadResult {
    // Debian's nginx and haproxy come with the bed's packages (install.sh, idempotent).
    let install = Command::new(testbed::repo_root().join("tests/testbed/install.sh"))
        .status()
        .expect("run tests/testbed/install.sh");
    assert!(install.success(), "tests/testbed/install.sh failed");
    let dir = testbed::repo_root().join("target/bench-reload");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create target/bench-reload");
    let mut result = ReloadResult {
        nginx_version: version("nginx", "-v"),
        haproxy_version: version("haproxy", "-v"),
        ..ReloadResult::default()
    };
    std::fs::write(dir.join("backend.conf"), backend_conf(&dir)).expect("backend conf");
    let mut backend = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("backend.conf"))
        .arg("-e")
        .arg(dir.join("backend-error.log"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start the backend nginx");
    let backend_addr = format!("127.0.0.1:{BACKEND_PORT}");
    assert!(
        until_200(&backend_addr, "backend", Duration::from_secs(30))
            .await
            .is_some(),
        "the backend nginx does not answer"
    );
    for proxy in [Proxy::Nginx, Proxy::Haproxy] {
        let points = curve(proxy, &dir, scale).await;
        result.points.extend(points);
    }
    testbed::stop_process(&mut backend);
    for p in &result.points {
        say(format!(
            "reload/{} at {} hosts: check p50 {:.0} ms, reload→200 p50 {:.0} / max {:.0} ms; steady: {:?}",
            p.proxy, p.hosts, p.check.p50_ms, p.reload.p50_ms, p.reload.max_ms, p.steady
        ));
    }
    result
}

async fn curve(proxy: Proxy, dir: &Path, scale: &Scale) -> Vec<ReloadPoint> {
    let addr = format!("127.0.0.1:{}", proxy.port());
    let name = proxy.name();
    let mut child: Option<Child> = None;
    let mut points = Vec::new();
    for &level in &scale.reload_levels {
        proxy.write(dir, level);
        let last = if level > 0 {
            host(level - 1)
        } else {
            STEADY_HOST.to_string()
        };
        match &child {
            None => child = Some(proxy.start(dir)),
            Some(c) => proxy.reload(c.id()),
        }
        let c = child.as_mut().expect("started");
        let master = c.id();
        let t = Instant::now();
        let mut ready = None;
        while ready.is_none() && t.elapsed() < Duration::from_secs(300) {
            if let Ok(Some(status)) = c.try_wait() {
                let out = dir.join(format!("{name}.out"));
                panic!("{name} exited ({status}); see {}", out.display());
            }
            ready = until_200(&addr, &last, Duration::from_secs(1)).await;
        }
        let ready = ready.map(|_| t.elapsed().as_secs_f64() * 1e3);
        say(format!(
            "reload/{name}: {level} hosts configured, answering after {ready:?} ms"
        ));
        if ready.is_none() {
            say(format!(
                "reload/{name}: {level} hosts not served within 300 s; stopping"
            ));
            break;
        }
        let workers = wait_generation(master, None, Duration::from_secs(60))
            .await
            .1;
        let steady = Steady::start(&addr, STEADY_HOST, 4, 1, Duration::from_millis(10));
        let (mut check, mut reload, mut total, mut failed, mut gone_max) =
            (Vec::new(), Vec::new(), Vec::new(), 0, 0.0f64);
        for s in 0..scale.reload_samples {
            let t0 = Instant::now();
            proxy.write(dir, level + s + 1);
            check.push(proxy.check(dir).as_secs_f64() * 1e3);
            let before = children(master);
            let t1 = Instant::now();
            proxy.reload(master);
            match until_200(&addr, &host(level + s), Duration::from_secs(120)).await {
                Some(_) => {
                    reload.push(t1.elapsed().as_secs_f64() * 1e3);
                    total.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                None => failed += 1,
            }
            wait_generation(master, Some(&before), Duration::from_secs(60)).await;
            gone_max = gone_max.max(t1.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let seen = steady.stop().await;
        let point = ReloadPoint {
            proxy: name.to_string(),
            hosts: level,
            check: stats(&check),
            reload: stats(&reload),
            total: stats(&total),
            failed,
            old_workers_gone_max_s: gone_max,
            steady: seen,
            rss_mib: rss_mib(master),
        };
        say(format!(
            "reload/{name} at {level}: {point:?} ({workers} workers)"
        ));
        points.push(point);
    }
    if let Some(mut c) = child {
        testbed::stop_process(&mut c);
    }
    points
}

/// Waits until none of `old` (a previous generation of workers) is a child of `master` any
/// more, or, without `old`, until the children stop changing; returns (seconds waited, the
/// number of children left).
async fn wait_generation(master: u32, old: Option<&[u32]>, limit: Duration) -> (f64, usize) {
    let t = Instant::now();
    let mut last = children(master);
    while t.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = children(master);
        let settled = match old {
            Some(old) => !now.iter().any(|p| old.contains(p)),
            None => now == last && !now.is_empty(),
        };
        if settled {
            return (t.elapsed().as_secs_f64(), now.len());
        }
        last = now;
    }
    (t.elapsed().as_secs_f64(), last.len())
}
