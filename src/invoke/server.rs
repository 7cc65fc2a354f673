//! An in-process server speaking the Lambda Invoke API on 127.0.0.1, for tests and the demo.
//!
//! It answers the two calls the relay makes, `Invoke` (`RequestResponse`) and `GetFunctionConfiguration`,
//! with the wire format aws-sdk-lambda parses (restJson1: the error code in `x-amzn-ErrorType`, the message
//! in the JSON body), so the production [`LambdaInvoker`](super::lambda::LambdaInvoker) is exercised over
//! real HTTP. Each function's behaviour is a scriptable [`Handler`]; every invocation it receives is
//! recorded so tests can assert exact payloads and counts.
//!
//! Do not combine it with `tokio::time::pause()`: paused time auto-advances while the client waits on the
//! socket, so the SDK's timeouts fire at once.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_lambda::config::{Credentials, SharedCredentialsProvider};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::MAX_PAYLOAD_BYTES;

/// The region every local function lives in.
pub const REGION: &str = "us-east-1";
/// The account every local function belongs to.
pub const ACCOUNT_ID: &str = "123456789012";

/// How long a stopping server waits for in-flight connections before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The ARN the local server gives function `name`.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}")
}

/// An SDK configuration that talks to `endpoint` (e.g. [`LocalLambda::endpoint`] or a moto server) with
/// dummy static credentials in us-east-1. Built field by field, so nothing is read from the environment,
/// profile files or the instance metadata service.
pub async fn local_sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "kafka-lambda-relay-local",
        )))
        .endpoint_url(endpoint)
        .build()
}

/// One invocation as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The function's name (resolved from a name, a qualified name or an ARN).
    pub function: String,
    /// The request body, byte for byte.
    pub payload: Vec<u8>,
    /// 0 for the function's first invocation, then 1, 2, ... in the order the server received them.
    pub seq: u64,
}

/// The value of `X-Amz-Function-Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionErrorKind {
    /// The function returned an error through its runtime (legacy runtimes).
    Handled,
    /// The function threw, crashed or timed out (what current runtimes report for every error).
    Unhandled,
}

impl FunctionErrorKind {
    fn header_value(self) -> &'static str {
        match self {
            FunctionErrorKind::Handled => "Handled",
            FunctionErrorKind::Unhandled => "Unhandled",
        }
    }
}

/// How the server answers one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The function returned: 200 with this body.
    Success {
        /// The function's response.
        body: Vec<u8>,
    },
    /// The function failed: 200 with `X-Amz-Function-Error` and this body.
    FunctionError {
        /// `Handled` or `Unhandled`.
        kind: FunctionErrorKind,
        /// The error document, e.g. `{"errorMessage": "...", "errorType": "..."}`.
        body: Vec<u8>,
    },
    /// The Lambda service refused or failed the call; the function did not run.
    ApiError {
        /// HTTP status: 429 for throttles, 5xx for service errors, 4xx for bad requests.
        status: u16,
        /// The AWS error code sent in `x-amzn-ErrorType`, e.g. `TooManyRequestsException`.
        code: String,
        /// The message in the JSON body.
        message: String,
    },
    /// Wait, then answer with `then` (a slow function or a slow service).
    Delayed {
        /// How long to wait before answering.
        delay: Duration,
        /// The answer after the wait.
        then: Box<Reply>,
    },
}

impl Reply {
    /// 200 with `body`.
    pub fn success(body: impl Into<Vec<u8>>) -> Self {
        Reply::Success { body: body.into() }
    }

    /// 200 with `value` as the JSON body.
    pub fn json(value: &serde_json::Value) -> Self {
        Reply::success(value.to_string())
    }

    /// 200 with `X-Amz-Function-Error: Unhandled` and the error document a runtime writes.
    pub fn unhandled(error_type: &str, message: &str) -> Self {
        Reply::function_error(FunctionErrorKind::Unhandled, error_type, message)
    }

    /// 200 with `X-Amz-Function-Error: Handled` and the error document a runtime writes.
    pub fn handled(error_type: &str, message: &str) -> Self {
        Reply::function_error(FunctionErrorKind::Handled, error_type, message)
    }

    fn function_error(kind: FunctionErrorKind, error_type: &str, message: &str) -> Self {
        let body = serde_json::json!({ "errorMessage": message, "errorType": error_type });
        Reply::FunctionError { kind, body: body.to_string().into_bytes() }
    }

