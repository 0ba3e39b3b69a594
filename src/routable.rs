//! `GET /v1/compositions/{project}[?service=S][&wait=routable&timeout=60s]`: a composition's URLs
//! for the CI job that started it, and whether they are routable.
//!
//! "Routable" is verified when the operator gives the ingress controller's address
//! (`--probe-url`): every URL is requested through the controller with its Host header, and it
//! counts when the answer comes from the container: not 502/503/504, and not what the controller
//! answers for a host it does not know (its not-found answer, taken from a host that cannot
//! exist). Without `--probe-url` the sidecar can only say that its objects are applied, with
//! every EndpointSlice ready (`checked: objects`); the controller may take a moment more. Either
//! way a service whose container's healthcheck does not pass (health-gated routing) is missing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

// tokio's clock (std's unless a test pauses it), so that the unit tests can hold a request to
// its deadline without a wall-clock assert.
use tokio::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::model::{Backend, Refusal};
use crate::status::{CompositionState, Status};
use http_get::Answer;

/// The longest a request may wait: below the HTTP server's connection lifetime (120 s). The
/// `wait` command asks again until its own timeout.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(100);
/// How often a waiting request looks again.
const POLL: Duration = Duration::from_millis(200);
/// One probe request's limit (less when the request's own deadline is nearer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a backend's answer a probe reads: the status and the start of the body are all
/// it compares, and a job's backend may answer megabytes to each of many waiting requests.
const PROBE_PREFIX: usize = 4096;
/// Probes of one request in flight at once: enough for a composition's URLs at the pod's host
/// cap to be probed in one round, few enough that one request cannot open hundreds of
/// connections.
const PROBES_IN_FLIGHT: usize = 16;

/// The ingress controller's address inside the cluster (`--probe-url`).
#[derive(Debug, Clone)]
pub struct Probe {
    pub addr: String,
    /// A path prefix of the controller's URL (usually empty).
    pub base: String,
    pub domain: String,
}

