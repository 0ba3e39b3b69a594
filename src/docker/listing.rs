//! The container listing, requested and parsed here rather than by bollard: Docker 29 lists
//! every container with its NetworkSettings, Mounts, HostConfig, ImageManifestDescriptor, ...,
//! and parsing all of it into bollard's `ContainerSummary` at every resync left thousands of
//! small allocations fragmented in the heap. [`Listed`] holds only the fields the sidecar reads;
//! serde skips the rest of the JSON without building it.
//!
//! One `GET /vX.Y/containers/json` per connection, over the daemon's unix socket or TCP, with
//! the API version that the shared bollard client negotiated.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer};

use super::json_array::ArrayElements;
use super::{Cause, DockerError};

/// The most one listing may take, from connecting to its last byte (bollard's timeout was 60 s).
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the request is called in errors.
const WHAT: &str = "list containers";

/// One container of the listing: only what the sidecar reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Listed {
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) names: Vec<String>,
    /// Only the labels the sidecar reads ([`crate::labels::READ_PREFIXES`]): a job's
    /// containers may carry any number of others, each of any size, and none is kept.
    #[serde(default, deserialize_with = "read_labels")]
    pub(crate) labels: BTreeMap<String, String>,
    /// "running", "created", "exited", ...
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) state: String,
    /// "Up 3 seconds (healthy)", ...
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) status: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) ports: Vec<ListedPort>,
    /// API 1.52+ only.
    #[serde(default)]
    pub(crate) health: Option<ListedHealth>,
    /// Unix seconds (every API version lists it).
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) created: i64,
}

/// One port of a container: a published binding when it has a `PublicPort`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListedPort {
    /// The binding's address ("0.0.0.0", "::", "127.0.0.1", ...).
    #[serde(rename = "IP", default)]
    pub(crate) ip: Option<String>,
    #[serde(rename = "PrivatePort", default)]
    pub(crate) private_port: Option<u16>,
    #[serde(rename = "PublicPort", default)]
    pub(crate) public_port: Option<u16>,
    /// "tcp", "udp" or "sctp".
    #[serde(rename = "Type", default, deserialize_with = "null_as_default")]
    pub(crate) typ: String,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListedHealth {
    /// "healthy", "unhealthy", "starting" or "none".
    #[serde(rename = "Status", default, deserialize_with = "null_as_default")]
    pub(crate) status: String,
}

/// A JSON `null` as the type's default (Docker sends `"Labels": null`, `"Ports": null`, ...).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Whether the sidecar reads a label of this key.
pub(super) fn is_read(key: &str) -> bool {
    crate::labels::READ_PREFIXES
        .iter()
        .any(|p| key.starts_with(p))
}

/// A listing's `Labels` (or `null`), keeping only the keys [`is_read`] takes: the others are
/// skipped in the JSON without a String built for them.
fn read_labels<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Labels;
    impl<'de> serde::de::Visitor<'de> for Labels {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of label keys to values, or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key_seed(ReadKey)? {
                match key {
                    Some(key) => {
                        kept.insert(key, map.next_value::<String>()?);
                    }
                    None => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            Ok(kept)
        }
    }
    deserializer.deserialize_option(Labels)
}

/// A label key: `Some` (owned) when [`is_read`] takes it, else `None` with nothing allocated
/// (unless the key has JSON escapes, which serde unescapes into a scratch buffer first).
struct ReadKey;

impl<'de> serde::de::DeserializeSeed<'de> for ReadKey {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for ReadKey {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a label key")
    }
    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(is_read(key).then(|| key.to_string()))
    }
}

/// Where the daemon listens, from a `--docker-host` value.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    /// A socket path.
    Unix(&'a str),
    /// `host:port`.
    Tcp(&'a str),
}

/// `unix:///path`, or `tcp://host:port` / `http://host:port` (as bollard took them).
fn endpoint(host: &str) -> Endpoint<'_> {
    if let Some(path) = host.strip_prefix("unix://") {
        return Endpoint::Unix(path);
    }
    let authority = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
        .unwrap_or(host);
    Endpoint::Tcp(authority.trim_end_matches('/'))
}

