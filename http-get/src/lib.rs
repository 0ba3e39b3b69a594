//! A minimal HTTP/1.0 GET over TCP: the one HTTP client of compose-ingress. The sidecar's binary
//! is a client in two places (the routability probe through the ingress controller, and the
//! `wait`/`urls` commands asking the sidecar); the test bed (testbed/) and the benchmarks
//! (bench/) ask the sidecar and the bed's ingress controller with it too. Plain HTTP only (all of
//! them talk to in-cluster or loopback addresses); one request per connection; answers larger
//! than [`MAX_ANSWER`] are cut.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of an answer that is read (the probe only needs the status and the start of the
/// body; the sidecar's own documents are far smaller).
pub const MAX_ANSWER: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("{url}: only http://host:port/path URLs are supported")]
    Url { url: String },
    #[error("GET {url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("GET {url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("GET {url}: not an HTTP answer")]
    Malformed { url: String },
}

/// An answer: status and body (cut at [`MAX_ANSWER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `http://host:port[/base]` split into the address to connect to and a path prefix.
pub fn split_url(url: &str) -> Result<(String, String), GetError> {
    let bad = || GetError::Url {
        url: url.to_string(),
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, path.trim_end_matches('/').to_string()))
}

/// GET `path` from `addr` with `Host: host`, within `timeout`; at most [`MAX_ANSWER`] of the
/// answer is read.
pub async fn get(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<Answer, GetError> {
    get_at_most(addr, host, path, timeout, MAX_ANSWER as usize).await
}

/// [`get`], reading at most `limit` bytes of the answer (head included) into one buffer that
/// grows with what arrives (never past `limit`) and becomes the body in place: a caller that
/// only needs the status and the start of the body (the routability probe) bounds its memory
/// per request, whatever the server sends.
pub async fn get_at_most(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
    limit: usize,
) -> Result<Answer, GetError> {
    let url = format!("http://{addr}{path} (Host: {host})");
    let request = async {
        let io = |source| GetError::Io {
            url: url.clone(),
            source,
        };
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: compose-ingress\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        // The answer is whole when its Content-Length is read, not when the server closes:
        // Envoy keeps a connection open after its answer until the client closes it (its
        // delayed close, 1 s by default), and waiting for the close would add that second to
        // every probe through an Envoy-based controller.
        let mut buf: Vec<u8> = Vec::new();
        let mut filled = 0;
        while filled < limit && !complete(&buf[..filled]) {
            if filled == buf.len() {
                buf.resize(limit.min((buf.len() * 2).max(READ_STEP)), 0);
            }
            let n = stream.read(&mut buf[filled..]).await.map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        parse_owned(buf).ok_or_else(|| GetError::Malformed { url: url.clone() })
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| GetError::Timeout {
            url: url.clone(),
            after: timeout,
        })?
}

/// The first read's room (and the least a buffer grows by).
const READ_STEP: usize = 4096;

/// [`parse`] of a buffer it may keep: the body is the buffer itself, its head drained off,
/// with no copy when it is UTF-8.
fn parse_owned(mut raw: Vec<u8>) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = status_of(&raw[..end])?;
    raw.drain(..end + 4);
    let body = String::from_utf8(raw)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Some(Answer { status, body })
}

/// The status of an HTTP/1.x answer's head.
fn status_of(head: &[u8]) -> Option<u16> {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    if !line.starts_with("HTTP/1.") {
        return None;
    }
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `buf` holds a whole answer: its head and as many body bytes as its Content-Length
/// says (an answer without one ends when the server closes).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| buf.len() >= end + 4 + len)
}

/// Status line and body of a raw HTTP/1.x answer.
#[cfg(test)]
fn parse(raw: &[u8]) -> Option<Answer> {
    parse_owned(raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_base_path() {
        let s = |u: &str| split_url(u).map_err(|e| e.to_string());
        assert_eq!(
            s("http://traefik.kube-system.svc").unwrap(),
            ("traefik.kube-system.svc:80".into(), String::new())
        );
        assert_eq!(
            s("http://127.0.0.1:9102/").unwrap(),
            ("127.0.0.1:9102".into(), String::new())
        );
        assert_eq!(
            s("http://[::1]:8080/base/").unwrap(),
            ("[::1]:8080".into(), "/base".into())
        );
        assert!(s("https://x").is_err());
        assert!(s("http://user@x").is_err());
        assert!(s("http:///x").is_err());
    }

    #[test]
    fn an_answer_is_whole_at_its_content_length() {
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"));
        assert!(
            !complete(b"HTTP/1.1 200 OK\r\n\r\nabc"),
            "no length: until the close"
        );
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Le"));
    }

    /// A server that answers and keeps the connection open (Envoy's delayed close): the answer
    /// is back without waiting for the close.
    #[tokio::test]
    async fn a_server_that_keeps_the_connection_open_does_not_hold_the_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let a = get(&addr, "x", "/", Duration::from_secs(5)).await.unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "ok"));
    }

    /// A server that answers a megabyte: at most `limit` of it is read, into one buffer of at
    /// most `limit` bytes (the body is that buffer).
    #[tokio::test]
    async fn a_big_answer_is_read_up_to_the_limit_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req).await;
                    let body = vec![b'x'; 1024 * 1024];
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        let a = get_at_most(&addr, "x", "/", Duration::from_secs(5), 4096)
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        assert!(
            !a.body.is_empty() && a.body.len() < 4096,
            "{}",
            a.body.len()
        );
        assert!(a.body.capacity() <= 4096, "{}", a.body.capacity());
        let whole = get(&addr, "x", "/", Duration::from_secs(5)).await.unwrap();
        assert!(
            whole.body.len() > 1024 * 1024 - 100,
            "the shared client still reads a megabyte"
        );
    }

    #[test]
    fn answers_parse() {
        let a = parse(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n404 page not found\n",
        )
        .unwrap();
        assert_eq!(
            a,
            Answer {
                status: 404,
                body: "404 page not found\n".into()
            }
        );
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_none());
        assert!(parse(b"HTTP/1.1 200 OK").is_none());
    }
}
