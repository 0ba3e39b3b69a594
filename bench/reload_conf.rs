//! The configuration files of the reload phase: what an NGINX- or HAProxy-based ingress
//! controller writes for N Ingress hosts, reduced to the part that grows with N. nginx: one
//! `upstream` and one `server` block per host (as controllers that write a block per Ingress
//! host do); haproxy: one `backend` per host and a host → backend map. Every host proxies to one
//! local backend (an nginx answering 200), so the numbers are the proxy's own.

use std::fmt::Write;
use std::path::Path;

/// Where the proxies listen (loopback only).
pub const NGINX_PORT: u16 = 18300;
pub const HAPROXY_PORT: u16 = 18310;
pub const BACKEND_PORT: u16 = 18301;

/// The host of route `i`, and of the host that steady traffic asks for (always configured).
pub fn host(i: usize) -> String {
    format!("h{i}.reload.example.com")
}
pub const STEADY_HOST: &str = "steady.reload.example.com";

/// The backend every host proxies to: an nginx answering 200 on [`BACKEND_PORT`].
pub fn backend_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\npid {d}/backend.pid;\nerror_log {d}/backend-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n{temps}  server {{ listen 127.0.0.1:{BACKEND_PORT}; keepalive_requests 100000; \
         location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
        temps = temp_paths(dir, "backend")
    )
}

/// nginx writes temporary files under compiled-in paths unless told otherwise.
fn temp_paths(dir: &Path, who: &str) -> String {
    let d = dir.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {d}/tmp-{who}-{t};\n"))
        .collect()
}

/// The front nginx with `hosts` (route numbers) configured, plus the steady host.
pub fn nginx_conf(dir: &Path, hosts: impl Iterator<Item = usize>) -> String {
    let d = dir.display();
    let mut s = format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n{temps}\
         \x20 server_names_hash_max_size 262144;\n  server_names_hash_bucket_size 128;\n\
         \x20 proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n  proxy_set_header Host $host;\n\
         \x20 server {{ listen 127.0.0.1:{NGINX_PORT} default_server; return 404; }}\n",
        temps = temp_paths(dir, "nginx")
    );
    let mut block = |name: &str, host: &str| {
        let _ = write!(
            s,
            "  upstream {name} {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 8; }}\n\
             \x20 server {{ listen 127.0.0.1:{NGINX_PORT}; server_name {host}; \
             location / {{ proxy_pass http://{name}; }} }}\n"
        );
    };
    block("steady", STEADY_HOST);
    for i in hosts {
        block(&format!("u{i}"), &host(i));
    }
    s.push_str("}\n");
    s
}

/// The haproxy configuration with `hosts` and its map file (host → backend).
pub fn haproxy_conf(dir: &Path, hosts: impl Iterator<Item = usize> + Clone) -> (String, String) {
    let d = dir.display();
    let mut cfg = format!(
        "global\n  maxconn 4000\n  pidfile {d}/haproxy.pid\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         \x20 timeout http-keep-alive 30s\n  option http-keep-alive\n\
         frontend web\n  bind 127.0.0.1:{HAPROXY_PORT}\n\
         \x20 use_backend %[req.hdr(host),lower,map({d}/hosts.map)]\n  default_backend notfound\n\
         backend notfound\n  http-request return status 404\n"
    );
    let mut map = String::new();
    let mut backend = |name: &str, host: &str| {
        let _ = write!(
            cfg,
            "backend {name}\n  server s1 127.0.0.1:{BACKEND_PORT}\n"
        );
        let _ = writeln!(map, "{host} {name}");
    };
    backend("steady", STEADY_HOST);
    for i in hosts {
        backend(&format!("b{i}"), &host(i));
    }
    (cfg, map)
}