    /// 429 `TooManyRequestsException`, as Lambda answers when concurrency is exhausted.
    pub fn throttled() -> Self {
        Reply::api_error(429, "TooManyRequestsException", "Rate Exceeded.")
    }

    /// `status` (500, 502, 503, ...) with `ServiceException`.
    pub fn service_error(status: u16) -> Self {
        Reply::api_error(status, "ServiceException", "Lambda was unable to process the request.")
    }

    /// Any Lambda API error, e.g. `(403, "AccessDeniedException", "...")`.
    pub fn api_error(status: u16, code: &str, message: &str) -> Self {
        Reply::ApiError { status, code: code.to_owned(), message: message.to_owned() }
    }

    /// This reply, sent only after `delay`.
    pub fn after(self, delay: Duration) -> Self {
        Reply::Delayed { delay, then: Box::new(self) }
    }
}

/// The future a [`Handler`] returns.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// A function's scripted behaviour: called once per invocation.
pub type Handler = Arc<dyn Fn(Invocation) -> ReplyFuture + Send + Sync>;

/// A [`Handler`] from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    Arc::new(move |invocation| Box::pin(f(invocation)) as ReplyFuture)
}

/// Answers every invocation with `reply`.
pub fn always(reply: Reply) -> Handler {
    handler(move |_| {
        let reply = reply.clone();
        async move { reply }
    })
}

/// Answers every invocation with 200 and `{}`: a function that handled the batch and reports no failures.
pub fn echo_success() -> Handler {
    always(Reply::success("{}"))
}

/// Answers the function's n-th invocation with `replies[n]`, and every later one with `then`.
pub fn script(replies: Vec<Reply>, then: Reply) -> Handler {
    handler(move |invocation: Invocation| {
        let index = usize::try_from(invocation.seq).unwrap_or(usize::MAX);
        let reply = replies.get(index).unwrap_or(&then).clone();
        async move { reply }
    })
}

struct Function {
    timeout: Duration,
    handler: Handler,
}

#[derive(Default)]
struct Registry {
    functions: HashMap<String, Function>,
    invocations: HashMap<String, Vec<Invocation>>,
    /// Per function, the `seq` of its asynchronous (`Event`) invocations.
    events: HashMap<String, Vec<u64>>,
}

struct Shared {
    registry: Mutex<Registry>,
    stopping: watch::Receiver<bool>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A handler never runs under this lock, so a poisoned lock only means a panicking test thread.
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The Lambda Invoke API on `127.0.0.1:PORT`, serving the functions registered on it.
///
/// Dropping it (or [`LocalLambda::shutdown`]) stops the server: it stops accepting connections, answers
/// in-flight invocations with 503 `ServiceException`, and its task ends within a short grace period.
pub struct LocalLambda {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl LocalLambda {
    /// Binds 127.0.0.1 on a free port and starts serving (no functions yet).
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let (stop, stopping) = watch::channel(false);
        let shared = Arc::new(Shared { registry: Mutex::default(), stopping: stopping.clone() });
        let router = Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .route("/2015-03-31/functions/{name}/configuration", get(configuration))
            // Lambda's own limit is enforced in `invoke`, with Lambda's error, not axum's 2 MB default.
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(serve(listener, router, stopping));
        Ok(Self { address, shared, stop, task: Some(task) })
    }

    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Serves function `name` with `handler`, reporting `timeout` in its configuration (rounded up to
    /// whole seconds, as Lambda configures it) and ending invocations that run longer the way Lambda does
    /// (200, `Unhandled`, "Task timed out"). Registering a name again replaces its handler and timeout
    /// and keeps its invocation record.
    pub fn register(&self, name: impl Into<String>, timeout: Duration, handler: Handler) {
        self.shared.registry().functions.insert(name.into(), Function { timeout, handler });
    }

    /// Every invocation that reached function `name` so far, in order (not the requests Lambda itself
    /// refuses: payload over 6 MB or not JSON), including those still running or cut off by a timeout.
    pub fn invocations(&self, name: &str) -> Vec<Invocation> {
        self.shared.registry().invocations.get(name).cloned().unwrap_or_default()
    }

    /// The asynchronous (`InvocationType: Event`) invocations of function `name` so far, in order. They are
    /// in [`LocalLambda::invocations`] too; the server answered each with 202 at once and ran the handler
    /// in the background, as Lambda does.
    pub fn event_invocations(&self, name: &str) -> Vec<Invocation> {
        let registry = self.shared.registry();
        let events = registry.events.get(name).cloned().unwrap_or_default();
        registry.invocations.get(name).into_iter().flatten().filter(|i| events.contains(&i.seq)).cloned().collect()
    }

    /// How many invocations reached function `name` so far (see [`LocalLambda::invocations`]).
    pub fn invocation_count(&self, name: &str) -> usize {
        self.shared.registry().invocations.get(name).map_or(0, Vec::len)
    }

    /// Stops the server and waits until its task has ended.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // The task only ends by returning; a JoinError would mean it panicked, already reported.
            let _ = task.await;
        }
    }
}

