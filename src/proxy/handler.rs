//! One request through the proxy: its host and path find a destination in the table, the
//! composition's guard admits it (rate limit, access policy, health, open connections), and it
//! goes to the published port with its hop-by-hop headers dropped and the `X-Forwarded-*`
//! headers set; the answer streams back, or a WebSocket upgrade becomes a tunnel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::access::{Cidr, Denied, client_ip};
use super::answer::{self, ProxyBody};
use super::connection::Peer;
use super::headers::{self, X_FORWARDED_FOR};
use super::limits::{OpenPermit, Refused};
use super::registry::TableHandle;
use super::table::{Destination, Lookup, Upstream};
use super::upstream::Upstreams;
use crate::status::Status;

/// What every request needs, shared by all connections.
pub(crate) struct Context {
    pub(crate) table: TableHandle,
    pub(crate) upstreams: Upstreams,
    /// The proxies in front of the sidecar (the ingress controller): their `X-Forwarded-*`
    /// headers are believed.
    pub(crate) trusted: Vec<Cidr>,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Where the answers and connections are counted.
    pub(crate) status: Arc<Status>,
}

/// The host a request is for: the authority of an HTTP/2 request (or an absolute-form
/// HTTP/1.1 one), else its `Host` header.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

/// Answers one request, and counts the answer (`compose_ingress_proxy_requests_total`).
pub(crate) async fn handle(
    ctx: &Context,
    peer: &Peer,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (counted, response) = answer_to(ctx, peer, req).await;
    ctx.status.metrics.proxy_request(counted);
    response
}

async fn answer_to(
    ctx: &Context,
    peer: &Peer,
    mut req: Request<Incoming>,
) -> (&'static str, Response<ProxyBody>) {
    let Some(host) = host_of(&req) else {
        let answer = answer::bad_request("the request names no host");
        return ("bad-request", answer);
    };
    let to: Arc<Destination> = match ctx.table.current().lookup(&host, req.uri().path()) {
        Lookup::Found(d) => d.clone(),
        Lookup::Withdrawn { composition } => return ("withdrawn", answer::withdrawn(composition)),
        Lookup::Unknown => return ("not-found", answer::not_found()),
        Lookup::Starting => return ("starting", answer::starting()),
    };
    // The cheap refusals first: a request over the limit never costs a password check.
    if let Err(Refused::RateLimited { rps, retry_after }) = to.guard.admit(Instant::now()) {
        return ("rate-limited", answer::rate_limited(rps, retry_after));
    }
    if let Some(access) = &to.guard.access {
        let forwarded: Vec<&str> = req
            .headers()
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let client = client_ip(peer.ip, &forwarded, &ctx.trusted);
        match access
            .check(client, req.headers().get(header::AUTHORIZATION))
            .await
        {
            Ok(()) => {}
            Err(Denied::Address(_)) => return ("forbidden", answer::forbidden()),
            Err(Denied::Credentials { realm }) => {
                return ("unauthorized", answer::unauthorized(&realm));
            }
        }
        if access.consumes_authorization() {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
    }
    if let Some(reason) = &to.gated {
        return ("gated", answer::gated(reason));
    }
    let permit = match to.guard.open() {
        Ok(p) => p,
        Err(Refused::Busy { max }) => return ("busy", answer::busy(&to.composition, max)),
        Err(Refused::RateLimited { rps, retry_after }) => {
            return ("rate-limited", answer::rate_limited(rps, retry_after));
        }
    };
    forward(ctx, peer, &to, &host, req, permit).await
}

async fn forward(
    ctx: &Context,
    peer: &Peer,
    to: &Destination,
    host: &str,
    mut req: Request<Incoming>,
    permit: OpenPermit,
) -> (&'static str, Response<ProxyBody>) {
    let upgrade = headers::upgrade_of(req.headers());
    if upgrade.is_some() && to.upstream == Upstream::H2c {
        let why = format!(
            "service {} speaks HTTP/2 (compose-ingress.protocol): a connection upgrade cannot be carried to it",
            to.service
        );
        return ("bad-request", answer::bad_request(&why));
    }
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let trusted = ctx.trusted.iter().any(|c| c.contains(peer.ip));
    headers::strip_hop_by_hop(req.headers_mut(), to.upstream == Upstream::H2c);
    headers::set_forwarded(
        req.headers_mut(),
        peer.ip,
        trusted,
        &super::table::normalize_host(host),
    );
    if let Some(protocol) = &upgrade {
        let h = req.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol.clone());
    }
    let mut answer = match ctx.upstreams.send(to, host, req).await {
        Ok(a) => a,
        Err(e) => {
            debug!(composition = %to.composition, service = %to.service, address = %to.address, error = %e, "backend did not answer");
            let answer = answer::bad_gateway(&to.service, to.container_port, &e.to_string());
            return ("bad-gateway", answer);
        }
    };
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_side else {
            let unasked = "it switched protocols unasked";
            return (
                "bad-gateway",
                answer::bad_gateway(&to.service, to.container_port, unasked),
            );
        };
        let backend_side = hyper::upgrade::on(&mut answer);
        let activity = peer.activity.clone();
        let slot = peer.slot.clone();
        let idle = ctx.idle_timeout;
        tokio::spawn(async move {
            let (Ok(client), Ok(backend)) = (client_side.await, backend_side.await) else {
                return;
            };
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
                _ = activity.idle(idle) => {}
            }
            // The composition's and the proxy's connection slots are held until the tunnel closes.
            drop((permit, slot));
        });
        let (parts, _) = answer.into_parts();
        let empty = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        return ("forwarded", Response::from_parts(parts, empty));
    }
    headers::strip_hop_by_hop(answer.headers_mut(), false);
    let (parts, body) = answer.into_parts();
    // The slot is held until the body has streamed (a long download is an open connection).
    let body = body
        .map_frame(move |frame| {
            let _held = &permit;
            frame
        })
        .boxed_unsync();
    ("forwarded", Response::from_parts(parts, body))
}
