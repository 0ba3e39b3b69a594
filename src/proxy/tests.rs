//! The proxy end to end on loopback: a real listener in front of real backends (hyper servers
//! on loopback ports standing in for published ports), a client speaking HTTP/1.1 or h2c to
//! it. Fast checks of the rules; the proof through a real ingress controller is on the test bed
//! (tests/e2e/pod_scope.rs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::access::{Access, BasicAuth, Cidr, Htpasswd};
use super::handler::Context;
use super::registry::{ProxySettings, Registry};
use super::server::{ServerLimits, serve};
use super::upstream::Upstreams;
use crate::model::{AppProtocol, Backend, DesiredComposition, Health};

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

/// A backend on loopback: `/` echoes what a backend sees, `/upload` counts a streamed body,
/// `/download?n` streams n bytes, and an `Upgrade: echo` request becomes a byte echo.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let resp: Response<Body> = if req.headers().contains_key(header::UPGRADE) {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = TokioIo::new(on.await.unwrap());
                            let mut buf = [0u8; 1024];
                            loop {
                                let n = io.read(&mut buf).await.unwrap_or(0);
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        });
                        Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header(header::CONNECTION, "upgrade")
                            .header(header::UPGRADE, "echo")
                            .body(full(""))
                            .unwrap()
                    } else if path == "/upload" {
                        let mut n = 0usize;
                        let mut body = req.into_body();
                        while let Some(frame) = body.frame().await {
                            n += frame.unwrap().data_ref().map_or(0, |d| d.len());
                        }
                        Response::new(full(n.to_string()))
                    } else if path == "/download" {
                        let n: usize = req.uri().query().unwrap().parse().unwrap();
                        let chunks = (0..n / 65536).map(|_| {
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![
                                7u8;
                                65536
                            ])))
                        });
                        let stream = futures::stream::iter(chunks);
                        Response::new(StreamBody::new(stream).boxed())
                    } else {
                        let h = req.headers();
                        let get = |k: &str| {
                            h.get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let host = req
                            .uri()
                            .authority()
                            .map_or_else(|| get("host"), |a| a.to_string());
                        Response::new(full(format!(
                            "host={} xff={} xfp={} xfh={} auth={} hop={} version={:?}",
                            host,
                            get("x-forwarded-for"),
                            get("x-forwarded-proto"),
                            get("x-forwarded-host"),
                            get("authorization"),
                            get("x-hop"),
                            req.version()
                        )))
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn backend_at(service: &str, host: &str, port: u16) -> Backend {
    Backend {
        service: service.into(),
        container_port: 80,
        host_port: port,
        port_name: "p".into(),
        service_port: 1024,
        host: host.into(),
        path: "/".into(),
        chosen_host: false,
        protocol: None,
        ready: true,
        health: Health::None,
        class: None,
        tls_secret: None,
    }
}

fn composition(name: &str, backends: Vec<Backend>, rps: Option<u32>) -> DesiredComposition {
    DesiredComposition {
        name: name.into(),
        object_name: format!("ci-{name}"),
        backends,
        rate_limit_rps: rps,
        access: None,
    }
}

struct Running {
    addr: SocketAddr,
    registry: Registry,
    status: Arc<crate::status::Status>,
    _cancel: tokio_util::sync::DropGuard,
}

async fn proxy(
    policies: HashMap<String, Arc<Access>>,
    trusted: &[&str],
    max_open: usize,
) -> Running {
    proxy_with(policies, trusted, max_open, 64).await
}

async fn proxy_with(
    policies: HashMap<String, Arc<Access>>,
    trusted: &[&str],
    max_open: usize,
    max_connections: usize,
) -> Running {
    let mut registry = Registry::new(Arc::new(ProxySettings {
        dial_ip: "127.0.0.1".parse().unwrap(),
        max_open_per_composition: max_open,
        policies,
    }));
    registry.listing_complete();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(crate::status::Status::default());
    let ctx = Arc::new(Context {
        table: registry.handle(),
        upstreams: Upstreams::default(),
        trusted: trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        idle_timeout: Duration::from_secs(30),
        status: status.clone(),
    });
    let limits = ServerLimits {
        max_connections,
        max_header_bytes: 16 * 1024,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
    };
    let cancel = CancellationToken::new();
    tokio::spawn(serve(listener, ctx, limits, cancel.clone()));
    Running {
        addr,
        registry,
        status,
        _cancel: cancel.drop_guard(),
    }
}

/// One HTTP/1.1 request on a new connection: (status, headers, body).
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header(header::HOST, host);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(full("")).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

const HOST: &str = "web-80-demo.runner-0.example.com";

#[tokio::test]
async fn a_request_reaches_its_composition_with_forwarded_headers_and_no_hop_headers() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &["127.0.0.0/8"], 8).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], None),
    );
    let (status, _, body) = get(
        p.addr,
        HOST,
        "/",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(&format!("host={HOST}")), "{body}");
    assert!(body.contains("xff=203.0.113.9, 127.0.0.1"), "{body}");
    assert!(
        body.contains("xfp=https"),
        "the trusted controller said https: {body}"
    );
    assert!(body.contains(&format!("xfh={HOST}")), "{body}");
    assert!(
        body.contains("hop=-"),
        "a header Connection names is the hop's: {body}"
    );
}

