//! A local test double of the Amazon MSK control plane (the `kafka` REST API), for the two operations the
//! relay calls: `GetBootstrapBrokers` (`GET /v1/clusters/{clusterArn}/bootstrap-brokers`) and
//! `DescribeClusterV2` (`GET /api/v2/clusters/{clusterArn}`). moto does not implement `GetBootstrapBrokers`
//! (its `kafka` service has create/describe/list cluster only), hence this double.
//!
//! It answers as AWS does (restJson1): camelCase JSON bodies, errors with the `x-amzn-ErrorType` header and
//! `{"message": ...}`; an unknown ARN is `NotFoundException` (404); a cluster that is not ACTIVE refuses
//! `GetBootstrapBrokers` with `BadRequestException` "You can't get bootstrap broker nodes for a cluster in
//! <STATE> state." (400); a cluster marked `denied` answers `ForbiddenException` (403) to both. It binds
//! 127.0.0.1 on a free port and stops when dropped.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One cluster the double knows.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `ACTIVE`, `CREATING`, `FAILED`, ...
    pub state: &'static str,
    /// `PROVISIONED` or `SERVERLESS`.
    pub cluster_type: &'static str,
    /// The `GetBootstrapBrokers` body fields, e.g. `{"bootstrapBrokerStringSaslIam": "b-1:9098"}`.
    pub brokers: serde_json::Value,
    /// An MSK error code both operations answer with instead (e.g. `ForbiddenException`), with its status.
    pub denied: Option<(u16, &'static str)>,
}

impl Cluster {
    /// An ACTIVE provisioned cluster with these broker strings.
    pub fn active(brokers: serde_json::Value) -> Self {
        Self { state: "ACTIVE", cluster_type: "PROVISIONED", brokers, denied: None }
    }
}

/// The running double.
pub struct MskControlPlane {
    /// `http://127.0.0.1:PORT`, for `endpoint_url` / `AWS_ENDPOINT_URL_KAFKA`.
    pub url: String,
    calls: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MskControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MskControlPlane {
    /// Serves `clusters` (ARN → cluster) on a free 127.0.0.1 port.
    pub async fn start(clusters: Vec<(String, Cluster)>) -> Self {
        let clusters: Arc<BTreeMap<String, Cluster>> = Arc::new(clusters.into_iter().collect());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let state = (clusters, calls.clone());
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let (clusters, calls) = state.clone();
            async move { answer(&clusters, &calls, &uri) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, calls, task }
    }

    /// The operations called so far, as `GetBootstrapBrokers <arn>` / `DescribeClusterV2 <arn>`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8 path")
}

fn error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).expect("status"),
        [("x-amzn-ErrorType", code), ("content-type", "application/json")],
        serde_json::json!({"message": message}).to_string(),
    )
        .into_response()
}

fn json(body: serde_json::Value) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], body.to_string()).into_response()
}

fn answer(clusters: &BTreeMap<String, Cluster>, calls: &Mutex<Vec<String>>, uri: &Uri) -> Response {
    let path = uri.path();
    let (operation, arn) = if let Some(rest) = path.strip_prefix("/v1/clusters/") {
        match rest.strip_suffix("/bootstrap-brokers") {
            Some(arn) => ("GetBootstrapBrokers", percent_decode(arn)),
            None => return error(404, "NotFoundException", "No such operation"),
        }
    } else if let Some(arn) = path.strip_prefix("/api/v2/clusters/") {
        ("DescribeClusterV2", percent_decode(arn))
    } else {
        return error(404, "NotFoundException", "No such operation");
    };
    calls.lock().unwrap().push(format!("{operation} {arn}"));
    let Some(cluster) = clusters.get(&arn) else {
        return error(404, "NotFoundException", "The requested resource was not found.");
    };
    if let Some((status, code)) = cluster.denied {
        return error(
            status,
            code,
            &format!("User: arn:aws:sts::123456789012:assumed-role/relay/relay is not authorized to perform: kafka:{operation} on resource: {arn}"),
        );
    }
    match operation {
        "GetBootstrapBrokers" if cluster.state != "ACTIVE" => error(
            400,
            "BadRequestException",
            &format!("You can't get bootstrap broker nodes for a cluster in {} state.", cluster.state),
        ),
        "GetBootstrapBrokers" => json(cluster.brokers.clone()),
        _ => {
            let mut info = serde_json::json!({
                "clusterArn": arn,
                "clusterName": arn.rsplit('/').nth(1).unwrap_or("cluster"),
                "clusterType": cluster.cluster_type,
                "state": cluster.state,
                "currentVersion": "K3AEGXETSR30VB",
            });
            if cluster.cluster_type == "SERVERLESS" {
                info["serverless"] =
                    serde_json::json!({"vpcConfigs": [], "clientAuthentication": {"sasl": {"iam": {"enabled": true}}}});
            }
            json(serde_json::json!({"clusterInfo": info}))
        }
    }
}
