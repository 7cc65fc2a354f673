//! Entry points shared by Lambda and the command line: running every mapping of a configuration, and
//! reading the configuration from the invocation payload or the environment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::{ConfigError, RelayConfig};
use crate::metrics::{MappingReport, RunReport};
use crate::relay::{run_mapping, RunOptions, Services, Shared};

/// Runs every mapping concurrently; one mapping's failure never stops another.
pub async fn run_all(config: &RelayConfig, services: &Services, options: &RunOptions) -> RunReport {
    // Invocation slots and the buffer budget are the process's, shared by every mapping.
    let shared = Shared::new(options);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mapping) in config.mappings.iter().enumerate() {
        let mapping = mapping.clone();
        let services = services.clone();
        let options = options.clone();
        let shared = shared.clone();
        // Every line the mapping logs carries its UUID (and honours its SystemLogLevel) through this span.
        let span = crate::logging::mapping_span(&mapping);
        tasks.spawn(tracing::Instrument::instrument(
            async move { (index, run_mapping(&mapping, &services, &options, &shared).await) },
            span,
        ));
    }
    let mut reports: Vec<Option<MappingReport>> = vec![None; config.mappings.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, report)) => reports[index] = Some(report),
            Err(error) => tracing::error!(error_code = "MAPPING_TASK_FAILED", %error, "a mapping's task failed"),
        }
    }
    let mappings = reports
        .into_iter()
        .zip(&config.mappings)
        .map(|(report, mapping)| {
            report.unwrap_or_else(|| {
                MappingReport::not_run(mapping, "Failed", None, "PROBLEM: the mapping's task stopped unexpectedly; its records will be delivered again".into())
            })
        })
        .collect();
    RunReport { mappings }
}

/// `run --check`: per mapping, what the cluster says (partitions, watermarks, the group's offsets), or why
/// it cannot be used; nothing is consumed or committed. The flag is true when any mapping failed.
pub async fn check_all(config: &RelayConfig, services: &Services) -> (Value, bool) {
    let mut failed = false;
    let mut mappings = Vec::new();
    for mapping in &config.mappings {
        let entry = match crate::auth::check(mapping, services.secrets.as_ref()).await {
            Ok(report) => serde_json::json!({"UUID": mapping.uuid(), "Check": report}),
            Err(error) => {
                failed = true;
                serde_json::json!({
                    "UUID": mapping.uuid(),
                    "ErrorCode": error.code().map(|c| c.as_str()),
                    "LastProcessingResult": format!("PROBLEM: {error}"),
                })
            }
        };
        mappings.push(entry);
    }
    (serde_json::json!({ "Mappings": mappings }), failed)
}

/// What a Lambda invocation payload asks for.
#[derive(Debug)]
pub enum Payload {
    /// A configuration object (the schedule's input).
    Config(RelayConfig),
    /// An EventBridge Scheduled Event (or an empty payload): use the configured source.
    UseConfiguredSource,
}

/// Reads the invocation payload: `{"Mappings": [...]}`, or an EventBridge "Scheduled Event".
pub fn parse_payload(payload: &Value) -> Result<Payload, ConfigError> {
    match payload {
        Value::Null => Ok(Payload::UseConfiguredSource),
        Value::Object(map) if map.is_empty() => Ok(Payload::UseConfiguredSource),
        Value::Object(map) if map.contains_key("Mappings") => Ok(Payload::Config(serde_json::from_value(payload.clone())?)),
        Value::Object(map)
            if map.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
                || map.get("source").and_then(Value::as_str) == Some("aws.events")
                || map.get("source").and_then(Value::as_str) == Some("aws.scheduler") =>
        {
            Ok(Payload::UseConfiguredSource)
        }
        _ => Err(ConfigError::Parse(serde::de::Error::custom(
            "the payload is neither a configuration ({\"Mappings\": [...]}) nor an EventBridge Scheduled Event",
        ))),
    }
}

/// The configuration a payload asks for, validated.
pub fn resolve_config(payload: &Value) -> Result<RelayConfig, ConfigError> {
    let config = match parse_payload(payload)? {
        Payload::Config(config) => config,
        Payload::UseConfiguredSource => RelayConfig::from_env()?,
    };
    config.validate()?;
    Ok(config)
}

