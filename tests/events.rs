//! The sample payloads in `events/` (used with `cargo lambda invoke --data-file` and as the schedule's
//! input) stay real: each valid one parses strictly and validates, and `invalid.json` fails with exactly
//! the violations it was written to show.

use std::error::Error;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use kafka_lambda_relay::config::{ConfigError, RelayConfig};

type TestResult = Result<(), Box<dyn Error>>;

fn read_event(name: &str) -> Result<String, Box<dyn Error>> {
    let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
    Ok(std::fs::read_to_string(path)?)
}

/// Parses, validates, and checks the config survives serialize → parse unchanged.
fn valid_config(name: &str) -> Result<RelayConfig, Box<dyn Error>> {
    let config = RelayConfig::parse_valid(&read_event(name)?)?;
    let again = RelayConfig::from_json(&serde_json::to_string(&config)?)?;
    assert_eq!(again, config, "{name} does not round-trip");
    Ok(config)
}

#[test]
fn schema_registry_event_is_a_valid_config_with_a_confluent_and_a_glue_registry() -> TestResult {
    use kafka_lambda_relay::config::{EventRecordFormat, SchemaValidationAttribute};
    let config = valid_config("schema-registry-mappings.json")?;
    let confluent = config.mappings[0].schema_registry_config().ok_or("no SchemaRegistryConfig")?;
    assert!(!confluent.is_glue());
    assert_eq!(confluent.event_record_format, Some(EventRecordFormat::Json));
    assert!(confluent.validates(SchemaValidationAttribute::Key) && confluent.validates(SchemaValidationAttribute::Value));
    assert_eq!(confluent.access_configs.len(), 2);
    let glue = config.mappings[1].schema_registry_config().ok_or("no SchemaRegistryConfig")?;
    assert!(glue.is_glue());
    assert_eq!(glue.event_record_format, Some(EventRecordFormat::Source));
    assert!(!glue.validates(SchemaValidationAttribute::Key));
    Ok(())
}

#[test]
fn one_mapping_event_is_a_valid_config() -> TestResult {
    let config = valid_config("one-mapping.json")?;
    assert_eq!(config.mappings.len(), 1);
    let mapping = &config.mappings[0];
    assert_eq!(mapping.function_name, "my-target");
    assert_eq!(mapping.topics, vec!["orders"]);
    assert_eq!(mapping.batch_size, 100);
    assert_eq!(mapping.destination(), None);
    Ok(())
}

#[test]
fn several_mappings_event_is_a_valid_config_using_every_delivery_setting() -> TestResult {
    let config = valid_config("several-mappings.json")?;
    let uuids: Vec<String> = config.mappings.iter().map(|m| m.uuid()).collect();
    assert_eq!(
        uuids,
        vec![
            "6d2a0c1e-3f4b-4a5c-9d8e-7f6a5b4c3d21",
            "0b9c8d7e-6f5a-4b3c-8d2e-1f0a9b8c7d62",
            "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a53"
        ]
    );

    let billing = &config.mappings[0];
    let kinds: Vec<&str> = billing
        .source_access_configurations
        .iter()
        .map(|s| s.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        vec!["SASL_SCRAM_512_AUTH", "SERVER_ROOT_CA_CERTIFICATE"]
    );
    assert_eq!(
        billing.destination(),
        Some("arn:aws:sqs:us-east-1:123456789012:billing-relay-failures")
    );
    assert_eq!(
        billing.filter_criteria.as_ref().map(|f| f.filters.len()),
        Some(2)
    );
    assert_eq!(billing.retry_limit(), Some(3));
    assert_eq!(
        billing.max_record_age(),
        Some(std::time::Duration::from_secs(3600))
    );
    assert!(billing.bisect_batch_on_function_error);
    assert!(billing.reports_batch_item_failures());
    assert_eq!(billing.consumer_group_id(), "billing-relay");

    let audit = &config.mappings[1];
    assert_eq!(audit.event_source(), "aws:kafka");
    assert_eq!(
        audit.destination(),
        Some("arn:aws:s3:::payments-audit-relay-failures")
    );
    assert_eq!(audit.consumer_group_id(), "payments-audit");

    let sampler = &config.mappings[2];
    assert!(!sampler.enabled);
    assert_eq!(sampler.retry_limit(), Some(0));
    assert_eq!(
        sampler.destination(),
        Some("arn:aws:sns:us-east-1:123456789012:clickstream-alerts")
    );
    Ok(())
}

#[test]
fn invalid_event_reports_every_violation_it_contains() -> TestResult {
    let config = RelayConfig::from_json(&read_event("invalid.json")?)?;
    let violations = match config.validate() {
        Err(ConfigError::Invalid(violations)) => violations,
        other => return Err(format!("expected Invalid, got {other:?}").into()),
    };
    let mut found: Vec<(String, String)> = violations
        .into_iter()
        .map(|v| (v.mapping, v.field))
        .collect();
    found.sort();
    let mut expected: Vec<(String, String)> = [
        ("Mappings[0]", "BatchSize"),
        ("Mappings[0]", "DestinationConfig.OnFailure.Destination"),
        ("Mappings[0]", "MaximumBatchingWindowInSeconds"),
        ("Mappings[0]", "MaximumRecordAgeInSeconds"),
        ("Mappings[0]", "MaximumRetryAttempts"),
        ("Mappings[1]", "SourceAccessConfigurations.URI"),
        ("Mappings[1]", "StartingPositionTimestamp"),
    ]
    .into_iter()
    .map(|(m, f)| (m.to_string(), f.to_string()))
    .collect();
    expected.sort();
    assert_eq!(found, expected);
    Ok(())
}

#[test]
fn scheduled_event_is_what_eventbridge_sends_and_not_a_config() -> TestResult {
    let text = read_event("scheduled-event.json")?;
    let event: EventBridgeEvent = serde_json::from_str(&text)?;
    assert_eq!(event.detail_type, "Scheduled Event");
    assert_eq!(event.source, "aws.events");
    assert_eq!(event.detail, serde_json::json!({}));
    assert_eq!(event.resources.as_ref().map(Vec::len), Some(1));
    let again: EventBridgeEvent = serde_json::from_str(&serde_json::to_string(&event)?)?;
    assert_eq!(again, event);
    // The relay tells the two payloads apart: a Scheduled Event must never be mistaken for mappings.
    assert!(matches!(
        RelayConfig::from_json(&text),
        Err(ConfigError::Parse(_))
    ));
    Ok(())
}

/// AWS's MSK CLI example (cluster ARN, topic, LATEST, nothing else) and a multi-VPC (cross-account) cluster.
#[test]
fn msk_iam_event_is_a_valid_config_without_endpoints() -> TestResult {
    use kafka_lambda_relay::auth::msk::Connectivity;
    let config = valid_config("msk-iam.json")?;
    assert_eq!(config.mappings.len(), 2);
    for mapping in &config.mappings {
        assert!(mapping.is_msk() && mapping.bootstrap_servers().is_empty() && mapping.source_access_configurations.is_empty());
        assert_eq!(mapping.event_source(), "aws:kafka");
    }
    assert_eq!(config.mappings[0].msk_connectivity, None);
    assert_eq!(config.mappings[1].msk_connectivity, Some(Connectivity::MultiVpc));
    Ok(())
}