/// `s` percent-encoded for a query string (everything but RFC 3986's unreserved characters).
pub(super) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The request's path and query: all containers, matching `filters` (none when empty).
fn listing_path(api_version: &str, filters: &BTreeMap<&str, Vec<String>>) -> String {
    let mut path = format!("/v{api_version}/containers/json?all=1");
    if !filters.is_empty() {
        // A map of strings to lists of strings always serializes.
        let json = serde_json::to_string(filters).unwrap_or_default();
        path.push_str("&filters=");
        path.push_str(&query_escape(&json));
    }
    path
}

/// Error bodies are short (`{"message": "..."}`); more than this of one is not kept.
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Every container of the daemon at `host` matching `filters`, all states, asked with API
/// version `api_version` ("1.53"). Parsed one container at a time as the body arrives
/// (src/docker/json_array.rs): the body is never held whole.
pub(super) async fn list_containers(
    host: &str,
    api_version: &str,
    filters: &BTreeMap<&str, Vec<String>>,
) -> Result<Vec<Listed>, DockerError> {
    let mut listed: Vec<Listed> = Vec::new();
    let mut elements = ArrayElements::default();
    let mut failure: Option<DockerError> = None;
    let mut error_body: Vec<u8> = Vec::new();
    let decode = |source: Cause| DockerError::Decode {
        host: host.to_string(),
        what: WHAT,
        source,
    };
    let on_chunk = |status: StatusCode, chunk: &[u8]| {
        if !status.is_success() {
            let room = MAX_ERROR_BODY.saturating_sub(error_body.len());
            error_body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            return ControlFlow::Continue(());
        }
        if failure.is_some() {
            return ControlFlow::Continue(());
        }
        let parsed = elements.feed(chunk, &mut |element: &[u8]| {
            listed.push(serde_json::from_slice(element)?);
            Ok::<(), serde_json::Error>(())
        });
        failure = match parsed {
            Ok(()) => None,
            Err(Ok(e)) => Some(decode(e.into())),
            Err(Err(e)) => Some(decode(e.into())),
        };
        ControlFlow::Continue(())
    };
    let status = tokio::time::timeout(
        TIMEOUT,
        get(host, WHAT, &listing_path(api_version, filters), on_chunk),
    )
    .await
    .map_err(|_| DockerError::Request {
        host: host.to_string(),
        what: WHAT,
        source: format!("no complete answer within {} s", TIMEOUT.as_secs()).into(),
    })??;
    if !status.is_success() {
        return Err(DockerError::Status {
            host: host.to_string(),
            what: WHAT,
            status,
            message: error_message(&error_body),
        });
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    elements.finish().map_err(|e| decode(e.into()))?;
    Ok(listed)
}

/// The `message` of Docker's error body (`{"message": "..."}`), else the body's start as text.
pub(super) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    if let Ok(m) = serde_json::from_slice::<Message>(body) {
        return m.message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no message".to_string();
    }
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// `GET path_and_query` on the daemon (`what` names the request in errors): the answer's
/// status; its body goes to `on_chunk` as it arrives, until the body ends or `on_chunk` says
/// stop (an endless answer, the event stream, ends only so).
pub(super) async fn get(
    host: &str,
    what: &'static str,
    path_and_query: &str,
    on_chunk: impl FnMut(StatusCode, &[u8]) -> ControlFlow<()>,
) -> Result<StatusCode, DockerError> {
    let dial = |e: std::io::Error| DockerError::Connect {
        host: host.to_string(),
        source: e.into(),
    };
    let exchange_error = |e: hyper::Error| DockerError::Request {
        host: host.to_string(),
        what,
        source: e.into(),
    };
    let (io, authority) = match endpoint(host) {
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(dial)?;
            // What Docker's own client sends on a socket, where no host name applies.
            (Io::Unix(TokioIo::new(stream)), "api.moby.localhost")
        }
        Endpoint::Tcp(authority) => {
            let stream = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(dial)?;
            (Io::Tcp(TokioIo::new(stream)), authority)
        }
    };
    let request = Request::get(path_and_query)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| DockerError::Request {
            host: host.to_string(),
            what,
            source: format!("cannot build the request {path_and_query}: {e}").into(),
        })?;
    match io {
        Io::Unix(io) => exchange(io, request, on_chunk).await,
        Io::Tcp(io) => exchange(io, request, on_chunk).await,
    }
    .map_err(exchange_error)
}

