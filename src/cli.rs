//! The CI job's commands, in the sidecar's binary: `compose-ingress wait PROJECT` waits until the
//! composition's URLs are routable and prints them; `compose-ingress urls PROJECT` prints them
//! at once. Both ask the sidecar (`/v1/compositions/{project}`, see [`crate::routable`]).
//!
//! Exit status: 0 routable (`urls`: exposed), 1 the sidecar could not be asked, 2 bad usage,
//! 3 refused (the reasons on stderr), 4 timed out (`urls`: not exposed yet; what is missing on
//! stderr), 5 expired (its exposure time is over, `--max-exposure` / `compose-ingress.ttl`).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use crate::routable::MAX_WAIT;

pub(crate) const EXIT_ERROR: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_REFUSED: u8 = 3;
pub(crate) const EXIT_TIMEOUT: u8 = 4;
pub(crate) const EXIT_EXPIRED: u8 = 5;

#[derive(Debug, Parser)]
#[command(
    name = "compose-ingress",
    about = "A CI job's view of its composition's URLs"
)]
pub(crate) struct JobArgs {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Wait until every URL of the composition (or of --service) is routable, then print them.
    Wait {
        #[command(flatten)]
        common: Common,
        /// Give up after this long (e.g. 90s, 2m).
        #[arg(long, default_value = "2m", value_parser = crate::config::parse_duration)]
        timeout: Duration,
    },
    /// Print the composition's URLs now, routable or not.
    Urls {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// The compose project name (`docker compose -p`, or the directory name).
    pub(crate) project: String,
    /// Only this compose service.
    #[arg(long)]
    pub(crate) service: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Where the sidecar listens (from a job in the runner pod: localhost).
    #[arg(
        long,
        env = "COMPOSE_INGRESS_SIDECAR",
        default_value = "http://127.0.0.1:9102"
    )]
    pub(crate) sidecar: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// `service port url`, one per line.
    Text,
    /// The sidecar's document.
    Json,
    /// `WEB_5000_URL=https://...` lines (GitLab `artifacts:reports:dotenv`).
    Dotenv,
    /// `web_5000_url=https://...` lines appended to `$GITHUB_OUTPUT`.
    Github,
}

/// Runs a job command (`args` as the process got them) and returns its exit status.
pub async fn run(args: Vec<std::ffi::OsString>) -> ExitCode {
    let args = match JobArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (common, timeout, wait) = match args.command {
        Command::Wait { common, timeout } => (common, timeout, true),
        Command::Urls { common } => (common, Duration::ZERO, false),
    };
    let (addr, base) = match http_get::split_url(&common.sidecar) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("compose-ingress: --sidecar: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let deadline = Instant::now() + timeout;
    let doc = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut path = format!("{base}/v1/compositions/{}", common.project);
        let mut query = Vec::new();
        if let Some(s) = &common.service {
            query.push(format!("service={s}"));
        }
        if wait {
            query.push("wait=routable".to_string());
            query.push(format!("timeout={}ms", left.min(MAX_WAIT).as_millis()));
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let asked = http_get::get(
            &addr,
            "localhost",
            &path,
            left.min(MAX_WAIT) + Duration::from_secs(10),
        )
        .await;
        let answer = match asked {
            Ok(a) => a,
            // The sidecar may be (re)starting: ask again while there is time.
            Err(e) if wait && Instant::now() + Duration::from_secs(1) < deadline => {
                eprintln!("compose-ingress: {e}; asking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                eprintln!(
                    "compose-ingress: cannot ask the sidecar at {}: {e}",
                    common.sidecar
                );
                return ExitCode::from(EXIT_ERROR);
            }
        };
        let doc = match serde_json::from_str::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(seen_of)
        {
            Some(d) => d,
            None => {
                eprintln!(
                    "compose-ingress: the sidecar answered {}: {}",
                    answer.status,
                    answer.body.trim()
                );
                return ExitCode::from(EXIT_ERROR);
            }
        };
        if doc.state == "pending" && wait && Instant::now() < deadline {
            continue;
        }
        break doc;
    };
    match doc.state.as_str() {
        "expired" => {
            eprintln!(
                "compose-ingress: {} is expired: {}",
                doc.name,
                doc.missing.join(", ")
            );
            ExitCode::from(EXIT_EXPIRED)
        }
        "refused" => {
            eprintln!("compose-ingress: {} is refused:", doc.name);
            for (service, reason, message) in &doc.refused {
                eprintln!("  {service} ({reason}): {message}");
            }
            ExitCode::from(EXIT_REFUSED)
        }
        "pending" => {
            let what = if wait {
                "not routable after the timeout"
            } else {
                "not exposed (yet)"
            };
            eprintln!(
                "compose-ingress: {} is {what}; missing: {}",
                doc.name,
                doc.missing.join(", ")
            );
            print_urls(&doc, common.format);
            ExitCode::from(EXIT_TIMEOUT)
        }
        _ => {
            for (service, reason, message) in &doc.refused {
                eprintln!("compose-ingress: note: {service} refused ({reason}): {message}");
            }
            if doc.checked == "objects" && wait {
                eprintln!(
                    "compose-ingress: checked that the objects are applied (the sidecar has no --probe-url); the controller may need a moment more"
                );
            }
            print_urls(&doc, common.format)
        }
    }
}

/// The sidecar's document as the job reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) checked: String,
    /// (service, port, url)
    pub(crate) urls: Vec<(String, u16, String)>,
    /// (service, reason, message)
    pub(crate) refused: Vec<(String, String, String)>,
    pub(crate) missing: Vec<String>,
    pub(crate) raw: serde_json::Value,
}

