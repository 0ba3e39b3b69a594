//! The Kubernetes client, with every request bounded by `--api-timeout`.
//!
//! kube's defaults bound a request's connect (30 s) and send (295 s) but not its answer: a
//! request to an apiserver that accepts the connection and never answers (a brownout, a
//! half-dead load balancer) would hang the serial reconciler, the liveness heartbeat with it,
//! and the shutdown. So:
//! - the whole exchange up to the response's head (connect, TLS, send, kube's own retries of
//!   429/503/504 with their `Retry-After` waits, the answer) runs under one deadline, a tower
//!   layer outside kube's stack; its error names the flag;
//! - the socket's connect, read and write timeouts are set too, a second longer, as the backstop
//!   for what comes after the head (a response body that stalls) and so that the layer's clearer
//!   error wins whenever both could fire. Reading a pooled connection's answer counts from when
//!   its request was sent (`reset_reader_on_write`), not from when the connection went idle.
//!
//! Docker is the source of events, so the apiserver gets short requests, and one bound fits
//! every one of them. The one long-running request, the watch of host Leases
//! (src/lease_watch.rs), asks the apiserver to end it a second before that bound, and its head
//! comes at once: a quiet watch is never taken for a hung request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::BoxError;

use crate::api_reach::{ApiServer, ApiTimedOut, ReachLayer, Source};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot configure a Kubernetes client: no usable kubeconfig ({kubeconfig}) and no \
         in-cluster settings ({in_cluster}); fix: run in a pod with its ServiceAccount token \
         mounted (deploy/ does), or set KUBECONFIG to a kubeconfig file"
    )]
    Config {
        kubeconfig: kube::config::KubeconfigError,
        in_cluster: kube::config::InClusterError,
    },
    #[error("cannot build a Kubernetes client for {url}: {source}")]
    Build { url: String, source: kube::Error },
}

/// The client of the sidecar: a kubeconfig (`KUBECONFIG`, `~/.kube/config`) or else the pod's
/// in-cluster settings, as kube's `Config::infer` chooses, every request bounded by
/// `api_timeout` (see the module's doc), its failures explained with the address and where it
/// came from (src/api_reach.rs).
pub async fn client(api_timeout: Duration) -> Result<kube::Client, ClientError> {
    let (mut config, source) =
        match kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions::default()).await {
            Ok(config) => (config, Source::Kubeconfig(kubeconfig_path())),
            Err(kubeconfig) => match kube::Config::incluster() {
                Ok(config) => (config, Source::InCluster),
                Err(in_cluster) => {
                    return Err(ClientError::Config {
                        kubeconfig,
                        in_cluster,
                    });
                }
            },
        };
    config.apply_debug_overrides();
    let server = Arc::new(ApiServer {
        url: config.cluster_url.to_string(),
        source,
    });
    let backstop = api_timeout.saturating_add(Duration::from_secs(1));
    config.connect_timeout = Some(backstop);
    config.write_timeout = Some(backstop);
    config.read_timeout = Some(backstop);
    config.reset_reader_on_write = true;
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(|source| ClientError::Build {
            url: server.url.clone(),
            source,
        })?;
    Ok(builder
        .with_layer(&ApiTimeoutLayer(api_timeout))
        .with_layer(&ReachLayer(server))
        .build())
}

/// The kubeconfig kube reads: `KUBECONFIG` as set (a list of files kube merges), else
/// `~/.kube/config`.
fn kubeconfig_path() -> String {
    match std::env::var("KUBECONFIG") {
        Ok(list) if !list.is_empty() => list,
        _ => "~/.kube/config".to_string(),
    }
}

/// Fails a request that has no answer after the limit with [`ApiTimedOut`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiTimeoutLayer(pub Duration);

impl<S> tower::Layer<S> for ApiTimeoutLayer {
    type Service = ApiTimeout<S>;
    fn layer(&self, inner: S) -> ApiTimeout<S> {
        ApiTimeout {
            inner,
            limit: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ApiTimeout<S> {
    inner: S,
    limit: Duration,
}

type BoxedResponse<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, Request> tower::Service<Request> for ApiTimeout<S>
where
    S: tower::Service<Request>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxedResponse<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(limit, response).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Box::new(ApiTimedOut { limit }) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::Api;
    use kube::client::Body;
    use tower_test::mock;

    use super::*;

    /// A request the apiserver never answers fails after the limit, with an error that names
    /// the flag; one it answers in time is unaffected.
    #[tokio::test]
    async fn a_request_without_an_answer_fails_after_the_limit_and_names_the_flag() {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let limit = Duration::from_millis(300);
        let client = kube::client::ClientBuilder::new(service, "ci")
            .with_layer(&ApiTimeoutLayer(limit))
            .build();
        let pods: Api<Pod> = Api::namespaced(client, "ci");
        let server = tokio::spawn(async move {
            // The first request is held, unanswered, until the client gave up on it.
            let (_held, _respond) = handle.next_request().await.expect("first request");
            let (_, respond) = handle.next_request().await.expect("second request");
            let pod = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "runner-3", "namespace": "ci"},
            });
            respond.send_response(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&pod).expect("json")))
                    .expect("response"),
            );
            // Keep the unanswered one open until the end.
            let _ = handle.next_request().await;
        });
        let started = std::time::Instant::now();
        let err = pods.get("runner-3").await.expect_err("no answer: an error");
        let took = started.elapsed();
        assert!(took >= limit, "gave up after {took:?}, before the limit");
        assert!(
            took < Duration::from_secs(10),
            "the limit did not bound the request: {took:?}"
        );
        let text = err.to_string();
        assert!(text.contains("--api-timeout"), "{text}");
        let pod = pods.get("runner-3").await.expect("answered in time");
        assert_eq!(pod.metadata.name.as_deref(), Some("runner-3"));
        drop(pods);
        server.await.expect("server");
    }
}
