//! What a user reads when the Kubernetes API server cannot be reached, or refuses the sidecar.
//!
//! Underneath, such a failure is a hyper client error (`client error (Connect)`), an I/O error
//! or a rustls error, none of which says where the sidecar went or what to change. A tower layer
//! around kube's client ([`ReachLayer`]) knows the apiserver's address and where it came from (a
//! kubeconfig, or the pod's in-cluster settings), and turns each failure into an
//! [`ApiUnreachable`]: the address, what failed, and the fix for that failure in that setting.
//! A 401 answer becomes one too (the credentials are as much part of reaching the apiserver as
//! its address); a 403 stays kube's API error, which the callers read by its status, and
//! [`describe`] adds the RBAC fix to its text.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use tower::BoxError;

/// A Kubernetes API request that got no answer within `--api-timeout`.
#[derive(Debug, thiserror::Error)]
#[error(
    "no answer from the Kubernetes API server within {limit:?} (--api-timeout): it is overloaded \
     or unreachable; retried with backoff (raise --api-timeout if the apiserver is only slow)"
)]
pub(crate) struct ApiTimedOut {
    pub(crate) limit: Duration,
}

/// Where the client's settings came from: the fix names what to edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A kubeconfig file (`KUBECONFIG`, or `~/.kube/config`).
    Kubeconfig(String),
    /// The pod's in-cluster settings: `KUBERNETES_SERVICE_HOST`/`_PORT` and the ServiceAccount's
    /// token and CA under [`SERVICE_ACCOUNT_DIR`].
    InCluster,
}

pub(crate) const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The apiserver the client talks to, as the user configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiServer {
    pub(crate) url: String,
    pub(crate) source: Source,
}

/// A class of failure, for the tests and for the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Refused,
    NoSuchHost,
    NoRoute,
    ConnectTimeout,
    Certificate,
    Tls,
    Unauthorized,
    Other,
}

/// The apiserver could not be reached, or refused the sidecar's credentials.
#[derive(Debug, thiserror::Error)]
#[error("{what} (the Kubernetes API server at {url}, {from}); fix: {fix}")]
pub(crate) struct ApiUnreachable {
    pub(crate) class: Class,
    url: String,
    from: String,
    what: String,
    fix: String,
}

impl ApiServer {
    fn from(&self) -> String {
        match &self.source {
            Source::Kubeconfig(path) => format!("from the kubeconfig {path}"),
            Source::InCluster => {
                "from the pod's in-cluster settings KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT"
                    .to_string()
            }
        }
    }

    fn error(&self, class: Class, what: String) -> ApiUnreachable {
        ApiUnreachable {
            class,
            url: self.url.clone(),
            from: self.from(),
            what,
            fix: self.fix(class),
        }
    }

    fn fix(&self, class: Class) -> String {
        let address = match &self.source {
            Source::Kubeconfig(path) => {
                format!("set the cluster's `server:` in {path} to the apiserver's address")
            }
            Source::InCluster => "the pod must reach the cluster's `kubernetes` Service: check \
                                  that no NetworkPolicy's egress rules block it"
                .to_string(),
        };
        match (class, &self.source) {
            (Class::Refused | Class::NoSuchHost | Class::NoRoute | Class::ConnectTimeout, _) => {
                address
            }
            (Class::Certificate | Class::Tls, Source::Kubeconfig(path)) => format!(
                "set the cluster's `certificate-authority` (or `-data`) in {path} to the CA that \
                 signed the apiserver's certificate, and `server:` to an address that certificate \
                 names"
            ),
            (Class::Certificate | Class::Tls, Source::InCluster) => format!(
                "{SERVICE_ACCOUNT_DIR}/ca.crt must be the cluster's CA: mount the \
                 kube-root-ca.crt ConfigMap there (deploy/base/statefulset.yaml's projected volume)"
            ),
            (Class::Unauthorized, Source::Kubeconfig(path)) => format!(
                "give the user of the current context in {path} a valid token of this cluster \
                 (kubectl create token compose-ingress)"
            ),
            (Class::Unauthorized, Source::InCluster) => format!(
                "{SERVICE_ACCOUNT_DIR}/token must be the pod's ServiceAccount token of this \
                 cluster (deploy/base/statefulset.yaml's projected volume)"
            ),
            (Class::Other, _) => format!("check the address and the network in between; {address}"),
        }
    }

    /// The user's line for a failed exchange, or the error unchanged when it is one that
    /// already says what it is (kube's own errors, which kube matches on, and the timeout).
    fn explain(&self, e: BoxError) -> BoxError {
        if e.is::<kube::Error>() || e.is::<ApiTimedOut>() || e.is::<ApiUnreachable>() {
            return e;
        }
        let (class, what) = classify(e.as_ref());
        Box::new(self.error(class, what))
    }
}

/// The errors under `e`, outermost first. An I/O error's own `source` skips the error it wraps
/// (a rustls error inside the TLS stream's I/O error): that one is taken instead.
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    // Bounded: a cycle of sources would be a bug elsewhere, not a reason to hang.
    while let Some(e) = next.filter(|_| out.len() < 16) {
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    out
}

