//! The event reader against a fake daemon whose `/events` answer is framed as a proxy in front
//! of dockerd may frame it (dockerd itself sends one HTTP chunk per event).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::unbounded_channel;
use tokio_util::sync::CancellationToken;

use super::{DockerClient, Hint};

fn event(project: &str) -> String {
    format!(
        r#"{{"Type":"container","Action":"start","Actor":{{"ID":"id-{project}","Attributes":{{"com.docker.compose.project":"{project}","name":"{project}-web-1"}}}},"scope":"local","time":1800000000,"timeNano":1800000000000000000}}"#
    )
}

/// Serves `/version` (API 1.41) and, for `/events`, `chunks` as HTTP chunks, then keeps the
/// stream open.
async fn daemon(chunks: Vec<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    if path.ends_with("/version") {
                        let body =
                            r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(reply.as_bytes()).await;
                        continue;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    for c in &chunks {
                        let _ = s
                            .write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
                            .await;
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    // Open, and quiet: no further event comes to push anything out.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
            });
        }
    });
    format!("tcp://{addr}")
}

/// The projects of the composition hints that arrive, until `want` of them did or `within`
/// is over.
async fn hints_of(chunks: Vec<String>, want: usize, within: Duration) -> Vec<String> {
    let host = daemon(chunks).await;
    let client = DockerClient::new(&host, false).expect("client");
    let (tx, mut rx) = unbounded_channel();
    let cancel = CancellationToken::new();
    let watching = tokio::spawn(client.watch(tx, |_| {}, cancel.clone()));
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < want
        && let Ok(Some(hint)) = tokio::time::timeout_at(deadline, rx.recv()).await
    {
        if let Hint::Composition(key) = hint {
            got.push(key);
        }
    }
    cancel.cancel();
    let _ = watching.await;
    got
}

/// Seen failing with bollard's event stream (the reader before src/docker/events.rs): only
/// `one` within 10 s, `two` held until more bytes would come.
#[tokio::test]
async fn an_event_whose_newline_comes_with_the_next_event_is_not_held_back() {
    let (one, two) = (event("one"), event("two"));
    // One chunk per event, as dockerd sends them: both arrive.
    let plain = hints_of(
        vec![format!("{one}\n"), format!("{two}\n")],
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(plain, vec!["one", "two"]);
    // The first event's newline in the next chunk, with the second event.
    let reframed = hints_of(
        vec![one.clone(), format!("\n{two}\n")],
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        reframed,
        vec!["one", "two"],
        "the second event was held back"
    );
}
