//! The headers a reverse proxy must change (pure): hop-by-hop headers are the connection's, not
//! the message's (RFC 9110 §7.6.1), and the `X-Forwarded-*` headers tell the backend who asked.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

/// The hop-by-hop headers every hop removes, besides the ones `Connection` names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = header::FORWARDED;

/// The protocol a request asks to switch to (`Connection: upgrade` and `Upgrade: websocket`),
/// if it asks to.
pub(crate) fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes the hop-by-hop headers, and every header `Connection` names. `Upgrade` goes too:
/// the caller sets it again for an upgrade it carries. A `TE: trailers` is kept when the next
/// hop speaks HTTP/2 (gRPC requires it there; it is the only TE value HTTP/2 allows).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let te_trailers = keep_te_trailers
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Sets the `X-Forwarded-*` headers for the backend. From a trusted proxy (the ingress
/// controller) its own are kept and the peer is appended to `X-Forwarded-For`; from anybody
/// else they are the client's own words and are replaced (`Forwarded` is dropped then: nothing
/// we could vouch for).
pub(crate) fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, peer_trusted: bool, host: &str) {
    let peer = peer.to_canonical().to_string();
    let chain = peer_trusted
        .then(|| {
            let earlier: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!earlier.is_empty()).then(|| format!("{}, {peer}", earlier.join(", ")))
        })
        .flatten()
        .unwrap_or(peer);
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if (!peer_trusted || !headers.contains_key(&X_FORWARDED_HOST))
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(X_FORWARDED_HOST, v);
    }
    if !peer_trusted {
        headers.remove(FORWARDED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic abc"),
            ("accept", "text/html"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn te_trailers_stays_for_an_http2_hop_only() {
        let mut h = map(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("te"));
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h, true);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn an_upgrade_is_asked_for_with_both_headers() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_of(&h).unwrap(), "websocket");
        assert!(upgrade_of(&map(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_of(&map(&[("connection", "upgrade")])).is_none());
    }

    #[test]
    fn forwarded_headers_of_a_trusted_proxy_are_kept_and_extended() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "web.runner-0.example.com"),
        ]);
        set_forwarded(&mut h, ip, true, "web.runner-0.example.com");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "web.runner-0.example.com");
    }

    #[test]
    fn forwarded_headers_of_anybody_else_are_replaced() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.example.com"),
            ("forwarded", "for=127.0.0.1"),
        ]);
        set_forwarded(&mut h, ip, false, "web.runner-0.example.com");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "web.runner-0.example.com");
        assert!(!h.contains_key("forwarded"));
    }
}
