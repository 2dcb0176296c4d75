//! A mocked Kubernetes API server for unit tests: the test answers each
//! request the code under test makes, and checks what it asked.

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::Value;

use super::api::Cluster;

pub(super) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A cluster whose API server is the test: each request is answered
/// through the handle.
pub(super) fn mocked() -> (Cluster, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        Cluster::with_client(Client::new(service, "default")),
        handle,
    )
}

/// What a request asked for.
#[derive(Debug)]
pub(super) struct Asked {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

impl Asked {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
}

/// Answers the next request with `status` and `body`.
pub(super) async fn answer(handle: &mut Handle, status: u16, body: Value) -> Asked {
    let (request, respond) = handle.next_request().await.expect("a request");
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body_in = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    let text = match &body {
        Value::String(s) => s.clone().into_bytes(),
        other => serde_json::to_vec(other).unwrap(),
    };
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(text))
            .unwrap(),
    );
    Asked {
        method,
        uri,
        body: body_in,
    }
}