/// The answer document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Doc {
    pub(crate) name: String,
    /// `routable`, `pending` (not yet, or not exposed yet), `refused`, or `expired` (its
    /// exposure time is over; `missing` says when).
    pub(crate) state: &'static str,
    /// What "routable" was checked against: `controller` (a request through the ingress
    /// controller reached the container) or `objects` (the Service, its EndpointSlices, ready,
    /// and the route are applied).
    pub(crate) checked: &'static str,
    pub(crate) urls: Vec<UrlView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) refused: Vec<RefusedView>,
    /// Services (or URLs) not routable yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) missing: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct UrlView {
    pub(crate) service: String,
    pub(crate) port: u16,
    pub(crate) url: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct RefusedView {
    pub(crate) service: String,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

fn refused_view(r: &Refusal) -> RefusedView {
    RefusedView {
        service: r.service.clone(),
        reason: r.reason.as_str(),
        message: r.message.clone(),
    }
}

/// The URL of a backend among a composition's URLs (they carry the scheme).
fn url_of(b: &Backend, urls: &[String]) -> String {
    let tail = format!("://{}{}", b.host, b.path);
    urls.iter()
        .find(|u| u.ends_with(&tail))
        .cloned()
        .unwrap_or_else(|| format!("http{tail}"))
}

/// What a composition looks like to a job right now, given which of its backends were seen
/// answering (`answered`, only asked when there is a probe). Pure.
pub(crate) fn assess(
    name: &str,
    state: Option<&CompositionState>,
    service: Option<&str>,
    checked: &'static str,
    answered: &dyn Fn(&Backend) -> bool,
) -> Doc {
    let mut doc = Doc {
        name: name.to_string(),
        state: "pending",
        checked,
        urls: Vec::new(),
        refused: Vec::new(),
        missing: service.map(str::to_string).into_iter().collect(),
    };
    let wanted = |s: &str| service.is_none_or(|w| w == s);
    match state {
        None | Some(CompositionState::PendingDeletion) => {
            if service.is_none() {
                doc.missing = vec!["the composition (no opted-in service is running)".into()];
            }
        }
        Some(CompositionState::Refused { reasons }) => {
            doc.refused = reasons.iter().map(refused_view).collect();
            doc.state = "refused";
        }
        Some(CompositionState::Expired { message }) => {
            doc.state = "expired";
            doc.missing = vec![message.clone()];
        }
        Some(CompositionState::Exposed {
            urls,
            backends,
            refused,
        }) => {
            doc.refused = refused
                .iter()
                .filter(|r| r.service.is_empty() || wanted(&r.service))
                .map(refused_view)
                .collect();
            let mine: Vec<&Backend> = backends.iter().filter(|b| wanted(&b.service)).collect();
            if mine.is_empty() {
                if !doc.refused.is_empty() {
                    doc.state = "refused";
                }
                return doc;
            }
            doc.missing.clear();
            for b in &mine {
                let url = url_of(b, urls);
                if !b.ready {
                    doc.missing.push(format!(
                        "{} ({url}): container health {}, routed once healthy",
                        b.service,
                        b.health.as_str()
                    ));
                } else if !answered(b) {
                    doc.missing.push(format!("{} ({url})", b.service));
                }
                doc.urls.push(UrlView {
                    service: b.service.clone(),
                    port: b.container_port,
                    url,
                });
            }
            doc.urls.dedup();
            if doc.missing.is_empty() {
                doc.state = "routable";
            }
        }
    }
    doc
}

/// Whether an answer through the controller came from the container: not a gateway error and
/// not the controller's own answer for an unknown host.
pub(crate) fn from_container(answer: &Answer, not_found: Option<&Answer>) -> bool {
    !matches!(answer.status, 502..=504) && Some(answer) != not_found
}

/// Looks once: the composition's state, and with a probe, a request per URL through the
/// controller, all at once and each ending by `deadline` (a slow backend cannot make the
/// answer late; it is missing).
pub(crate) async fn check(
    status: &Status,
    probe: Option<&Probe>,
    name: &str,
    service: Option<&str>,
    deadline: Instant,
) -> Doc {
    let state = status.composition(name);
    let state = state.as_ref();
    let Some(probe) = probe else {
        return assess(name, state, service, "objects", &|_| true);
    };
    let mut answered: Vec<(String, String)> = Vec::new();
    if let Some(CompositionState::Exposed { backends, .. }) = state {
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let unknown = format!("compose-ingress-probe-{nonce}.{}", probe.domain);
        let wanted: Vec<&Backend> = backends
            .iter()
            .filter(|b| b.ready && service.is_none_or(|s| s == b.service))
            .collect();
        // The controller's not-found answer is asked alongside the URLs, not before them. The
        // requests are made up front (no closure is held across the await: the spawned HTTP
        // task must be Send for any lifetime of the borrowed hosts).
        let mut probes = vec![probe_one(probe, &unknown, "/", deadline)];
        for b in &wanted {
            probes.push(probe_one(probe, &b.host, &b.path, deadline));
        }
        let mut answers: Vec<Option<Answer>> = futures::stream::iter(probes)
            .buffered(PROBES_IN_FLIGHT)
            .collect()
            .await;
        let not_found = answers.remove(0);
        for (b, answer) in wanted.iter().zip(answers) {
            if answer.is_some_and(|a| from_container(&a, not_found.as_ref())) {
                answered.push((b.host.clone(), b.path.clone()));
            }
        }
    }
    assess(name, state, service, "controller", &|b| {
        answered.iter().any(|(h, p)| *h == b.host && *p == b.path)
    })
}

/// The deadline of a look without waiting (`urls`): one probe's time.
pub(crate) fn look_deadline() -> Instant {
    Instant::now() + PROBE_TIMEOUT
}

/// One probe through the controller: the start of its answer, or `None` when there was none
/// by `deadline` (or within [`PROBE_TIMEOUT`]).
async fn probe_one(probe: &Probe, host: &str, path: &str, deadline: Instant) -> Option<Answer> {
    let left = deadline.saturating_duration_since(Instant::now());
    let path = format!("{}{path}", probe.base);
    http_get::get_at_most(
        &probe.addr,
        host,
        &path,
        left.min(PROBE_TIMEOUT),
        PROBE_PREFIX,
    )
    .await
    .ok()
}

/// Waits until the composition is routable or refused, or `timeout` passes (then the last look
/// is returned, `pending`).
pub(crate) async fn wait(
    status: &Status,
    probe: Option<&Probe>,
    name: &str,
    service: Option<&str>,
    timeout: Duration,
) -> Doc {
    let deadline = Instant::now() + timeout.min(MAX_WAIT);
    loop {
        let doc = check(status, probe, name, service, deadline).await;
        if doc.state != "pending" || Instant::now() >= deadline {
            return doc;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, Reason};

    fn backend(service: &str, port: u16) -> Backend {
        Backend {
            service: service.into(),
            container_port: port,
            host_port: 30000,
            port_name: format!("{service}-{port}"),
            service_port: 2000,
            host: format!("{service}-{port}.example.com"),
            path: "/".into(),
            chosen_host: false,
            protocol: None,
            ready: true,
            health: Health::None,
            class: None,
            tls_secret: None,
        }
    }

    fn exposed(refused: Vec<Refusal>) -> CompositionState {
        CompositionState::Exposed {
            urls: vec![
                "https://api-9000.example.com/".into(),
                "https://web-80.example.com/".into(),
            ],
            backends: vec![backend("api", 9000), backend("web", 80)],
            refused,
        }
    }

    #[test]
    fn routable_when_every_wanted_url_answers() {
        let s = exposed(vec![]);
        let doc = assess("demo", Some(&s), None, "controller", &|_| true);
        assert_eq!(doc.state, "routable");
        assert_eq!(doc.urls[0].url, "https://api-9000.example.com/");
        let doc = assess("demo", Some(&s), None, "controller", &|b| {
            b.service == "web"
        });
        assert_eq!(doc.state, "pending");
        assert_eq!(doc.missing, ["api (https://api-9000.example.com/)"]);
        let doc = assess("demo", Some(&s), Some("web"), "controller", &|b| {
            b.service == "web"
        });
        assert_eq!(doc.state, "routable");
        assert_eq!(doc.urls.len(), 1);
    }

    #[test]
    fn an_unhealthy_container_is_missing_whatever_answers() {
        let mut s = exposed(vec![]);
        if let CompositionState::Exposed { backends, .. } = &mut s {
            backends[0].ready = false;
            backends[0].health = Health::Starting;
        }
        for checked in ["objects", "controller"] {
            let doc = assess("demo", Some(&s), None, checked, &|_| true);
            assert_eq!(doc.state, "pending");
            assert_eq!(
                doc.missing,
                [
                    "api (https://api-9000.example.com/): container health starting, routed once healthy"
                ]
            );
        }
        let doc = assess("demo", Some(&s), Some("web"), "objects", &|_| true);
        assert_eq!(doc.state, "routable");
    }

    #[test]
    fn refused_at_once_and_unknown_is_pending() {
        let r = crate::labels::refusal(
            "c",
            "web",
            "compose-ingress.host",
            "a.evil",
            Reason::HostOutsideDomain,
            "fix",
        );
        let s = CompositionState::Refused {
            reasons: vec![r.clone()],
        };
        let doc = assess("demo", Some(&s), None, "objects", &|_| true);
        assert_eq!(doc.state, "refused");
        assert_eq!(doc.refused[0].reason, "host-outside-domain");
        // one service refused while another is exposed: asking for the refused one is refused
        let s = CompositionState::Exposed {
            urls: vec!["http://api-9000.example.com/".into()],
            backends: vec![backend("api", 9000)],
            refused: vec![r],
        };
        assert_eq!(
            assess("demo", Some(&s), Some("web"), "objects", &|_| true).state,
            "refused"
        );
        assert_eq!(
            assess("demo", Some(&s), Some("api"), "objects", &|_| true).state,
            "routable"
        );
        let doc = assess("demo", None, Some("web"), "objects", &|_| true);
        assert_eq!(
            (doc.state, doc.missing),
            ("pending", vec!["web".to_string()])
        );
    }

    /// A controller that takes every connection and never answers (as a backend that hangs
    /// looks through it): a request with four URLs ends at its own deadline, every URL
    /// missing, where one probe after another took four probe timeouts. On tokio's paused
    /// clock: the elapsed time is the clock's, not the wall's.
    #[tokio::test(start_paused = true)]
    async fn probes_run_at_once_and_a_request_ends_at_its_deadline() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let status = Status::default();
        status.set_composition(
            "demo",
            CompositionState::Exposed {
                urls: vec![],
                backends: ["a", "b", "c", "d"].map(|s| backend(s, 80)).to_vec(),
                refused: vec![],
            },
        );
        let probe = Probe {
            addr,
            base: String::new(),
            domain: "example.com".into(),
        };
        let start = Instant::now();
        let deadline = start + Duration::from_secs(3);
        let doc = check(&status, Some(&probe), "demo", None, deadline).await;
        assert_eq!(doc.state, "pending");
        assert_eq!(doc.missing.len(), 4, "{:?}", doc.missing);
        assert!(
            Instant::now() <= deadline,
            "{:?} after the start",
            start.elapsed()
        );
        // Without a nearer deadline, one probe timeout for all of them.
        let start = Instant::now();
        let doc = check(&status, Some(&probe), "demo", None, start + MAX_WAIT).await;
        assert_eq!(doc.missing.len(), 4);
        assert!(start.elapsed() <= PROBE_TIMEOUT, "{:?}", start.elapsed());
        drop(silent);
    }

    #[test]
    fn the_controller_s_own_answers_do_not_count() {
        let nf = Answer {
            status: 404,
            body: "404 page not found\n".into(),
        };
        assert!(!from_container(&nf, Some(&nf)));
        assert!(!from_container(
            &Answer {
                status: 503,
                body: "no".into()
            },
            Some(&nf)
        ));
        assert!(from_container(
            &Answer {
                status: 200,
                body: "hi".into()
            },
            Some(&nf)
        ));
        assert!(from_container(
            &Answer {
                status: 404,
                body: "app's own 404".into()
            },
            Some(&nf)
        ));
    }
}
