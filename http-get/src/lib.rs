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

/// GET `path` from `addr` with `Host: host`, within `timeout`.
pub async fn get(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
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
        let mut buf = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        parse(&buf).ok_or_else(|| GetError::Malformed { url: url.clone() })
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| GetError::Timeout {
            url: url.clone(),
            after: timeout,
        })?
}

/// Status line and body of a raw HTTP/1.x answer.
fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        body: body.to_string(),
    })
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
