//! Compose files for the bed's busybox image, written the way users write them.

/// A compose service running busybox httpd on `container_port`, serving `page`, published as
/// `publish` (e.g. `"5000"` for a random host port, `"18081:5000"` for a fixed one).
pub fn web(
    name: &str,
    page: &str,
    container_port: u16,
    publish: &str,
    labels: &[(&str, &str)],
) -> String {
    let mut s = format!(
        "  {name}:\n    image: compose-ingress-test/busybox:1\n    stop_signal: SIGKILL\n    command: [\"sh\", \"-c\", \"echo {page} > /www/index.html && exec httpd -f -p {container_port} -h /www\"]\n"
    );
    if !publish.is_empty() {
        s.push_str(&format!("    ports: [\"{publish}\"]\n"));
    }
    if !labels.is_empty() {
        s.push_str("    labels:\n");
        for (k, v) in labels {
            // JSON strings are valid YAML double-quoted scalars, escapes included.
            s.push_str(&format!(
                "      {k}: {}\n",
                serde_json::Value::String(v.to_string())
            ));
        }
    }
    s
}

pub fn compose_file(services: &[String]) -> String {
    format!("version: \"2.4\"\nservices:\n{}", services.concat())
}

pub const ENABLE: (&str, &str) = ("compose-ingress.enable", "true");