impl Drop for LocalLambda {
    fn drop(&mut self) {
        // The task sees this, stops accepting, and ends on its own within SHUTDOWN_GRACE.
        self.stop.send_replace(true);
    }
}

impl std::fmt::Debug for LocalLambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLambda").field("address", &self.address).finish_non_exhaustive()
    }
}

async fn stopped(mut stopping: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stopping.wait_for(|stop| *stop).await;
}

async fn serve(listener: TcpListener, router: Router, stopping: watch::Receiver<bool>) {
    // Small responses on a kept-alive connection otherwise wait for the client's delayed ACK (Nagle).
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
        let _ = stream.set_nodelay(true);
    });
    let graceful = axum::serve(listener, router).with_graceful_shutdown(stopped(stopping.clone()));
    let deadline = async {
        stopped(stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = graceful => {
            if let Err(err) = served {
                tracing::warn!(error_code = "LOCAL_LAMBDA_SERVE_FAILED", error = %err, "local lambda server failed");
            }
        }
        () = deadline => {
            tracing::debug!(error_code = "LOCAL_LAMBDA_SHUTDOWN_FORCED", "dropped connections still open at shutdown");
        }
    }
}

/// Lambda accepts a name, `name:qualifier`, a partial ARN (`ACCOUNT:function:name`) or a full ARN;
/// function names cannot contain `:`.
fn function_name_of(identifier: &str) -> &str {
    let rest = identifier.rsplit_once("function:").map_or(identifier, |(_, rest)| rest);
    rest.split(':').next().unwrap_or(rest)
}

async fn invoke(
    State(shared): State<Arc<Shared>>,
    Path(identifier): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let name = function_name_of(&identifier).to_owned();
    let invocation_type = headers.get("X-Amz-Invocation-Type").map(HeaderValue::to_str);
    let event = matches!(invocation_type, Some(Ok("Event")));
    if !event && !matches!(invocation_type, None | Some(Ok("RequestResponse"))) {
        let message = format!("this local Lambda serves only RequestResponse and Event invocations, not {invocation_type:?}");
        return api_error(400, "InvalidParameterValueException", &message, &request_id);
    }
    if body.len() > MAX_PAYLOAD_BYTES {
        let message =
            format!("Request must be smaller than {MAX_PAYLOAD_BYTES} bytes for the InvokeFunction operation");
        return api_error(413, "RequestTooLargeException", &message, &request_id);
    }
    if !body.is_empty() {
        if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            let message = format!("Could not parse request body into json: {err}");
            return api_error(400, "InvalidRequestContentException", &message, &request_id);
        }
    }
    let (invocation, handler, timeout) = {
        let mut registry = shared.registry();
        let Some(function) = registry.functions.get(&name) else {
            return not_found(&name, &request_id);
        };
        let (handler, timeout) = (Arc::clone(&function.handler), function.timeout);
        let record = registry.invocations.entry(name.clone()).or_default();
        let seq = record.len() as u64;
        let invocation = Invocation { function: name, payload: body.to_vec(), seq };
        record.push(invocation.clone());
        if event {
            registry.events.entry(invocation.function.clone()).or_default().push(seq);
        }
        (invocation, handler, timeout)
    };
    if event {
        // Queued: Lambda answers 202 at once and runs the function on its own; its reply goes nowhere.
        tokio::spawn(async move {
            let run = async {
                let mut reply = handler(invocation).await;
                while let Reply::Delayed { delay, then } = reply {
                    tokio::time::sleep(delay).await;
                    reply = *then;
                }
            };
            let _ = tokio::time::timeout(timeout, run).await;
        });
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::ACCEPTED;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-amzn-RequestId", value);
        }
        return response;
    }
    let run = async {
        let mut reply = handler(invocation).await;
        while let Reply::Delayed { delay, then } = reply {
            tokio::time::sleep(delay).await;
            reply = *then;
        }
        reply
    };
    tokio::select! {
        finished = tokio::time::timeout(timeout, run) => match finished {
            Ok(reply) => respond(reply, &request_id),
            Err(_) => respond(timed_out(timeout, &request_id), &request_id),
        },
        () = stopped(shared.stopping.clone()) => {
            api_error(503, "ServiceException", "the local Lambda server is shutting down", &request_id)
        }
    }
}

