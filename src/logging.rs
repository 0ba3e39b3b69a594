//! Logging set-up: structured (JSON by default in the container) or text, to stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// kube's request tracing logs every failed request at ERROR (`failed with error client error
/// (Connect)`), naming neither the address nor a fix, and before the sidecar's own line that
/// does (src/api_reach.rs): off, unless `RUST_LOG` names kube's client itself.
const KUBE_TRACE_OFF: &str = "kube_client::client::builder=off";

/// Installs the global subscriber; `RUST_LOG` overrides the default level (`info`). Colours only
/// when stderr is a terminal, so that log files and collectors get plain text.
pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// The log filter for a `RUST_LOG` value (unset or invalid: `info`), kube's request tracing off
/// unless the value names kube's client.
fn filter(rust_log: Option<&str>) -> EnvFilter {
    let (directives, names_kube) = match rust_log.filter(|v| EnvFilter::try_new(v).is_ok()) {
        Some(v) => (v.to_string(), v.contains("kube_client")),
        None => ("info".to_string(), false),
    };
    let filter = EnvFilter::new(directives);
    match (names_kube, KUBE_TRACE_OFF.parse()) {
        (false, Ok(off)) => filter.add_directive(off),
        _ => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_request_tracing_is_off_unless_rust_log_names_it() {
        for value in [
            None,
            Some("info,compose_ingress=debug"),
            Some("not a [filter"),
        ] {
            let text = filter(value).to_string();
            assert!(text.contains(KUBE_TRACE_OFF), "{value:?}: {text}");
        }
        let text = filter(Some("info,kube_client=debug")).to_string();
        assert!(!text.contains("=off"), "{text}");
    }
}
