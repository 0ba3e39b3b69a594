//! What a user reads when the Docker daemon cannot be reached: the socket (or address), what
//! failed, and the fix. Underneath it is bollard's `Socket not found`, or an I/O error inside a
//! hyper client error (`client error (Connect)`), which says neither.

use std::error::Error as StdError;

/// The text of a failure to reach the daemon at `host` (`unix:///path` or `tcp://...`).
pub(super) fn explain(host: &str, e: &(dyn StdError + 'static)) -> String {
    let socket = host.strip_prefix("unix://");
    let place = match socket {
        Some(path) => format!("the socket {path}"),
        None => host.to_string(),
    };
    let mut next = Some(e);
    let mut depth = 0;
    while let Some(cause) = next.filter(|_| depth < 16) {
        depth += 1;
        if let Some(bollard::errors::Error::SocketNotFoundError(path)) = cause.downcast_ref() {
            return format!(
                "the socket {path} does not exist; fix: dind has not started yet (it creates the \
                 socket), or --docker-host/DOCKER_HOST names another path than the one dind \
                 listens on (deploy/: unix:///var/run/dind/docker.sock on a volume both \
                 containers mount)"
            );
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match (io.kind(), socket) {
                (K::NotFound, Some(path)) => {
                    return format!(
                        "the socket {path} does not exist; fix: dind has not started yet, or \
                         --docker-host/DOCKER_HOST names another path than the one dind \
                         listens on"
                    );
                }
                (K::ConnectionRefused, Some(path)) => {
                    return format!(
                        "connection refused: {path} exists but no Docker daemon listens on it; \
                         fix: dind stopped or is restarting (look at the dind container's log), \
                         or the socket is a leftover of an earlier daemon"
                    );
                }
                (K::ConnectionRefused, None) => {
                    return format!(
                        "connection refused at {host}: nothing listens there; fix: the daemon \
                         must listen on that address (dockerd --host), or correct \
                         --docker-host/DOCKER_HOST"
                    );
                }
                (K::PermissionDenied, _) => {
                    return format!(
                        "permission denied on {place}; fix: run the sidecar in the socket's \
                         group (deploy/: dockerd --group=2375 and the pod's supplementalGroups \
                         [2375])"
                    );
                }
                _ => {}
            }
            next = io.get_ref().map(|inner| inner as &(dyn StdError + 'static));
            if next.is_some() {
                continue;
            }
        }
        next = cause.source();
    }
    format!("{e}; fix: is the Docker daemon at {host} up, and is {place} the one it serves?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_names_the_socket_and_its_fix() {
        let missing = bollard::errors::Error::SocketNotFoundError("/run/d.sock".to_string());
        let text = explain("unix:///run/d.sock", &missing);
        assert!(text.contains("/run/d.sock does not exist"), "{text}");
        assert!(text.contains("DOCKER_HOST"), "{text}");

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = explain("unix:///run/d.sock", &refused);
        assert!(
            text.contains("/run/d.sock exists but no Docker daemon"),
            "{text}"
        );

        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let text = explain("unix:///run/d.sock", &denied);
        assert!(text.contains("group"), "{text}");

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = explain("tcp://10.0.0.2:2375", &refused);
        assert!(text.contains("at tcp://10.0.0.2:2375"), "{text}");
    }
}