/// What failed, in the user's words.
fn classify(e: &(dyn StdError + 'static)) -> (Class, String) {
    let causes = chain(e);
    for cause in &causes {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(c) => {
                    (Class::Certificate, certificate_problem(c))
                }
                other => (Class::Tls, format!("the TLS handshake failed: {other}")),
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let found = match io.kind() {
                K::ConnectionRefused => Some((
                    Class::Refused,
                    "cannot connect: connection refused (nothing listens at that address)",
                )),
                K::TimedOut => Some((Class::ConnectTimeout, "cannot connect: no answer")),
                K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                    Some((Class::NoRoute, "cannot connect: no route to that address"))
                }
                _ => None,
            };
            if let Some((class, what)) = found {
                return (class, what.to_string());
            }
        }
        // hyper-util's connector error is private; its text is its kind.
        if cause.to_string() == "dns error" {
            let detail = causes.last().map(|c| c.to_string()).unwrap_or_default();
            return (
                Class::NoSuchHost,
                format!("cannot resolve the apiserver's host name: {detail}"),
            );
        }
    }
    let text: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
    (
        Class::Other,
        format!("cannot reach the apiserver: {}", text.join(": ")),
    )
}

fn certificate_problem(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    let what = match c {
        C::UnknownIssuer => "is not signed by the CA this sidecar trusts".to_string(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "does not name the address the sidecar connected to".to_string()
        }
        C::Expired | C::ExpiredContext { .. } => "has expired".to_string(),
        C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet".to_string(),
        other => format!("was refused ({other})"),
    };
    format!("the apiserver's TLS certificate {what}")
}

/// The text of a Kubernetes API error for a log line: [`ApiUnreachable`] and the timeout
/// without kube's `ServiceError:` prefix; an API answer by its code, reason and message, with
/// the RBAC fix for a 403.
pub(crate) fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Service(inner)
            if inner.is::<ApiUnreachable>() || inner.is::<ApiTimedOut>() =>
        {
            inner.to_string()
        }
        kube::Error::Api(s) if s.code == 403 => format!(
            "403 Forbidden: {}; fix: this pod's ServiceAccount needs the Role and RoleBinding of \
             deploy/base/rbac.yaml (`kubectl -n <namespace> get rolebinding,role -o yaml` shows \
             what it has)",
            s.message
        ),
        // Only without [`ReachLayer`] (which makes a 401 an [`ApiUnreachable`]): a client of
        // the tests' mock API.
        kube::Error::Api(s) if s.code == 401 => format!(
            "401 Unauthorized: {}; fix: the sidecar's token was refused: check the ServiceAccount \
             token volume, or the user of KUBECONFIG",
            s.message
        ),
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// Explains the failures of the requests under it (see the module's doc).
#[derive(Debug, Clone)]
pub(crate) struct ReachLayer(pub(crate) Arc<ApiServer>);

impl<S> tower::Layer<S> for ReachLayer {
    type Service = Reach<S>;
    fn layer(&self, inner: S) -> Reach<S> {
        Reach {
            inner,
            server: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Reach<S> {
    inner: S,
    server: Arc<ApiServer>,
}

type BoxedResponse<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Reach<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = BoxedResponse<http::Response<R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let server = self.server.clone();
        self.inner
            .poll_ready(cx)
            .map_err(|e| server.explain(e.into()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(r) if r.status() == http::StatusCode::UNAUTHORIZED => Err(Box::new(
                    server.error(
                        Class::Unauthorized,
                        "the apiserver refused this sidecar's credentials (401 Unauthorized: \
                         the token is invalid, expired, or of another cluster)"
                            .to_string(),
                    ),
                )
                    as BoxError),
                Ok(r) => Ok(r),
                Err(e) => Err(server.explain(e.into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig() -> ApiServer {
        ApiServer {
            url: "https://10.0.0.1:6443/".to_string(),
            source: Source::Kubeconfig("/home/me/.kube/config".to_string()),
        }
    }

    #[test]
    fn a_refused_connection_names_the_address_its_source_and_the_fix() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = kubeconfig().explain(Box::new(io));
        let e = e.downcast::<ApiUnreachable>().expect("explained");
        assert_eq!(e.class, Class::Refused);
        let text = e.to_string();
        for part in [
            "https://10.0.0.1:6443/",
            "connection refused",
            "/home/me/.kube/config",
            "`server:`",
        ] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
    }

    #[test]
    fn a_certificate_of_another_ca_is_told_apart_inside_an_io_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let server = ApiServer {
            source: Source::InCluster,
            ..kubeconfig()
        };
        let e = server.explain(Box::new(io));
        let e = e.downcast::<ApiUnreachable>().expect("explained");
        assert_eq!(e.class, Class::Certificate);
        let text = e.to_string();
        assert!(text.contains("not signed by the CA"), "{text}");
        assert!(text.contains("ca.crt"), "{text}");
    }

    #[test]
    fn kube_errors_and_the_timeout_pass_unchanged() {
        let e = kubeconfig().explain(Box::new(kube::Error::LinesCodecMaxLineLengthExceeded));
        assert!(e.is::<kube::Error>());
        let limit = std::time::Duration::from_secs(1);
        let e = kubeconfig().explain(Box::new(ApiTimedOut { limit }));
        assert!(e.is::<ApiTimedOut>());
    }
}