#[tokio::test]
async fn an_unknown_host_is_a_404_that_names_nothing() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &[], 8).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], None),
    );
    let (status, _, body) = get(p.addr, "nope.runner-0.example.com", "/", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.trim(), "not found");
    assert_eq!(get(p.addr, HOST, "/", &[]).await.0, StatusCode::OK);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &p.status.metrics.registry).unwrap();
    for line in [
        "compose_ingress_proxy_requests_total{answer=\"not-found\"} 1",
        "compose_ingress_proxy_requests_total{answer=\"forwarded\"} 1",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}

#[tokio::test]
async fn an_untrusted_peer_cannot_forge_forwarded_headers() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &["10.0.0.0/8"], 8).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], None),
    );
    let (_, _, body) = get(
        p.addr,
        HOST,
        "/",
        &[
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert!(body.contains("xff=127.0.0.1 "), "{body}");
    assert!(body.contains("xfp=http "), "{body}");
}

#[tokio::test]
async fn a_rate_limited_composition_answers_429_with_retry_after_and_its_neighbour_does_not() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &[], 8).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], Some(2)),
    );
    let other = "web-80-other.runner-0.example.com";
    p.registry.expose(
        "other",
        &composition("other", vec![backend_at("web", other, b.port())], None),
    );
    let mut codes = Vec::new();
    for _ in 0..5 {
        let (status, headers, _) = get(p.addr, HOST, "/", &[]).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.contains_key(header::RETRY_AFTER));
        }
        codes.push(status.as_u16());
    }
    assert_eq!(&codes[..2], [200, 200], "the burst passes: {codes:?}");
    assert!(codes[2..].contains(&429), "{codes:?}");
    for _ in 0..5 {
        assert_eq!(get(p.addr, other, "/", &[]).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn an_unready_service_answers_503_and_is_never_dialled() {
    // No backend listens on port 9 (discard): a dial would be a 502, not the 503 the gate gives.
    let mut p = proxy(HashMap::new(), &[], 8).await;
    let mut b = backend_at("web", HOST, 9);
    b.ready = false;
    b.health = Health::Unhealthy;
    p.registry
        .expose("demo", &composition("demo", vec![b], None));
    let (status, headers, body) = get(p.addr, HOST, "/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(body.contains("service web is unhealthy"), "{body}");
}

#[tokio::test]
async fn a_backend_that_refuses_is_a_502_that_says_so() {
    let mut p = proxy(HashMap::new(), &[], 8).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, 9)], None),
    );
    let (status, _, body) = get(p.addr, HOST, "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("service web") && body.to_lowercase().contains("refused"),
        "{body}"
    );
}

#[tokio::test]
async fn a_withdrawn_composition_answers_503_while_its_host_is_kept() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &[], 8).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], None),
    );
    p.registry.withdraw("demo");
    let (status, _, body) = get(p.addr, HOST, "/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("composition demo is not running"), "{body}");
}

