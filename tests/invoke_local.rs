//! The production `LambdaInvoker` (aws-sdk-lambda over HTTP) against the in-process `LocalLambda`:
//! every outcome the relay distinguishes, as the SDK really parses it.

use std::error::Error;
use std::time::{Duration, Instant};

use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{
    always, echo_success, function_arn, handler, local_sdk_config, script, Invocation, LocalLambda, Reply,
};
use kafka_lambda_relay::invoke::{FunctionInfo, FunctionLookupError, Invoke, InvokeResult};

type TestResult = Result<(), Box<dyn Error>>;

const TIMEOUT: Duration = Duration::from_secs(30);
const INVOKE_TIMEOUT: Duration = Duration::from_secs(5);

async fn invoker_for(endpoint: &str) -> LambdaInvoker {
    LambdaInvoker::new(&local_sdk_config(endpoint).await)
}

/// A server with one function `name` answering `reply`, and a client for it.
async fn serving(name: &str, reply: Reply) -> Result<(LocalLambda, LambdaInvoker), Box<dyn Error>> {
    let server = LocalLambda::start().await?;
    server.register(name, TIMEOUT, always(reply));
    let invoker = invoker_for(&server.endpoint()).await;
    Ok((server, invoker))
}

/// An endpoint nothing listens on: a port that was just free on 127.0.0.1.
async fn closed_endpoint() -> Result<String, Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{address}"))
}

