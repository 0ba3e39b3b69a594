//! The answers the proxy gives itself: short plain-text bodies of one line that say what is
//! wrong and what to do, with the status and headers a client acts on (`Retry-After`,
//! `WWW-Authenticate`). An unknown host names nothing: a 404 must not tell a prober which
//! compositions exist.

use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// Every response body the proxy sends: a backend's, streamed, or one of these.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

pub(crate) fn text(status: StatusCode, line: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{line}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn retry_after(mut r: Response<ProxyBody>, after: Duration) -> Response<ProxyBody> {
    // Whole seconds, at least one (RFC 9110 §10.2.3).
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

pub(crate) fn not_found() -> Response<ProxyBody> {
    text(StatusCode::NOT_FOUND, "not found")
}

pub(crate) fn starting() -> Response<ProxyBody> {
    retry_after(
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sidecar is starting and has not listed its compositions yet; retry shortly",
        ),
        Duration::from_secs(2),
    )
}

pub(crate) fn withdrawn(composition: &str) -> Response<ProxyBody> {
    retry_after(
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "composition {composition} is not running; its URL stays reserved for a short \
                 while in case it comes back"
            ),
        ),
        Duration::from_secs(5),
    )
}

pub(crate) fn gated(reason: &str) -> Response<ProxyBody> {
    retry_after(
        text(StatusCode::SERVICE_UNAVAILABLE, reason),
        Duration::from_secs(5),
    )
}

pub(crate) fn busy(composition: &str, max: usize) -> Response<ProxyBody> {
    retry_after(
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "composition {composition} already has {max} open connections, its most; retry \
                 when one ends"
            ),
        ),
        Duration::from_secs(1),
    )
}

pub(crate) fn rate_limited(rps: u32, after: Duration) -> Response<ProxyBody> {
    retry_after(
        text(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("rate limit of {rps} requests per second exceeded for this composition"),
        ),
        after,
    )
}

pub(crate) fn forbidden() -> Response<ProxyBody> {
    text(
        StatusCode::FORBIDDEN,
        "forbidden: your address is not on this composition's allow-list",
    )
}

pub(crate) fn unauthorized(realm: &str) -> Response<ProxyBody> {
    let mut r = text(StatusCode::UNAUTHORIZED, "credentials required");
    // The realm is the operator's text from the policy file, validated at start-up.
    if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

pub(crate) fn bad_gateway(service: &str, container_port: u16, why: &str) -> Response<ProxyBody> {
    text(
        StatusCode::BAD_GATEWAY,
        &format!("service {service} (container port {container_port}) did not answer: {why}"),
    )
}

pub(crate) fn bad_request(why: &str) -> Response<ProxyBody> {
    text(StatusCode::BAD_REQUEST, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        let r = rate_limited(5, Duration::from_millis(120));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = rate_limited(1, Duration::from_millis(1500));
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(gated("x").headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn a_challenge_names_the_realm() {
        let r = unauthorized("previews");
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"previews\", charset=\"UTF-8\""
        );
    }
}
