//! A mock Kubernetes API for unit tests, the way kube-rs's controller-rs example tests its
//! reconciler: a `tower_test` mock service behind a real `kube::Client`, and a scenario that
//! answers the expected requests in order and checks each one (method, path, query, headers,
//! body). A request the scenario does not expect fails the test, so "no write" and "no delete"
//! are checked by leaving them out of the scenario. No apiserver, no Docker.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Service;
use kube::api::ObjectMeta;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use crate::cluster::{Cluster, LIST_PAGE};
use crate::model::DryRun;
use crate::objects::{
    self, DesiredObject, Kind, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POD_LABEL, PROJECT_LABEL,
    SPEC_HASH_ANNOTATION,
};

pub(crate) type ApiHandle = Handle<Request<Body>, Response<Body>>;

pub(crate) const NS: &str = "ci";
/// The pod of [`super::settings`].
pub(crate) const POD: &str = "runner-3";
pub(crate) const POD_UID: &str = "pod-uid-3";
pub(crate) const PROJECT: &str = "demochat";

pub(crate) const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ci/leases";
pub(crate) const SERVICES: &str = "/api/v1/namespaces/ci/services";
pub(crate) const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/ci/endpointslices";
pub(crate) const INGRESSES: &str = "/apis/networking.k8s.io/v1/namespaces/ci/ingresses";
pub(crate) const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/ci/httproutes";
pub(crate) const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/ci/grpcroutes";
pub(crate) const MIDDLEWARES: &str = "/apis/traefik.io/v1alpha1/namespaces/ci/middlewares";

const JSON: &str = "application/json";
const APPLY_PATCH: &str = "application/apply-patch+yaml";
pub(crate) const MERGE_PATCH: &str = "application/merge-patch+json";
const METADATA_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

pub(crate) fn mock_cluster() -> (Cluster, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    (Cluster::new(client, NS, POD, DryRun::None), handle)
}

/// How the scenario answers a request.
enum Reply {
    Json(StatusCode, Value),
    /// The request's own body with `metadata.uid` set, as a create or an apply returns it.
    Echo(StatusCode, &'static str),
}

/// One expected request and its answer.
pub(crate) struct Exchange {
    method: Method,
    path: String,
    /// The request's whole query, as decoded pairs (order does not matter).
    query: Vec<(String, String)>,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    check_body: Box<dyn FnOnce(&Value) + Send>,
    reply: Reply,
}

pub(crate) fn expect(method: Method, path: impl Into<String>) -> Exchange {
    Exchange {
        method,
        path: path.into(),
        query: Vec::new(),
        content_type: None,
        accept: None,
        check_body: Box::new(|_| {}),
        reply: Reply::Json(StatusCode::OK, json!({})),
    }
}

impl Exchange {
    pub(crate) fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        self.query = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }
    pub(crate) fn content_type(mut self, ct: &'static str) -> Self {
        self.content_type = Some(ct);
        self
    }
    pub(crate) fn accept(mut self, accept: &'static str) -> Self {
        self.accept = Some(accept);
        self
    }
    pub(crate) fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check_body = Box::new(check);
        self
    }
    pub(crate) fn reply(mut self, status: u16, body: Value) -> Self {
        self.reply = Reply::Json(StatusCode::from_u16(status).expect("status"), body);
        self
    }
    pub(crate) fn echo(mut self, status: u16, uid: &'static str) -> Self {
        self.reply = Reply::Echo(StatusCode::from_u16(status).expect("status"), uid);
        self
    }
}

// The requests of the converge step, as kube sends them for `Cluster`'s calls.

pub(crate) fn create(path: &str) -> Exchange {
    expect(Method::POST, path)
        .query(&[("fieldManager", "compose-ingress")])
        .content_type(JSON)
}

pub(crate) fn get(path: &str, name: &str) -> Exchange {
    expect(Method::GET, format!("{path}/{name}"))
}

pub(crate) fn apply(path: &str, name: &str) -> Exchange {
    expect(Method::PATCH, format!("{path}/{name}"))
        .query(&[("fieldManager", "compose-ingress"), ("force", "true")])
        .content_type(APPLY_PATCH)
}

pub(crate) fn delete(path: &str, name: &str, uid: &'static str) -> Exchange {
    expect(Method::DELETE, format!("{path}/{name}"))
        .content_type(JSON)
        .body(move |b| {
            assert_eq!(b["preconditions"]["uid"], uid, "uid precondition: {b}");
            assert_eq!(b["propagationPolicy"], "Background", "{b}");
        })
}