/// What Lambda answers when a function outlives its timeout.
fn timed_out(timeout: Duration, request_id: &str) -> Reply {
    let message = format!("RequestId: {request_id} Error: Task timed out after {:.2} seconds", timeout.as_secs_f64());
    Reply::function_error(FunctionErrorKind::Unhandled, "Sandbox.Timedout", &message)
}

async fn configuration(State(shared): State<Arc<Shared>>, Path(identifier): Path<String>) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let name = function_name_of(&identifier);
    let Some(timeout) = shared.registry().functions.get(name).map(|function| function.timeout) else {
        return not_found(name, &request_id);
    };
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let body = serde_json::json!({
        "FunctionName": name,
        "FunctionArn": function_arn(name),
        "Runtime": "provided.al2023",
        "Handler": "bootstrap",
        "Timeout": seconds,
        "MemorySize": 128,
        "Version": "$LATEST",
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
    });
    with_request_id(
        (StatusCode::OK, [("Content-Type", "application/json")], body.to_string()).into_response(),
        &request_id,
    )
}

fn not_found(name: &str, request_id: &str) -> Response {
    let message = format!("Function not found: {}", function_arn(name));
    api_error(404, "ResourceNotFoundException", &message, request_id)
}

fn respond(reply: Reply, request_id: &str) -> Response {
    match reply {
        Reply::Success { body } => {
            let response = (StatusCode::OK, [("X-Amz-Executed-Version", "$LATEST")], body).into_response();
            with_request_id(response, request_id)
        }
        Reply::FunctionError { kind, body } => {
            let headers = [("X-Amz-Executed-Version", "$LATEST"), ("X-Amz-Function-Error", kind.header_value())];
            with_request_id((StatusCode::OK, headers, body).into_response(), request_id)
        }
        Reply::ApiError { status, code, message } => api_error(status, &code, &message, request_id),
        // `invoke` serves delays before answering; a nested delay left here has nothing more to wait for.
        Reply::Delayed { then, .. } => respond(*then, request_id),
    }
}

/// A Lambda API error as the service sends it: code in `x-amzn-ErrorType`, `Type` and `message` in the body.
fn api_error(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let fault = if status.is_server_error() { "Service" } else { "User" };
    let mut body = serde_json::json!({ "Type": fault, "message": message });
    if code == "TooManyRequestsException" {
        body["Reason"] = "ReservedFunctionConcurrentInvocationLimitExceeded".into();
    }
    let headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)];
    with_request_id((status, headers, body.to_string()).into_response(), request_id)
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_qualified_names_and_arns() {
        let cases = [
            ("target", "target"),
            ("target:live", "target"),
            ("123456789012:function:target", "target"),
            ("arn:aws:lambda:us-east-1:123456789012:function:target", "target"),
            ("arn:aws:lambda:us-east-1:123456789012:function:target:7", "target"),
        ];
        for (identifier, expected) in cases {
            assert_eq!(function_name_of(identifier), expected, "{identifier}");
        }
    }

    #[tokio::test]
    async fn script_answers_in_order_then_repeats_the_last() {
        let handler = script(vec![Reply::throttled(), Reply::service_error(503)], Reply::success("ok"));
        let mut replies = Vec::new();
        for seq in 0..4 {
            replies.push(handler(Invocation { function: "f".to_owned(), payload: Vec::new(), seq }).await);
        }
        let expected = vec![Reply::throttled(), Reply::service_error(503), Reply::success("ok"), Reply::success("ok")];
        assert_eq!(replies, expected);
    }
}
