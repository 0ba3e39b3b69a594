//! The event stream, requested and split into events here rather than by bollard: bollard
//! 0.21's line decoder holds a whole event back when it comes in the same read as the previous
//! event's newline (a read that starts with `\n` is answered "need more"), until more bytes
//! come: on a quiet stream, until the next composition's events. dockerd writes each event with
//! its newline in one HTTP chunk, but a proxy in front of it may frame the stream its own way,
//! and a held `start` leaves a composition unexposed (BENCHMARKS.md's findings). Here every
//! newline ends an event, whatever the framing (`stream_tests.rs`).

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;

use bollard::models::EventMessage;

use super::DockerError;
use super::listing::{self, MAX_ERROR_BODY, error_message, query_escape};

/// What the request is called in errors.
const WHAT: &str = "events";

/// One event is a few KiB (its container's labels); a line this long without its newline is not
/// Docker's.
const MAX_EVENT: usize = 1024 * 1024;

/// How the stream ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// The daemon closed it.
    Ended,
    /// `on_event` said stop.
    Stopped,
}

/// The request's path and query: events since `since` (unix seconds), matching `filters`.
pub(super) fn events_path(
    api_version: &str,
    since: u64,
    filters: &HashMap<String, Vec<String>>,
) -> String {
    // In key order: the same filters make the same request.
    let filters: BTreeMap<&String, &Vec<String>> = filters.iter().collect();
    // A map of strings to lists of strings always serializes.
    let json = serde_json::to_string(&filters).unwrap_or_default();
    format!(
        "/v{api_version}/events?since={since}&filters={}",
        query_escape(&json)
    )
}

/// Newline-delimited JSON split into lines as chunks come, whatever their boundaries.
#[derive(Debug, Default)]
pub(super) struct Lines {
    /// The start of a line whose newline has not come yet.
    pending: Vec<u8>,
}

impl Lines {
    /// Feeds `chunk`: `each` gets every line it completes (without the newline; blank lines
    /// are skipped). An error when a line grows past [`MAX_EVENT`] without one.
    pub(super) fn feed(
        &mut self,
        chunk: &[u8],
        each: &mut impl FnMut(&[u8]),
    ) -> Result<(), String> {
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(at);
            if self.pending.is_empty() {
                emit(line, each);
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                emit(&whole, each);
            }
            rest = &tail[1..];
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_EVENT {
            return Err(format!(
                "a line of more than {MAX_EVENT} bytes without a newline"
            ));
        }
        Ok(())
    }
}

fn emit(line: &[u8], each: &mut impl FnMut(&[u8])) {
    if !line.iter().all(u8::is_ascii_whitespace) {
        each(line);
    }
}

/// Reads the event stream at `path` (see [`events_path`]) of the daemon at `host`, each event
/// to `on_event` as soon as its newline comes, until the daemon ends it, `on_event` says stop,
/// or it breaks (an error, as is an event that is not JSON of an event's shape).
pub(super) async fn stream(
    host: &str,
    path: &str,
    mut on_event: impl FnMut(EventMessage) -> ControlFlow<()>,
) -> Result<StreamEnd, DockerError> {
    let mut lines = Lines::default();
    let mut failure: Option<DockerError> = None;
    let mut stopped = false;
    let mut error_body: Vec<u8> = Vec::new();
    let decode = |source: String| DockerError::Decode {
        host: host.to_string(),
        what: WHAT,
        source: source.into(),
    };
    let status = listing::get(host, WHAT, path, |status, chunk| {
        if !status.is_success() {
            let room = MAX_ERROR_BODY.saturating_sub(error_body.len());
            error_body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            return ControlFlow::Continue(());
        }
        let fed = lines.feed(chunk, &mut |line| {
            if failure.is_some() || stopped {
                return;
            }
            match serde_json::from_slice::<EventMessage>(line) {
                Ok(event) => stopped = on_event(event).is_break(),
                Err(e) => failure = Some(decode(e.to_string())),
            }
        });
        if let Err(e) = fed {
            failure = Some(decode(e));
        }
        if failure.is_some() || stopped {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await?;
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
    Ok(if stopped {
        StreamEnd::Stopped
    } else {
        StreamEnd::Ended
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&str]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut got = Vec::new();
        for c in chunks {
            lines
                .feed(c.as_bytes(), &mut |l| {
                    got.push(String::from_utf8_lossy(l).to_string())
                })
                .expect("short lines");
        }
        got
    }

    /// Seen failing with a chunk's lines after the first one dropped, and with the pending
    /// start of a line not kept across chunks.
    #[test]
    fn every_newline_ends_a_line_wherever_the_chunks_split() {
        assert_eq!(lines_of(&["{a}\n", "{b}\n"]), vec!["{a}", "{b}"]);
        // bollard's case: the newline comes with the next event.
        assert_eq!(lines_of(&["{a}", "\n{b}\n"]), vec!["{a}", "{b}"]);
        assert_eq!(
            lines_of(&["{a", "}\n{b}\n{", "c}\n"]),
            vec!["{a}", "{b}", "{c}"]
        );
        assert_eq!(lines_of(&["\n\n{a}\r\n", "  \n"]), vec!["{a}\r"]);
        assert!(lines_of(&["{a}"]).is_empty(), "no newline yet");
    }

    #[test]
    fn a_line_without_end_is_an_error() {
        let mut lines = Lines::default();
        let long = vec![b'x'; MAX_EVENT + 1];
        assert!(lines.feed(&long, &mut |_| {}).is_err());
    }

    #[test]
    fn the_path_asks_since_and_the_filters_percent_encoded() {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["start".to_string()]),
        ]);
        assert_eq!(
            events_path("1.41", 1_800_000_000, &filters),
            "/v1.41/events?since=1800000000&filters=%7B%22event%22%3A%5B%22start%22%5D%2C%22type%22%3A%5B%22container%22%5D%7D"
        );
    }
}