#[tokio::test]
async fn basic_auth_and_the_allow_list_guard_a_composition_and_credentials_stay_here() {
    let b = backend().await;
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let auth = Access {
        allow: vec![],
        basic_auth: Some(BasicAuth::new(
            "previews",
            Htpasswd::parse(&format!("alice:{hash}")).unwrap(),
            Arc::new(tokio::sync::Semaphore::new(1)),
        )),
    };
    let office = Access {
        allow: vec![Cidr::parse("203.0.113.0/24").unwrap()],
        basic_auth: None,
    };
    let policies = HashMap::from([
        ("login".to_string(), Arc::new(auth)),
        ("office".to_string(), Arc::new(office)),
    ]);
    let mut p = proxy(policies, &["127.0.0.0/8"], 8).await;
    let mut d = composition("demo", vec![backend_at("web", HOST, b.port())], None);
    d.access = Some("login".into());
    p.registry.expose("demo", &d);
    let other = "web-80-other.runner-0.example.com";
    let mut o = composition("other", vec![backend_at("web", other, b.port())], None);
    o.access = Some("office".into());
    p.registry.expose("other", &o);

    let (status, headers, _) = get(p.addr, HOST, "/", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("previews")
    );
    // alice:s3cret
    let good = "Basic YWxpY2U6czNjcmV0";
    let (status, _, body) = get(p.addr, HOST, "/", &[("authorization", good)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("auth=-"),
        "the backend never sees the credentials: {body}"
    );
    let (status, _, _) = get(
        p.addr,
        HOST,
        "/",
        &[("authorization", "Basic YWxpY2U6bm8=")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The controller (trusted, loopback here) says who the client is.
    let inside = get(p.addr, other, "/", &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(inside.0, StatusCode::OK);
    let outside = get(p.addr, other, "/", &[("x-forwarded-for", "198.51.100.7")]).await;
    assert_eq!(outside.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &[], 8).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], None),
    );
    let stream = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    // 64 MiB up in 64 KiB chunks, without a length: chunked all the way.
    let chunks = (0..1024)
        .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![1u8; 65536]))));
    let up = StreamBody::new(futures::stream::iter(chunks)).boxed();
    let req = Request::post("/upload")
        .header(header::HOST, HOST)
        .body(up)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        (64 * 1024 * 1024).to_string()
    );
    let req = Request::get("/download?67108864")
        .header(header::HOST, HOST)
        .body(full(""))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(n, 64 * 1024 * 1024);
}

#[tokio::test]
async fn an_upgrade_becomes_a_tunnel_that_holds_a_connection_slot() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &[], 1).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], None),
    );
    let mut stream = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    // The tunnel is the composition's one open connection: a second request is refused.
    let (status, _, body) = get(p.addr, HOST, "/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("open connections"), "{body}");
    drop(stream);
    // Once it closes, the slot comes back.
    let mut ok = false;
    for _ in 0..100 {
        if get(p.addr, HOST, "/", &[]).await.0 == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the slot was given back when the tunnel closed");
}

#[tokio::test]
async fn h2c_in_front_and_behind() {
    let b = backend().await;
    let mut p = proxy(HashMap::new(), &[], 8).await;
    let mut grpc = backend_at("grpc", HOST, b.port());
    grpc.protocol = Some(AppProtocol::Grpc);
    let plain = "web-80-plain.runner-0.example.com";
    p.registry
        .expose("demo", &composition("demo", vec![grpc], None));
    p.registry.expose(
        "plain",
        &composition("plain", vec![backend_at("web", plain, b.port())], None),
    );
    // The controller speaks h2c to the proxy (prior knowledge).
    let stream = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (host, version) in [(HOST, "HTTP/2.0"), (plain, "HTTP/1.1")] {
        let req = Request::get(format!("http://{host}/"))
            .header("te", "trailers")
            .body(full(""))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains(&format!("version={version}")),
            "{host}: {body}"
        );
        assert!(body.contains(&format!("host={host}")), "{body}");
    }
}

#[tokio::test]
async fn connections_over_the_proxys_total_are_closed_at_once_and_slots_come_back() {
    let b = backend().await;
    let mut p = proxy_with(HashMap::new(), &[], 8, 2).await;
    p.registry.expose(
        "demo",
        &composition("demo", vec![backend_at("web", HOST, b.port())], None),
    );
    // Two idle connections hold the proxy's two slots.
    let held: Vec<tokio::net::TcpStream> =
        futures::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(p.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    third
        .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed without an answer");
    drop(held);
    let mut ok = false;
    for _ in 0..100 {
        if try_get(p.addr, HOST).await == Some(StatusCode::OK) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the slots came back when the connections closed");
}

/// One GET that reports a closed connection as `None` instead of failing.
async fn try_get(addr: SocketAddr, host: &str) -> Option<StatusCode> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header(header::HOST, host)
        .body(full(""))
        .ok()?;
    Some(send.send_request(req).await.ok()?.status())
}
