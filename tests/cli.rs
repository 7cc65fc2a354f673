//! The command line's contract: exit codes and where output goes. Bad configuration is refused before
//! anything connects.

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kafka-lambda-relay"))
}

fn events(name: &str) -> String {
    format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_lists_every_violation_and_exits_2() -> Result<(), Box<dyn std::error::Error>> {
    let out = relay().args(["validate", "--config", &events("invalid.json")]).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr)?;
    for field in [
        "BatchSize",
        "MaximumBatchingWindowInSeconds",
        "MaximumRetryAttempts",
        "MaximumRecordAgeInSeconds",
        "DestinationConfig.OnFailure.Destination",
        "StartingPositionTimestamp",
        "SourceAccessConfigurations.URI",
    ] {
        assert!(stderr.contains(field), "{field} missing from:\n{stderr}");
    }
    assert!(stderr.contains("0 is out of range; allowed 1-10000"), "{stderr}");
    Ok(())
}

#[test]
fn validate_accepts_the_sample_configurations() -> Result<(), Box<dyn std::error::Error>> {
    for name in ["one-mapping.json", "several-mappings.json"] {
        let out = relay().args(["validate", "--config", &events(name)]).output()?;
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[test]
fn run_refuses_an_invalid_configuration_without_connecting() -> Result<(), Box<dyn std::error::Error>> {
    // The brokers in invalid.json do not exist: a run that tried to connect would hang or report a
    // connection problem instead of exiting 2 at once with the violations.
    let started = std::time::Instant::now();
    let out = relay().args(["run", "--config", &events("invalid.json"), "--until-idle"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no report for a configuration that never ran");
    assert!(String::from_utf8(out.stderr)?.contains("ESM_CONFIG_NOT_VALID"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    Ok(())
}

#[test]
fn a_misspelled_field_is_an_error_naming_it() -> Result<(), Box<dyn std::error::Error>> {
    let (code, stderr) = validate_file(br#"{"Mappings": [{"FunctionName": "f", "Topics": ["t"], "StartingPositon": "LATEST"}]}"#)?;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("StartingPositon"));
    Ok(())
}

#[test]
fn validate_warns_when_the_run_cannot_fit_one_invocation() -> Result<(), Box<dyn std::error::Error>> {
    let out = relay()
        .args(["validate", "--config", &events("one-mapping.json")])
        .env("RELAY_MAX_SECONDS", "10")
        .env("RELAY_TARGET_TIMEOUT_SECONDS", "30")
        .output()?;
    assert_eq!(out.status.code(), Some(0), "a warning, not an invalid configuration");
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("warning: the run lasts 10 s but the target function's timeout is 30 s (plus 3 s kept for the final commit)"),
        "{stderr}"
    );
    let out = relay()
        .args(["validate", "--config", &events("one-mapping.json")])
        .env("RELAY_MAX_SECONDS", "60")
        .env("RELAY_TARGET_TIMEOUT_SECONDS", "30")
        .output()?;
    assert_eq!(String::from_utf8(out.stderr)?, "", "a run that fits says nothing");
    Ok(())
}

/// A mapping `validate` and `run` both accept.
fn valid_mapping(group: &str) -> serde_json::Value {
    serde_json::json!({
        "FunctionName": "target",
        "Topics": ["orders"],
        "StartingPosition": "LATEST",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1:9092"]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group}
    })
}

/// `validate` on `mappings`: the exit code and stderr.
fn validate(mappings: Vec<serde_json::Value>) -> Result<(Option<i32>, String), Box<dyn std::error::Error>> {
    validate_file(&serde_json::to_vec(&serde_json::json!({"Mappings": mappings}))?)
}

/// `validate --config` on a file holding `contents` (a file of its own: the tests run at once).
fn validate_file(contents: &[u8]) -> Result<(Option<i32>, String), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("relay-cli-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, contents)?;
    let out = relay().args(["validate", "--config"]).arg(&path).output()?;
    std::fs::remove_file(&path)?;
    Ok((out.status.code(), String::from_utf8(out.stderr)?))
}

// Defects of issue 13, each as the user met it with the binary: configurations `validate` accepted although
// `run` then refused them, or AWS's CreateEventSourceMapping would have; values echoed whole into errors.
#[test]
fn validate_refuses_what_run_or_aws_would_refuse_and_quotes_bad_values_short() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(validate(vec![valid_mapping("g")])?.0, Some(0), "the base mapping is valid");
    let huge = "x".repeat(1 << 20);
    let with = |field: &str, value: serde_json::Value| {
        let mut m = valid_mapping("g");
        m[field] = value;
        m
    };
    let bootstrap = |server: &str| {
        let mut m = valid_mapping("g");
        m["SelfManagedEventSource"]["Endpoints"]["KAFKA_BOOTSTRAP_SERVERS"] = serde_json::json!([server]);
        m
    };
    let group = |id: &str| valid_mapping(id);
    let shared = |topic: &str, function: &str| {
        let mut m = valid_mapping("shared");
        m["Topics"] = serde_json::json!([topic]);
        m["FunctionName"] = serde_json::json!(function);
        m
    };
    // (what, mappings, a field the error must name)
    let cases: Vec<(&str, Vec<serde_json::Value>, &str)> = vec![
        ("the same topic twice (run: `Subscription error`)", vec![with("Topics", serde_json::json!(["orders", "orders"]))], "Topics"),
        ("a NUL byte in a bootstrap server (run: `FFI nul error`)", vec![bootstrap("broker\u{0}:9092")], "KAFKA_BOOTSTRAP_SERVERS"),
        ("a bootstrap server without a port", vec![bootstrap("broker")], "KAFKA_BOOTSTRAP_SERVERS"),
        ("a path as FunctionName", vec![with("FunctionName", serde_json::json!("../../etc/passwd"))], "FunctionName"),
        ("a query string in FunctionName", vec![with("FunctionName", serde_json::json!("target?x=1#y"))], "FunctionName"),
        ("an emoji FunctionName", vec![with("FunctionName", serde_json::json!("fn-\u{1F600}"))], "FunctionName"),
        ("a 1 MB UUID", vec![with("UUID", serde_json::json!(huge))], "UUID"),
        ("a 1 MB filter pattern", vec![with("FilterCriteria", serde_json::json!({"Filters": [{"Pattern": huge}]}))], "FilterCriteria"),
        ("a topic name Kafka refuses", vec![with("Topics", serde_json::json!(["orders/2024"]))], "Topics"),
        ("a topic name of 250 characters", vec![with("Topics", serde_json::json!(["t".repeat(250)]))], "Topics"),
        ("a consumer group ID of 201 characters", vec![group(&"g".repeat(201))], "ConsumerGroupId"),
        ("an SQS destination that is not an SQS ARN", vec![with("DestinationConfig", serde_json::json!({"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012"}}))], "DestinationConfig.OnFailure.Destination"),
        ("two mappings of different topics and functions sharing a consumer group", vec![shared("orders", "a"), shared("payments", "b")], "ConsumerGroupId"),
    ];
    for (what, mappings, field) in cases {
        let (code, stderr) = validate(mappings)?;
        assert_eq!(code, Some(2), "{what}: accepted; stderr: {}", stderr.chars().take(500).collect::<String>());
        assert!(stderr.contains(field), "{what}: the error does not name {field}: {stderr}");
        assert!(stderr.len() < 2000, "{what}: {} bytes of errors (a value echoed whole?)", stderr.len());
    }
    Ok(())
}
