//! Steady HTTP traffic against a proxy while it reloads: clients on keep-alive connections
//! (what browsers and API clients hold) and a client opening a connection per request, each
//! paced, counting what they get back. A keep-alive connection the proxy closes while idle
//! (EOF before any byte of an answer) is counted apart: HTTP clients retry those for
//! idempotent requests, so a user rarely sees them; resets, timeouts and non-200 answers they
//! do see.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub requests: u64,
    pub ok: u64,
    /// Answers other than 200.
    pub non_200: u64,
    /// Keep-alive connections closed by the proxy before an answer began (retryable).
    pub closed_idle: u64,
    /// Connect failures, resets, truncated answers, timeouts.
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    non_200: AtomicU64,
    closed_idle: AtomicU64,
    errors: AtomicU64,
}

pub struct Steady {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

enum Outcome {
    Status(u16, bool),
    ClosedIdle,
    Error,
}

/// One request on `conn`; `Status(code, keep)` with whether the connection stays open. On a
/// `reused` connection, a failure before the first byte of the answer is the proxy closing it
/// while idle (a reset too: the proxy's kernel resets a request written to a socket it closed).
async fn one(conn: &mut BufReader<TcpStream>, host: &str, reused: bool) -> Outcome {
    let before_answer = if reused {
        Outcome::ClosedIdle
    } else {
        Outcome::Error
    };
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    if conn.get_mut().write_all(req.as_bytes()).await.is_err() {
        return before_answer;
    }
    let mut line = String::new();
    match conn.read_line(&mut line).await {
        Ok(0) | Err(_) => return before_answer,
        Ok(_) => {}
    }
    let Some(code) = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()) else {
        return Outcome::Error;
    };
    let (mut length, mut keep) = (0usize, true);
    loop {
        let mut h = String::new();
        match conn.read_line(&mut h).await {
            Ok(0) | Err(_) => return Outcome::Error,
            Ok(_) => {}
        }
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if h == "connection: close" {
            keep = false;
        }
    }
    let mut body = vec![0; length];
    if conn.read_exact(&mut body).await.is_err() {
        return Outcome::Error;
    }
    Outcome::Status(code, keep)
}

impl Steady {
    /// Starts `keepalive` keep-alive clients and `fresh` connection-per-request clients against
    /// `addr` with `Host: host`, each sending a request every `pace`.
    pub fn start(addr: &str, host: &str, keepalive: usize, fresh: usize, pace: Duration) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let tasks = (0..keepalive + fresh)
            .map(|n| {
                let (stop, c) = (stop.clone(), counters.clone());
                let (addr, host, reuse) = (addr.to_string(), host.to_string(), n < keepalive);
                tokio::spawn(async move {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    let mut served = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(pace).await;
                        if conn.is_none() {
                            match TcpStream::connect(&addr).await {
                                Ok(s) => {
                                    conn = Some(BufReader::new(s));
                                    served = 0;
                                }
                                Err(_) => {
                                    c.requests.fetch_add(1, Ordering::Relaxed);
                                    c.errors.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                        }
                        let s = conn.as_mut().expect("connected");
                        let outcome = tokio::time::timeout(
                            Duration::from_secs(10),
                            one(s, &host, served > 0),
                        )
                        .await;
                        served += 1;
                        c.requests.fetch_add(1, Ordering::Relaxed);
                        let keep = match outcome {
                            Ok(Outcome::Status(200, keep)) => {
                                c.ok.fetch_add(1, Ordering::Relaxed);
                                keep
                            }
                            Ok(Outcome::Status(_, keep)) => {
                                c.non_200.fetch_add(1, Ordering::Relaxed);
                                keep
                            }
                            Ok(Outcome::ClosedIdle) => {
                                c.closed_idle.fetch_add(1, Ordering::Relaxed);
                                false
                            }
                            Ok(Outcome::Error) | Err(_) => {
                                c.errors.fetch_add(1, Ordering::Relaxed);
                                false
                            }
                        };
                        if !keep || !reuse {
                            conn = None;
                        }
                    }
                })
            })
            .collect();
        Steady {
            stop,
            counters,
            tasks,
        }
    }

    /// What the clients got so far.
    pub fn seen(&self) -> Seen {
        let c = &self.counters;
        Seen {
            requests: c.requests.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            non_200: c.non_200.load(Ordering::Relaxed),
            closed_idle: c.closed_idle.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    pub async fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.seen()
    }
}