enum Io {
    Unix(TokioIo<tokio::net::UnixStream>),
    Tcp(TokioIo<tokio::net::TcpStream>),
}

/// One request on a fresh HTTP/1.1 connection over `io`, driving the connection until the
/// whole answer is read or `on_chunk` says stop (the connection closes when this returns); the
/// body's chunks go to `on_chunk` with the status.
async fn exchange<T>(
    io: T,
    request: Request<Empty<Bytes>>,
    mut on_chunk: impl FnMut(StatusCode, &[u8]) -> ControlFlow<()>,
) -> Result<StatusCode, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let answer = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data()
                && on_chunk(status, &data).is_break()
            {
                break;
            }
        }
        Ok::<_, hyper::Error>(status)
    };
    let mut answer = std::pin::pin!(answer);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        answer = &mut answer => answer,
        // The daemon closed the connection: the answer has it all by now, or fails.
        closed = &mut connection => {
            closed?;
            answer.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_sockets_or_tcp_addresses() {
        assert_eq!(
            endpoint("unix:///var/run/docker.sock"),
            Endpoint::Unix("/var/run/docker.sock")
        );
        assert_eq!(
            endpoint("tcp://localhost:2375"),
            Endpoint::Tcp("localhost:2375")
        );
        assert_eq!(
            endpoint("http://10.0.0.1:2375/"),
            Endpoint::Tcp("10.0.0.1:2375")
        );
    }

    #[test]
    fn filters_are_percent_encoded_json() {
        let filters = BTreeMap::from([("name", vec!["^/web$".to_string()])]);
        assert_eq!(
            listing_path("1.41", &filters),
            "/v1.41/containers/json?all=1&filters=%7B%22name%22%3A%5B%22%5E%2Fweb%24%22%5D%7D"
        );
        assert_eq!(
            listing_path("1.53", &BTreeMap::new()),
            "/v1.53/containers/json?all=1"
        );
    }

    /// A container labelled by a job with megabytes of labels of its own: only Compose's, ours
    /// and kompose's are kept (seen failing with every label kept, as before).
    #[test]
    fn only_the_labels_the_sidecar_reads_are_kept() {
        let junk = "x".repeat(64 * 1024);
        let json = format!(
            r#"{{"Id":"a","Labels":{{"com.docker.compose.project":"demo","compose-ingress.enable":"true",
            "kompose.service.expose":"true","org.opencontainers.image.source":"{junk}",
            "job.\u0061rtifact":"{junk}","compose-ingress.typo":"1"}}}}"#
        );
        let listed: Listed = serde_json::from_str(&json).unwrap();
        assert_eq!(
            listed.labels.keys().collect::<Vec<_>>(),
            [
                "com.docker.compose.project",
                "compose-ingress.enable",
                "compose-ingress.typo",
                "kompose.service.expose"
            ]
        );
        let null: Listed = serde_json::from_str(r#"{"Id":"b","Labels":null}"#).unwrap();
        assert!(null.labels.is_empty());
        let none: Listed = serde_json::from_str(r#"{"Id":"c"}"#).unwrap();
        assert!(none.labels.is_empty());
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_message(br#"{"message":"client version 1.53 is too new"}"#),
            "client version 1.53 is too new"
        );
        assert_eq!(error_message(b"Forbidden\n"), "Forbidden");
        assert_eq!(error_message(b""), "no message");
        assert_eq!(
            error_message("é".repeat(300).as_bytes()).chars().count(),
            203
        );
    }
}
