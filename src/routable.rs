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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::model::{Backend, Refusal};
use crate::status::{CompositionState, Status};
use http_get::Answer;

/// The longest a request may wait: below the HTTP server's connection lifetime (120 s). The
/// `wait` command asks again until its own timeout.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(100);
/// How often a waiting request looks again.
const POLL: Duration = Duration::from_millis(200);
/// One probe request's limit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// `routable`, `pending` (not yet, or not exposed yet), or `refused`.
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
/// controller.
pub(crate) async fn check(
    status: &Status,
    probe: Option<&Probe>,
    name: &str,
    service: Option<&str>,
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
        let not_found = http_get::get(
            &probe.addr,
            &unknown,
            &format!("{}/", probe.base),
            PROBE_TIMEOUT,
        )
        .await
        .ok();
        for b in backends
            .iter()
            .filter(|b| b.ready && service.is_none_or(|s| s == b.service))
        {
            let path = format!("{}{}", probe.base, b.path);
            if let Ok(a) = http_get::get(&probe.addr, &b.host, &path, PROBE_TIMEOUT).await
                && from_container(&a, not_found.as_ref())
            {
                answered.push((b.host.clone(), b.path.clone()));
            }
        }
    }
    assess(name, state, service, "controller", &|b| {
        answered.iter().any(|(h, p)| *h == b.host && *p == b.path)
    })
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
        let doc = check(status, probe, name, service).await;
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