fn seen_of(v: serde_json::Value) -> Option<Seen> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    Some(Seen {
        name: text(&v["name"]),
        state: v["state"].as_str()?.to_string(),
        checked: text(&v["checked"]),
        urls: list(&v["urls"])
            .iter()
            .map(|u| {
                let port = u["port"].as_u64().and_then(|p| u16::try_from(p).ok());
                (text(&u["service"]), port.unwrap_or(0), text(&u["url"]))
            })
            .collect(),
        refused: list(&v["refused"])
            .iter()
            .map(|r| (text(&r["service"]), text(&r["reason"]), text(&r["message"])))
            .collect(),
        missing: list(&v["missing"]).iter().map(text).collect(),
        raw: v,
    })
}

/// `WEB_5000_URL`-style names: the service and port, letters and digits kept, anything else
/// `_`, upper case, a second URL of the same service and port suffixed `_2`, `_3`, ... in the
/// sidecar's order (sorted by host and path).
pub(crate) fn variable_names(doc: &Seen) -> Vec<(String, &str)> {
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    doc.urls
        .iter()
        .map(|(service, port, url)| {
            let service: String = service
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            let base = format!("{service}_{port}_URL");
            let n = seen.entry(base.clone()).or_default();
            *n += 1;
            let name = if *n == 1 { base } else { format!("{base}_{n}") };
            (name, url.as_str())
        })
        .collect()
}

fn print_urls(doc: &Seen, format: Format) -> ExitCode {
    let out = match format {
        Format::Text => doc
            .urls
            .iter()
            .map(|(service, port, url)| format!("{service} {port} {url}\n"))
            .collect(),
        Format::Json => serde_json::to_string_pretty(&doc.raw).unwrap_or_default() + "\n",
        Format::Dotenv => variable_names(doc)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect(),
        Format::Github => {
            let lines: String = variable_names(doc)
                .into_iter()
                .map(|(k, v)| format!("{}={v}\n", k.to_ascii_lowercase()))
                .collect();
            let Some(path) = std::env::var_os("GITHUB_OUTPUT") else {
                eprintln!(
                    "compose-ingress: --format github needs $GITHUB_OUTPUT (set by GitHub Actions)"
                );
                return ExitCode::from(EXIT_USAGE);
            };
            let written = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| f.write_all(lines.as_bytes()));
            if let Err(e) = written {
                eprintln!(
                    "compose-ingress: cannot append to $GITHUB_OUTPUT ({}): {e}",
                    path.to_string_lossy()
                );
                return ExitCode::from(EXIT_ERROR);
            }
            lines
        }
    };
    print!("{out}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_are_sanitized_stable_and_unique() {
        let url = |service: &str, port, url: &str| (service.to_string(), port, url.to_string());
        let doc = Seen {
            urls: vec![
                url("web", 5000, "https://a/"),
                url("web", 5000, "https://b/"),
                url("my-api.v2", 80, "https://c/"),
            ],
            ..Seen::default()
        };
        let names: Vec<String> = variable_names(&doc).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["WEB_5000_URL", "WEB_5000_URL_2", "MY_API_V2_80_URL"]
        );
    }
}