pub(crate) fn list(path: &str, continue_token: Option<&str>) -> Exchange {
    let selector = objects::pod_selector(POD);
    let limit = LIST_PAGE.to_string();
    let mut query = vec![
        ("labelSelector", selector.as_str()),
        ("limit", limit.as_str()),
    ];
    if let Some(token) = continue_token {
        query.push(("continue", token));
    }
    expect(Method::GET, path)
        .query(&query)
        .accept(METADATA_LIST)
}

/// A page of a metadata listing.
pub(crate) fn page(items: Vec<Value>, continue_token: Option<&str>) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": {"continue": continue_token.unwrap_or_default()},
        "items": items,
    })
}

/// A `Status` error body, as the apiserver sends it.
pub(crate) fn status(code: u16, reason: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": format!("mock: {reason}"), "reason": reason, "code": code,
    })
}

/// What a listing returns for an object we rendered (and created earlier).
pub(crate) fn listed(obj: &DesiredObject, uid: &str) -> Value {
    let meta = &obj.object.metadata;
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {
            "name": meta.name, "namespace": NS, "uid": uid,
            "labels": meta.labels, "annotations": meta.annotations,
        },
    })
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], s.get(i + 1..i + 3)) {
                (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                    out.push(u8::from_str_radix(hex, 16).expect("hex"));
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).expect("utf-8 query")
    };
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    pairs.sort();
    pairs
}

async fn next_request(
    handle: &mut ApiHandle,
) -> Option<(Request<Body>, mock::SendResponse<Response<Body>>)> {
    tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the code under test hangs")
}

/// Answers the scenario's requests in order, then requires that no other request comes:
/// the code under test must drop its client when done, which closes the mock.
pub(crate) async fn serve(mut handle: ApiHandle, scenario: Vec<Exchange>) {
    for (i, ex) in scenario.into_iter().enumerate() {
        let Some((request, respond)) = next_request(&mut handle).await else {
            panic!(
                "request {i} never came (the client is gone): expected {} {}",
                ex.method, ex.path
            );
        };
        let (parts, body) = request.into_parts();
        let what = format!("request {i}: {} {}", parts.method, parts.uri);
        assert_eq!(parts.method, ex.method, "{what}");
        assert_eq!(parts.uri.path(), ex.path, "{what}");
        let mut query = ex.query;
        query.sort();
        assert_eq!(query_pairs(parts.uri.query()), query, "query of {what}");
        let header =
            |name: http::header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(ct) = ex.content_type {
            assert_eq!(header(http::header::CONTENT_TYPE), Some(ct), "{what}");
        }
        if let Some(accept) = ex.accept {
            assert_eq!(header(http::header::ACCEPT), Some(accept), "{what}");
        }
        let bytes = body.collect_bytes().await.expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON request body")
        };
        (ex.check_body)(&body);
        let (code, reply) = match ex.reply {
            Reply::Json(code, value) => (code, value),
            Reply::Echo(code, uid) => {
                let mut value = body;
                value["metadata"]["uid"] = json!(uid);
                (code, value)
            }
        };
        let response = Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, JSON)
            .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
            .expect("response");
        respond.send_response(response);
    }
    if let Some((request, _)) = next_request(&mut handle).await {
        panic!(
            "unexpected request after the scenario: {} {}",
            request.method(),
            request.uri()
        );
    }
}

pub(crate) fn assert_ours(body: &Value, composition: &str) {
    let labels = &body["metadata"]["labels"];
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE, "{body}");
    assert_eq!(labels[POD_LABEL], POD, "{body}");
    assert_eq!(labels[PROJECT_LABEL], composition, "{body}");
    let owners = &body["metadata"]["ownerReferences"];
    assert_eq!(owners[0]["kind"], "Pod", "{body}");
    assert_eq!(owners[0]["name"], POD, "{body}");
    assert_eq!(owners[0]["uid"], POD_UID, "{body}");
    assert!(
        body["metadata"]["annotations"][SPEC_HASH_ANNOTATION].is_string(),
        "{body}"
    );
}

pub(crate) fn service_object(name: &str, composition: &str) -> DesiredObject {
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(NS.to_string()),
            labels: Some(objects::ownership_labels(POD, composition)),
            annotations: Some(objects::ownership_annotations(composition)),
            ..ObjectMeta::default()
        },
        ..Service::default()
    };
    DesiredObject::new(Kind::Service, &svc).expect("service")
}

/// A live object of the same name that is not this pod's: another pod's, or nobody's.
pub(crate) fn foreign(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "uid": "foreign-uid", "labels": labels},
    })
}