/// Run options for a Lambda invocation whose deadline is `deadline_ms` (Unix milliseconds).
///
/// `RELAY_MAX_SECONDS` caps a run's length. A deadline already in the past (`cargo lambda watch` hands
/// out one near the Unix epoch) cannot bound the run: then only the cap and idleness do.
pub fn lambda_options(deadline_ms: u64) -> RunOptions {
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let remaining = deadline_ms as i128 - now_ms;
    let cap = env_seconds("RELAY_MAX_SECONDS");
    let deadline = if remaining > 0 {
        // A run may take up to CLOSE_GRACE past its deadline to leave the group, and the handler then returns
        // the report: both must happen before Lambda's own deadline.
        let lambda = (Instant::now() + Duration::from_millis(remaining as u64))
            .checked_sub(crate::relay::CLOSE_GRACE + Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        Some(cap.map_or(lambda, |cap| lambda.min(Instant::now() + cap)))
    } else {
        tracing::warn!(error_code = "DEADLINE_IN_THE_PAST", deadline_ms, "the invocation's deadline has passed (an emulator?): the run is bounded by RELAY_MAX_SECONDS and idleness only");
        cap.map(|cap| Instant::now() + cap)
    };
    RunOptions {
        deadline,
        // A scheduled run that has caught up returns early: the next schedule picks up new records, and
        // Lambda bills by duration. RELAY_STOP_WHEN_IDLE=false keeps polling until the deadline.
        until_idle: std::env::var("RELAY_STOP_WHEN_IDLE").map(|v| v != "false").unwrap_or(true),
        margin: Duration::from_secs(5),
        target_timeout: env_seconds("RELAY_TARGET_TIMEOUT_SECONDS"),
        max_in_flight: env_number("RELAY_MAX_IN_FLIGHT").unwrap_or(crate::relay::DEFAULT_MAX_IN_FLIGHT),
        buffer_bytes: env_number("RELAY_BUFFER_MIB").map_or(crate::relay::DEFAULT_BUFFER_BYTES, |mib| mib << 20),
        ..RunOptions::default()
    }
}

/// A positive whole number from an environment variable.
pub fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0)
}

/// A duration in whole seconds from an environment variable.
pub fn env_seconds(name: &str) -> Option<Duration> {
    std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

/// Services on the real AWS SDK (endpoints and credentials from the standard environment).
pub fn aws_services(sdk_config: &aws_config::SdkConfig) -> Services {
    let invoker = Arc::new(crate::invoke::lambda::LambdaInvoker::new(sdk_config));
    let sdk = sdk_config.clone();
    // MSK mappings (bootstrap lookup, IAM tokens) use this configuration's one credentials provider too.
    crate::auth::msk::MskEnvironment::use_for_process(sdk_config);
    Services {
        invoker,
        sinks: Arc::new(move |arn: &str| destination_sink(arn, &sdk)),
        secrets: Arc::new(crate::auth::SecretsManagerSource::new(sdk_config)),
    }
}

/// The on-failure destination of `arn` on the AWS SDK.
fn destination_sink(
    arn: &str,
    sdk: &aws_config::SdkConfig,
) -> Result<Arc<dyn crate::relay::FailureSink>, crate::destination::DestinationError> {
    crate::destination::OnFailureDestination::new(arn, sdk).map(|d| Arc::new(d) as Arc<dyn crate::relay::FailureSink>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_events_and_empty_payloads_use_the_configured_source() {
        let scheduled = serde_json::json!({
            "version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-22T00:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/r"], "detail": {}
        });
        assert!(matches!(parse_payload(&scheduled), Ok(Payload::UseConfiguredSource)));
        assert!(matches!(parse_payload(&Value::Null), Ok(Payload::UseConfiguredSource)));
        assert!(matches!(parse_payload(&serde_json::json!({})), Ok(Payload::UseConfiguredSource)));
    }

    #[test]
    fn a_config_payload_is_parsed_strictly() {
        let ok = serde_json::json!({"Mappings": [{"FunctionName": "f", "Topics": ["t"], "StartingPosition": "LATEST",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["h:9092"]}}}]});
        match parse_payload(&ok) {
            Ok(Payload::Config(config)) => assert_eq!(config.mappings[0].function_name, "f"),
            other => panic!("unexpected {other:?}"),
        }
        let typo = serde_json::json!({"Mappings": [{"FunctionNme": "f"}]});
        assert!(parse_payload(&typo).unwrap_err().to_string().contains("FunctionNme"));
        assert!(parse_payload(&serde_json::json!({"hello": 1})).is_err());
    }
}