#[tokio::test]
async fn success_returns_the_body_and_executed_version() -> TestResult {
    let (server, invoker) = serving("target", Reply::success(r#"{"batchItemFailures":[]}"#)).await?;
    let result = invoker.invoke("target", br#"{"eventSource":"SelfManagedKafka"}"#.to_vec(), INVOKE_TIMEOUT).await;
    assert_eq!(
        result,
        InvokeResult::Completed {
            status_code: 200,
            function_error: None,
            executed_version: Some("$LATEST".to_owned()),
            payload: br#"{"batchItemFailures":[]}"#.to_vec(),
        }
    );
    assert_eq!(server.invocation_count("target"), 1);
    Ok(())
}

#[tokio::test]
async fn echo_success_answers_an_empty_object() -> TestResult {
    let server = LocalLambda::start().await?;
    server.register("target", TIMEOUT, echo_success());
    let result = invoker_for(&server.endpoint()).await.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    let InvokeResult::Completed { status_code: 200, function_error: None, payload, .. } = result else {
        panic!("expected a plain success, got {result:?}");
    };
    assert_eq!(payload, b"{}");
    Ok(())
}

#[tokio::test]
async fn unhandled_function_error_completes_with_the_error_header() -> TestResult {
    let (_server, invoker) = serving("target", Reply::unhandled("Error", "boom")).await?;
    let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    let InvokeResult::Completed { status_code, function_error, executed_version, payload } = result else {
        panic!("expected a completed invoke, got {result:?}");
    };
    assert_eq!((status_code, function_error.as_deref()), (200, Some("Unhandled")));
    assert_eq!(executed_version.as_deref(), Some("$LATEST"));
    let body: serde_json::Value = serde_json::from_slice(&payload)?;
    assert_eq!(body, serde_json::json!({"errorMessage": "boom", "errorType": "Error"}));
    Ok(())
}

#[tokio::test]
async fn handled_function_error_completes_with_the_error_header() -> TestResult {
    let (_server, invoker) = serving("target", Reply::handled("ValueError", "bad record")).await?;
    let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    let InvokeResult::Completed { status_code: 200, function_error, payload, .. } = result else {
        panic!("expected a completed invoke, got {result:?}");
    };
    assert_eq!(function_error.as_deref(), Some("Handled"));
    let body: serde_json::Value = serde_json::from_slice(&payload)?;
    assert_eq!(body["errorType"], "ValueError");
    Ok(())
}

#[tokio::test]
async fn throttle_is_throttled_after_exactly_one_attempt() -> TestResult {
    let (server, invoker) = serving("target", Reply::throttled()).await?;
    let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    assert_eq!(result, InvokeResult::Throttled { message: "Rate Exceeded.".to_owned() });
    // The SDK would retry a throttle three times on its own: the relay must see each attempt.
    assert_eq!(server.invocation_count("target"), 1);
    Ok(())
}

#[tokio::test]
async fn service_errors_are_unavailable_after_exactly_one_attempt() -> TestResult {
    for status in [500, 502, 503] {
        let (server, invoker) = serving("target", Reply::service_error(status)).await?;
        let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
        assert_eq!(
            result,
            InvokeResult::Unavailable {
                status_code: Some(i32::from(status)),
                message: "ServiceException: Lambda was unable to process the request.".to_owned(),
            },
            "status {status}"
        );
        assert_eq!(server.invocation_count("target"), 1, "status {status}");
    }
    Ok(())
}

#[tokio::test]
async fn resource_not_ready_is_unavailable() -> TestResult {
    let (_server, invoker) =
        serving("target", Reply::api_error(502, "ResourceNotReadyException", "function is being created")).await?;
    let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    assert_eq!(
        result,
        InvokeResult::Unavailable {
            status_code: Some(502),
            message: "ResourceNotReadyException: function is being created".to_owned(),
        }
    );
    Ok(())
}

#[tokio::test]
async fn connection_refused_is_unavailable() -> TestResult {
    let invoker = invoker_for(&closed_endpoint().await?).await;
    let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    let InvokeResult::Unavailable { status_code: None, message } = &result else {
        panic!("expected unavailable without a status, got {result:?}");
    };
    assert!(message.contains("dispatch failure"), "{message}");
    Ok(())
}

#[tokio::test]
async fn reply_slower_than_the_invoke_timeout_is_timed_out() -> TestResult {
    let (server, invoker) = serving("target", Reply::success("{}").after(Duration::from_secs(2))).await?;
    let started = Instant::now();
    let result = invoker.invoke("target", b"{}".to_vec(), Duration::from_millis(200)).await;
    assert_eq!(result, InvokeResult::TimedOut);
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    assert_eq!(server.invocation_count("target"), 1);
    Ok(())
}

#[tokio::test]
async fn slow_reply_within_the_invoke_timeout_completes() -> TestResult {
    let (_server, invoker) = serving("target", Reply::success("late").after(Duration::from_millis(300))).await?;
    let result = invoker.invoke("target", b"{}".to_vec(), Duration::from_secs(3)).await;
    let InvokeResult::Completed { status_code: 200, function_error: None, payload, .. } = result else {
        panic!("expected a success, got {result:?}");
    };
    assert_eq!(payload, b"late");
    Ok(())
}

#[tokio::test]
async fn function_outliving_its_timeout_fails_as_lambda_reports_it() -> TestResult {
    let server = LocalLambda::start().await?;
    server.register("target", Duration::from_millis(300), always(Reply::success("{}").after(Duration::from_secs(3))));
    let result = invoker_for(&server.endpoint()).await.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    let InvokeResult::Completed { status_code: 200, function_error, payload, .. } = result else {
        panic!("expected a completed invoke, got {result:?}");
    };
    assert_eq!(function_error.as_deref(), Some("Unhandled"));
    let body: serde_json::Value = serde_json::from_slice(&payload)?;
    assert_eq!(body["errorType"], "Sandbox.Timedout");
    let message = body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.ends_with("Task timed out after 0.30 seconds"), "{message}");
    Ok(())
}

#[tokio::test]
async fn unknown_function_is_rejected_as_not_found() -> TestResult {
    let (server, invoker) = serving("target", Reply::success("{}")).await?;
    let result = invoker.invoke("missing", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    assert_eq!(
        result,
        InvokeResult::Rejected {
            code: "ResourceNotFoundException".to_owned(),
            message: format!("Function not found: {}", function_arn("missing")),
        }
    );
    assert_eq!(server.invocation_count("missing"), 0);
    Ok(())
}

#[tokio::test]
async fn access_denied_is_rejected() -> TestResult {
    let (_server, invoker) =
        serving("target", Reply::api_error(403, "AccessDeniedException", "not authorized to invoke")).await?;
    let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    assert_eq!(
        result,
        InvokeResult::Rejected {
            code: "AccessDeniedException".to_owned(),
            message: "not authorized to invoke".to_owned(),
        }
    );
    Ok(())
}

#[tokio::test]
async fn payload_that_is_not_json_is_rejected_before_the_function_runs() -> TestResult {
    let (server, invoker) = serving("target", Reply::success("{}")).await?;
    let result = invoker.invoke("target", b"{not json".to_vec(), INVOKE_TIMEOUT).await;
    let InvokeResult::Rejected { code, .. } = &result else {
        panic!("expected a rejection, got {result:?}");
    };
    assert_eq!(code, "InvalidRequestContentException");
    assert_eq!(server.invocation_count("target"), 0);
    Ok(())
}

#[tokio::test]
async fn payload_over_six_mb_is_rejected_and_six_mb_is_accepted() -> TestResult {
    let (server, invoker) = serving("target", Reply::success("{}")).await?;
    let max = kafka_lambda_relay::config::MAX_PAYLOAD_BYTES;
    // A JSON string of exactly `len` bytes.
    let json_string = |len: usize| [b"\"".to_vec(), vec![b'a'; len - 2], b"\"".to_vec()].concat();

    let result = invoker.invoke("target", json_string(max + 1), INVOKE_TIMEOUT).await;
    let InvokeResult::Rejected { code, .. } = &result else {
        panic!("expected a rejection, got {result:?}");
    };
    assert_eq!(code, "RequestTooLargeException");
    assert_eq!(server.invocation_count("target"), 0);

    let result = invoker.invoke("target", json_string(max), INVOKE_TIMEOUT).await;
    assert!(matches!(result, InvokeResult::Completed { status_code: 200, function_error: None, .. }), "{result:?}");
    assert_eq!(server.invocations("target")[0].payload.len(), max);
    Ok(())
}

#[tokio::test]
async fn server_records_exact_payloads_in_order() -> TestResult {
    let (server, invoker) = serving("target", Reply::success("{}")).await?;
    let first = "{\"records\":{\"topic-0\":[{\"value\":\"aGVsbG8=\",\"key\":null}]},\"unicode\":\"\u{e9}\"}";
    let second = "[1, 2,\n 3]";
    invoker.invoke("target", first.as_bytes().to_vec(), INVOKE_TIMEOUT).await;
    invoker.invoke(&function_arn("target"), second.as_bytes().to_vec(), INVOKE_TIMEOUT).await;
    assert_eq!(
        server.invocations("target"),
        vec![
            Invocation { function: "target".to_owned(), payload: first.as_bytes().to_vec(), seq: 0 },
            Invocation { function: "target".to_owned(), payload: second.as_bytes().to_vec(), seq: 1 },
        ]
    );
    Ok(())
}

#[tokio::test]
async fn scripted_handler_answers_each_attempt_in_turn() -> TestResult {
    let server = LocalLambda::start().await?;
    server.register(
        "target",
        TIMEOUT,
        script(vec![Reply::throttled(), Reply::service_error(503)], Reply::success("ok")),
    );
    let invoker = invoker_for(&server.endpoint()).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(match invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await {
            InvokeResult::Throttled { .. } => "throttled",
            InvokeResult::Unavailable { .. } => "unavailable",
            InvokeResult::Completed { .. } => "completed",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(kinds, ["throttled", "unavailable", "completed"]);
    Ok(())
}

#[tokio::test]
async fn custom_handler_sees_each_invocation() -> TestResult {
    let server = LocalLambda::start().await?;
    server.register(
        "target",
        TIMEOUT,
        handler(|invocation: Invocation| async move {
            Reply::json(&serde_json::json!({ "seq": invocation.seq, "bytes": invocation.payload.len() }))
        }),
    );
    let invoker = invoker_for(&server.endpoint()).await;
    invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    let result = invoker.invoke("target", b"[1,2]".to_vec(), INVOKE_TIMEOUT).await;
    let InvokeResult::Completed { payload, .. } = result else {
        panic!("expected a completed invoke, got {result:?}");
    };
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&payload)?, serde_json::json!({"seq": 1, "bytes": 5}));
    Ok(())
}

#[tokio::test]
async fn function_info_returns_the_registered_arn_and_timeout() -> TestResult {
    let server = LocalLambda::start().await?;
    server.register("target", Duration::from_secs(45), echo_success());
    let info = invoker_for(&server.endpoint()).await.function_info("target").await?;
    assert_eq!(info, FunctionInfo { function_arn: function_arn("target"), timeout: Duration::from_secs(45) });
    Ok(())
}

#[tokio::test]
async fn function_info_rounds_a_fractional_timeout_up_to_whole_seconds() -> TestResult {
    let server = LocalLambda::start().await?;
    server.register("target", Duration::from_millis(1500), echo_success());
    let info = invoker_for(&server.endpoint()).await.function_info(&function_arn("target")).await?;
    assert_eq!(info.timeout, Duration::from_secs(2));
    Ok(())
}

#[tokio::test]
async fn registering_again_replaces_the_handler_and_keeps_the_record() -> TestResult {
    let (server, invoker) = serving("target", Reply::throttled()).await?;
    invoker.invoke("target", b"1".to_vec(), INVOKE_TIMEOUT).await;
    server.register("target", TIMEOUT, always(Reply::success("fixed")));
    let result = invoker.invoke("target", b"2".to_vec(), INVOKE_TIMEOUT).await;
    assert!(matches!(&result, InvokeResult::Completed { payload, .. } if payload == b"fixed"), "{result:?}");
    let seqs_and_payloads: Vec<_> = server.invocations("target").into_iter().map(|i| (i.seq, i.payload)).collect();
    assert_eq!(seqs_and_payloads, vec![(0, b"1".to_vec()), (1, b"2".to_vec())]);
    Ok(())
}

#[tokio::test]
async fn function_info_of_an_unknown_function_is_not_valid() -> TestResult {
    let server = LocalLambda::start().await?;
    let result = invoker_for(&server.endpoint()).await.function_info("missing").await;
    assert_eq!(
        result,
        Err(FunctionLookupError::NotValid {
            code: "ResourceNotFoundException".to_owned(),
            message: format!("Function not found: {}", function_arn("missing")),
        })
    );
    Ok(())
}

#[tokio::test]
async fn function_info_without_a_server_is_unavailable() -> TestResult {
    let invoker = invoker_for(&closed_endpoint().await?).await;
    let result = invoker.function_info("target").await;
    assert!(matches!(result, Err(FunctionLookupError::Unavailable(_))), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_listening() -> TestResult {
    let server = LocalLambda::start().await?;
    server.register("target", TIMEOUT, echo_success());
    let endpoint = server.endpoint();
    let invoker = invoker_for(&endpoint).await;
    assert!(matches!(invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await, InvokeResult::Completed { .. }));
    server.shutdown().await;
    let result = invoker.invoke("target", b"{}".to_vec(), INVOKE_TIMEOUT).await;
    assert!(matches!(result, InvokeResult::Unavailable { status_code: None, .. }), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn dropping_the_server_ends_an_invocation_in_flight() -> TestResult {
    let (server, invoker) = serving("target", Reply::success("{}").after(Duration::from_secs(20))).await?;
    let started = Instant::now();
    let in_flight =
        tokio::spawn(async move { invoker.invoke("target", b"{}".to_vec(), Duration::from_secs(30)).await });
    while server.invocation_count("target") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(server);
    let result = in_flight.await?;
    assert!(matches!(result, InvokeResult::Unavailable { status_code: Some(503), .. }), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    Ok(())
}
