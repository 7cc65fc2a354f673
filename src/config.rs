//! Mapping configuration: the fields of Lambda's `CreateEventSourceMapping` API, so users paste what they
//! already know (SPEC section 2).
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelled field is an error, never silently ignored.
//! [`RelayConfig::validate`] reports every violation at once, each naming the field, the bad value and the
//! allowed range; if any mapping is invalid, no mapping of that configuration starts polling.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The error code AWS uses for an invalid event source mapping configuration.
pub const ESM_CONFIG_NOT_VALID: &str = "ESM_CONFIG_NOT_VALID";

/// The whole configuration: `{"Mappings": [ ... ]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// One entry per event source mapping.
    #[serde(rename = "Mappings")]
    pub mappings: Vec<Mapping>,
}

/// One event source mapping: one Kafka cluster, topic(s) and consumer group feeding one target function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Identifies the mapping in logs, metrics, failure records and S3 keys. Derived from the function,
    /// topics and cluster when absent, so it is stable across runs.
    #[serde(rename = "UUID", default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Target function: name, ARN or partial ARN, with an optional qualifier.
    #[serde(rename = "FunctionName")]
    pub function_name: String,
    /// Topics to consume. AWS allows exactly one; the relay allows several.
    #[serde(rename = "Topics")]
    pub topics: Vec<String>,
    /// Bootstrap servers of a self-managed cluster.
    #[serde(rename = "SelfManagedEventSource", default, skip_serializing_if = "Option::is_none")]
    pub self_managed_event_source: Option<SelfManagedEventSource>,
    /// MSK cluster ARN; when set the event source is `aws:kafka`.
    #[serde(rename = "EventSourceArn", default, skip_serializing_if = "Option::is_none")]
    pub event_source_arn: Option<String>,
    /// Consumer group of a self-managed cluster.
    #[serde(rename = "SelfManagedKafkaEventSourceConfig", default, skip_serializing_if = "Option::is_none")]
    pub self_managed_kafka_event_source_config: Option<KafkaEventSourceConfig>,
    /// Consumer group of an MSK cluster.
    #[serde(rename = "AmazonManagedKafkaEventSourceConfig", default, skip_serializing_if = "Option::is_none")]
    pub amazon_managed_kafka_event_source_config: Option<KafkaEventSourceConfig>,
    /// Maximum records per invocation (AWS default 100, range 1-10000).
    #[serde(rename = "BatchSize", default = "default_batch_size")]
    pub batch_size: i64,
    /// How long to gather records before invoking; AWS uses 500 ms when the field is absent.
    #[serde(rename = "MaximumBatchingWindowInSeconds", default, skip_serializing_if = "Option::is_none")]
    pub maximum_batching_window_in_seconds: Option<i64>,
    /// Where to start when the group has no committed offset for a partition.
    #[serde(rename = "StartingPosition")]
    pub starting_position: Option<StartingPosition>,
    /// Unix seconds, required with `AT_TIMESTAMP`.
    #[serde(rename = "StartingPositionTimestamp", default, skip_serializing_if = "Option::is_none")]
    pub starting_position_timestamp: Option<f64>,
    /// Authentication, TLS and network placement (SPEC section 6).
    #[serde(rename = "SourceAccessConfigurations", default, skip_serializing_if = "Vec::is_empty")]
    pub source_access_configurations: Vec<SourceAccessConfiguration>,
    /// Where records the relay gives up on are written.
    #[serde(rename = "DestinationConfig", default, skip_serializing_if = "Option::is_none")]
    pub destination_config: Option<DestinationConfig>,
    /// Which of AWS's metric groups to emit (`EventCount`, `ErrorCount`, `KafkaMetrics`); without it only
    /// `OffsetLag` and the relay's `TimeLag` are emitted, as AWS emits only `OffsetLag` (see [`crate::metrics`]).
    #[serde(rename = "MetricsConfig", default, skip_serializing_if = "Option::is_none")]
    pub metrics_config: Option<MetricsConfig>,
    /// The mapping's log level (`SystemLogLevel`: `DEBUG`, `INFO` or `WARN`); without it the process's level
    /// applies.
    #[serde(rename = "LoggingConfig", default, skip_serializing_if = "Option::is_none")]
    pub logging_config: Option<LoggingConfig>,
    /// `["ReportBatchItemFailures"]` to honour partial batch responses.
    #[serde(rename = "FunctionResponseTypes", default, skip_serializing_if = "Vec::is_empty")]
    pub function_response_types: Vec<String>,
    /// Split a failed batch in two and retry each half.
    #[serde(rename = "BisectBatchOnFunctionError", default)]
    pub bisect_batch_on_function_error: bool,
    /// Retries after the first attempt; -1 is infinite (10 when a destination is set).
    #[serde(rename = "MaximumRetryAttempts", default = "default_infinite")]
    pub maximum_retry_attempts: i64,
    /// Records older than this are given up; -1 is infinite.
    #[serde(rename = "MaximumRecordAgeInSeconds", default = "default_infinite")]
    pub maximum_record_age_in_seconds: i64,
    /// Event filtering (EventBridge pattern syntax).
    #[serde(rename = "FilterCriteria", default, skip_serializing_if = "Option::is_none")]
    pub filter_criteria: Option<FilterCriteria>,
    /// A disabled mapping is skipped and reported as such.
    #[serde(rename = "Enabled", default = "default_enabled")]
    pub enabled: bool,
    /// Relay field, MSK mappings without endpoints only: which of the cluster's broker strings to use,
    /// `PRIVATE` (default), `PUBLIC` (public access) or `MULTI_VPC` (multi-VPC private connectivity, e.g. a
    /// cluster in another account).
    #[serde(rename = "MskConnectivity", default, skip_serializing_if = "Option::is_none")]
    pub msk_connectivity: Option<crate::auth::msk::Connectivity>,
    /// Provisioned mode: how many workers (AWS's event pollers) the mapping's scheduled run may start. Without
    /// it, the mapping scales like AWS's on-demand mode: 1 worker up to one per partition.
    #[serde(rename = "ProvisionedPollerConfig", default, skip_serializing_if = "Option::is_none")]
    pub provisioned_poller_config: Option<ProvisionedPollerConfig>,
    /// Not an AWS field: settings only this relay knows (see [`RelayExtensions`]). Absent, the mapping
    /// behaves exactly as AWS's.
    #[serde(rename = "RelayExtensions", default, skip_serializing_if = "Option::is_none")]
    pub relay_extensions: Option<RelayExtensions>,
}

/// `RelayExtensions`: this relay's own settings, kept apart from AWS's field names so a mapping copied from
/// (or to) AWS never changes meaning. Every setting here is off unless set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayExtensions {
    /// Deliver records whose event would exceed 6 MB through S3 instead of giving them up with
    /// `MaximumPayloadSizeExceeded` (see [`crate::destination::offload`]).
    #[serde(rename = "LargeRecordOffload", default, skip_serializing_if = "Option::is_none")]
    pub large_record_offload: Option<LargeRecordOffload>,
}

/// `RelayExtensions.LargeRecordOffload`: where oversized records are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LargeRecordOffload {
    /// The S3 bucket's name (3-63 of `[a-z0-9.-]`).
    #[serde(rename = "Bucket")]
    pub bucket: String,
    /// Prepended to every object key; `kafka-lambda-relay/large-records/` when absent.
    #[serde(rename = "KeyPrefix", default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

/// Longest `LargeRecordOffload.KeyPrefix`: S3 keys are at most 1024 bytes and the relay's part is ~400.
pub const MAX_OFFLOAD_KEY_PREFIX: usize = 512;

/// `ProvisionedPollerConfig` (Amazon MSK and self-managed Apache Kafka ranges). Here a poller is a worker:
/// one relay process (one Lambda invocation) in the mapping's consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionedPollerConfig {
    /// Fewest workers, 1-200; AWS's default 1.
    #[serde(rename = "MinimumPollers", default, skip_serializing_if = "Option::is_none")]
    pub minimum_pollers: Option<i64>,
    /// Most workers, 1-2000; AWS's default 200.
    #[serde(rename = "MaximumPollers", default, skip_serializing_if = "Option::is_none")]
    pub maximum_pollers: Option<i64>,
}

/// AWS's default `MinimumPollers`.
pub const DEFAULT_MINIMUM_POLLERS: u32 = 1;

/// AWS's default `MaximumPollers`.
pub const DEFAULT_MAXIMUM_POLLERS: u32 = 200;

impl ProvisionedPollerConfig {
    /// (minimum, maximum) workers with AWS's defaults filled in (valid once the mapping validated).
    pub fn limits(&self) -> (u32, u32) {
        let clamp = |n: i64| n.clamp(1, 2000) as u32;
        (
            self.minimum_pollers.map_or(DEFAULT_MINIMUM_POLLERS, clamp),
            self.maximum_pollers.map_or(DEFAULT_MAXIMUM_POLLERS, clamp),
        )
    }

    /// Every violation of AWS's ranges, as (field, message).
    fn violations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(min) = self.minimum_pollers.filter(|n| !(1..=200).contains(n)) {
            out.push(("ProvisionedPollerConfig.MinimumPollers".into(), format!("{min} is out of range; allowed 1-200")));
        }
        if let Some(max) = self.maximum_pollers.filter(|n| !(1..=2000).contains(n)) {
            out.push(("ProvisionedPollerConfig.MaximumPollers".into(), format!("{max} is out of range; allowed 1-2000")));
        }
        if out.is_empty() {
            let (min, max) = self.limits();
            if min > max {
                out.push((
                    "ProvisionedPollerConfig.MinimumPollers".into(),
                    format!("{min} is above MaximumPollers ({max}); it must be at most MaximumPollers"),
                ));
            }
        }
        out
    }
}

/// `SelfManagedEventSource`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfManagedEventSource {
    /// `{"KAFKA_BOOTSTRAP_SERVERS": ["host:port", ...]}`.
    #[serde(rename = "Endpoints")]
    pub endpoints: Endpoints,
}

/// `SelfManagedEventSource.Endpoints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// Broker addresses as `host:port`.
    #[serde(rename = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: Vec<String>,
}

/// `SelfManagedKafkaEventSourceConfig` / `AmazonManagedKafkaEventSourceConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaEventSourceConfig {
    /// Consumer group id, 1-200 characters.
    #[serde(rename = "ConsumerGroupId", default, skip_serializing_if = "Option::is_none")]
    pub consumer_group_id: Option<String>,
    /// Decode records through a schema registry before filtering (AWS's `KafkaSchemaRegistryConfig`).
    #[serde(rename = "SchemaRegistryConfig", default, skip_serializing_if = "Option::is_none")]
    pub schema_registry_config: Option<KafkaSchemaRegistryConfig>,
}

/// `SchemaRegistryConfig` (AWS's `KafkaSchemaRegistryConfig`): which registry decodes the records, how the
/// target receives them, and which parts (key, value) are decoded and validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSchemaRegistryConfig {
    /// A Glue registry ARN (`arn:aws:glue:<region>:<account>:registry/<name>`) or the URL of a
    /// Confluent-compatible registry; 1-10000 characters.
    #[serde(rename = "SchemaRegistryURI", default)]
    pub schema_registry_uri: String,
    /// `JSON` (decoded key/value as JSON) or `SOURCE` (the original bytes without the schema framing).
    #[serde(rename = "EventRecordFormat", default, skip_serializing_if = "Option::is_none")]
    pub event_record_format: Option<EventRecordFormat>,
    /// Secrets for a Confluent registry (`BASIC_AUTH`, `CLIENT_CERTIFICATE_TLS_AUTH`,
    /// `SERVER_ROOT_CA_CERTIFICATE`); none for Glue, which the relay's role reaches.
    #[serde(rename = "AccessConfigs", default, skip_serializing_if = "Vec::is_empty")]
    pub access_configs: Vec<KafkaSchemaRegistryAccessConfig>,
    /// Which record parts are decoded and validated: `[{"Attribute": "KEY"}, {"Attribute": "VALUE"}]`.
    #[serde(rename = "SchemaValidationConfigs", default, skip_serializing_if = "Vec::is_empty")]
    pub schema_validation_configs: Vec<KafkaSchemaValidationConfig>,
}

/// `EventRecordFormat` (AWS's `SchemaRegistryEventRecordFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventRecordFormat {
    /// The key/value decoded to JSON, base64-encoded in the event like any key/value.
    #[serde(rename = "JSON")]
    Json,
    /// The original bytes with the magic byte, schema id / Glue header (and Protobuf message indexes)
    /// removed.
    #[serde(rename = "SOURCE")]
    Source,
}

/// One `AccessConfigs` entry (AWS's `KafkaSchemaRegistryAccessConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSchemaRegistryAccessConfig {
    /// `BASIC_AUTH`, `CLIENT_CERTIFICATE_TLS_AUTH` or `SERVER_ROOT_CA_CERTIFICATE`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// The Secrets Manager secret ARN.
    #[serde(rename = "URI")]
    pub uri: String,
}

/// One `SchemaValidationConfigs` entry (AWS's `KafkaSchemaValidationConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSchemaValidationConfig {
    /// `KEY` or `VALUE`.
    #[serde(rename = "Attribute")]
    pub attribute: SchemaValidationAttribute,
}

/// `KafkaSchemaValidationConfig.Attribute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SchemaValidationAttribute {
    /// The record key.
    #[serde(rename = "KEY")]
    Key,
    /// The record value.
    #[serde(rename = "VALUE")]
    Value,
}

impl SchemaValidationAttribute {
    /// AWS's name: `KEY` or `VALUE`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaValidationAttribute::Key => "KEY",
            SchemaValidationAttribute::Value => "VALUE",
        }
    }
}

/// The `AccessConfigs` types the relay supports. AWS also documents `OAUTHBEARER_AUTH`, which the relay
/// does not implement and rejects by name.
pub const SCHEMA_REGISTRY_ACCESS_TYPES: &[&str] =
    &["BASIC_AUTH", "CLIENT_CERTIFICATE_TLS_AUTH", "SERVER_ROOT_CA_CERTIFICATE"];

/// AWS's length limit for `SchemaRegistryURI`.
pub const SCHEMA_REGISTRY_URI_MAX_LEN: usize = 10_000;

impl KafkaSchemaRegistryConfig {
    /// Whether `SchemaRegistryURI` names a Glue registry (else it is a Confluent-compatible URL).
    pub fn is_glue(&self) -> bool {
        self.schema_registry_uri.starts_with("arn:")
    }

    /// Whether `attribute` is listed in `SchemaValidationConfigs`.
    pub fn validates(&self, attribute: SchemaValidationAttribute) -> bool {
        self.schema_validation_configs.iter().any(|c| c.attribute == attribute)
    }

    /// Every violation, as (field under `SchemaRegistryConfig`, message).
    fn violations(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let uri = &self.schema_registry_uri;
        // AWS's pattern for the field: [a-zA-Z0-9-\/*:_+=.@-]*
        let pattern_ok = uri.chars().all(|c| c.is_ascii_alphanumeric() || "-/*:_+=.@".contains(c));
        if uri.is_empty() || uri.len() > SCHEMA_REGISTRY_URI_MAX_LEN {
            out.push((
                "SchemaRegistryURI",
                format!("has {} characters; allowed 1-10000 (a Glue registry ARN or a registry URL)", uri.len()),
            ));
        } else if !pattern_ok {
            out.push((
                "SchemaRegistryURI",
                format!("{uri:?} has characters outside AWS's pattern [a-zA-Z0-9-/*:_+=.@]"),
            ));
        } else if self.is_glue() {
            if glue_registry_arn(uri).is_none() {
                out.push((
                    "SchemaRegistryURI",
                    format!("{uri:?} is not a Glue registry ARN (arn:aws:glue:<region>:<account>:registry/<name>)"),
                ));
            }
        } else if !(uri.starts_with("https://") || uri.starts_with("http://"))
            || uri.split_once("://").is_some_and(|(_, rest)| rest.is_empty())
        {
            out.push((
                "SchemaRegistryURI",
                format!("{uri:?} is neither a Glue registry ARN nor an http(s) registry URL"),
            ));
        } else if uri.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().unwrap_or_default().contains('@')) {
            // Not quoted: the part before '@' is a credential.
            out.push((
                "SchemaRegistryURI",
                "carries credentials (user:password@host); put them in a BASIC_AUTH secret in AccessConfigs".into(),
            ));
        }
        if self.event_record_format.is_none() {
            out.push(("EventRecordFormat", "is required: JSON or SOURCE".into()));
        }
        if self.schema_validation_configs.is_empty() {
            out.push((
                "SchemaValidationConfigs",
                "is empty; list at least one of {\"Attribute\": \"KEY\"} and {\"Attribute\": \"VALUE\"}".into(),
            ));
        }
        for attribute in [SchemaValidationAttribute::Key, SchemaValidationAttribute::Value] {
            if self.schema_validation_configs.iter().filter(|c| c.attribute == attribute).count() > 1 {
                out.push((
                    "SchemaValidationConfigs",
                    format!("{} is listed more than once; allowed once", attribute.as_str()),
                ));
            }
        }
        if self.is_glue() && !self.access_configs.is_empty() {
            out.push((
                "AccessConfigs",
                "is set for a Glue registry; Glue is reached with the relay's role (glue:GetSchemaVersion), leave AccessConfigs empty".into(),
            ));
        }
        for entry in &self.access_configs {
            if !SCHEMA_REGISTRY_ACCESS_TYPES.contains(&entry.kind.as_str()) {
                out.push((
                    "AccessConfigs.Type",
                    format!("{:?} is not supported; allowed {}", entry.kind, SCHEMA_REGISTRY_ACCESS_TYPES.join(", ")),
                ));
            } else if !(entry.uri.starts_with("arn:") && entry.uri.contains(":secretsmanager:")) {
                out.push((
                    "AccessConfigs.URI",
                    format!(
                        "{:?} for {} is not a Secrets Manager secret ARN (arn:aws:secretsmanager:...)",
                        entry.uri, entry.kind
                    ),
                ));
            }
        }
        for kind in SCHEMA_REGISTRY_ACCESS_TYPES {
            if self.access_configs.iter().filter(|e| e.kind == *kind).count() > 1 {
                out.push(("AccessConfigs.Type", format!("{kind} is set more than once; allowed once")));
            }
        }
        out
    }
}

/// The region and registry name of a Glue registry ARN `arn:<partition>:glue:<region>:<account>:registry/<name>`.
pub fn glue_registry_arn(arn: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !parts[1].starts_with("aws") || parts[2] != "glue" {
        return None;
    }
    let name = parts[5].strip_prefix("registry/")?;
    let account_ok = parts[4].len() == 12 && parts[4].chars().all(|c| c.is_ascii_digit());
    (!parts[3].is_empty() && account_ok && !name.is_empty() && !name.contains('/')).then_some((parts[3], name))
}

/// `StartingPosition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartingPosition {
    /// New records only.
    Latest,
    /// The oldest record the broker still has.
    TrimHorizon,
    /// The first record at or after `StartingPositionTimestamp`.
    AtTimestamp,
}

/// One `SourceAccessConfigurations` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAccessConfiguration {
    /// `BASIC_AUTH`, `SASL_SCRAM_256_AUTH`, ...
    #[serde(rename = "Type")]
    pub kind: String,
    /// A Secrets Manager secret ARN, or `subnet:...` / `security_group:...` for VPC entries.
    #[serde(rename = "URI")]
    pub uri: String,
}

/// The `SourceAccessConfigurations` types AWS documents for Kafka.
pub const SOURCE_ACCESS_TYPES: &[&str] = &[
    "BASIC_AUTH",
    "SASL_SCRAM_256_AUTH",
    "SASL_SCRAM_512_AUTH",
    "CLIENT_CERTIFICATE_TLS_AUTH",
    "SERVER_ROOT_CA_CERTIFICATE",
    "VPC_SUBNET",
    "VPC_SECURITY_GROUP",
];

/// `DestinationConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Where failed batches go.
    #[serde(rename = "OnFailure", default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// `DestinationConfig.OnFailure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnFailure {
    /// SQS queue, SNS topic or S3 bucket ARN; `""` means none.
    #[serde(rename = "Destination", default)]
    pub destination: String,
}

/// `MetricsConfig` (AWS's `EventSourceMappingMetricsConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Metric groups to emit: any of [`METRIC_GROUPS`], at most 3 (AWS's limits).
    #[serde(rename = "Metrics", default)]
    pub metrics: Vec<String>,
}

/// The values AWS allows in `MetricsConfig.Metrics`.
pub const METRIC_GROUPS: &[&str] = &["EventCount", "ErrorCount", "KafkaMetrics"];

/// `LoggingConfig` (AWS's `EventSourceMappingLoggingConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `DEBUG`, `INFO` or `WARN` ([`SYSTEM_LOG_LEVELS`]): the most detailed level the mapping logs.
    #[serde(rename = "SystemLogLevel", default, skip_serializing_if = "Option::is_none")]
    pub system_log_level: Option<String>,
}

/// The values AWS allows in `LoggingConfig.SystemLogLevel`, most detailed first.
pub const SYSTEM_LOG_LEVELS: &[&str] = &["DEBUG", "INFO", "WARN"];

/// `FilterCriteria`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterCriteria {
    /// Up to 5 patterns, OR-ed.
    #[serde(rename = "Filters", default)]
    pub filters: Vec<Filter>,
}

/// One filter: an EventBridge pattern as a JSON string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The pattern, a JSON object serialized as a string (as in the AWS API).
    #[serde(rename = "Pattern")]
    pub pattern: String,
}

/// AWS's `CreateEventSourceMapping` default for Kafka.
fn default_batch_size() -> i64 {
    100
}

/// AWS's default for `MaximumRetryAttempts` and `MaximumRecordAgeInSeconds`: -1, infinite.
fn default_infinite() -> i64 {
    -1
}

/// A mapping is enabled unless it says otherwise, as in AWS.
fn default_enabled() -> bool {
    true
}

/// AWS's batching window when `MaximumBatchingWindowInSeconds` is absent.
pub const DEFAULT_BATCHING_WINDOW: Duration = Duration::from_millis(500);

/// AWS caps an invocation payload at 6 MB.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// `MaximumRetryAttempts` = -1 with a destination configured means this many retries.
pub const RETRIES_WITH_DESTINATION: u32 = 10;

/// One violation found by [`RelayConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which mapping, by index and UUID when known.
    pub mapping: String,
    /// The field, with its path (e.g. `DestinationConfig.OnFailure.Destination`).
    pub field: String,
    /// What is wrong, quoting the bad value and the allowed range.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.mapping, self.field, self.message)
    }
}

/// Reading or validating the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JSON did not parse or had unknown fields.
    #[error("{ESM_CONFIG_NOT_VALID}: configuration does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    /// The file could not be read.
    #[error("{ESM_CONFIG_NOT_VALID}: cannot read configuration file {path:?}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither the payload, `RELAY_CONFIG` nor `RELAY_CONFIG_FILE` held a configuration.
    #[error("{ESM_CONFIG_NOT_VALID}: no configuration: pass one in the invocation payload, RELAY_CONFIG (inline JSON) or RELAY_CONFIG_FILE (a path)")]
    Missing,
    /// One or more fields are out of range.
    #[error("{ESM_CONFIG_NOT_VALID}: {} violation(s):\n{}", .0.len(), .0.iter().map(|v| format!("  - {v}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Violation>),
}

impl RelayConfig {
    /// Parses JSON text strictly.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Reads `RELAY_CONFIG` (inline JSON) or else `RELAY_CONFIG_FILE` (a path).
    pub fn from_env() -> Result<Self, ConfigError> {
        if let Ok(text) = std::env::var("RELAY_CONFIG") {
            if !text.trim().is_empty() {
                return Self::from_json(&text);
            }
        }
        if let Ok(path) = std::env::var("RELAY_CONFIG_FILE") {
            if !path.trim().is_empty() {
                return Self::from_file(Path::new(&path));
            }
        }
        Err(ConfigError::Missing)
    }

    /// Parses and validates; the error lists every violation.
    pub fn parse_valid(text: &str) -> Result<Self, ConfigError> {
        let config = Self::from_json(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every mapping and reports all violations at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut violations = Vec::new();
        if self.mappings.is_empty() {
            violations.push(Violation {
                mapping: "configuration".into(),
                field: "Mappings".into(),
                message: "is empty; at least one mapping is required".into(),
            });
        }
        let mut seen_uuids = BTreeSet::new();
        // Consumer group → the first mapping using it, by label.
        let mut groups: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        for (index, mapping) in self.mappings.iter().enumerate() {
            let label = match &mapping.uuid {
                Some(uuid) => format!("Mappings[{index}] ({})", quote(uuid)),
                None => format!("Mappings[{index}]"),
            };
            for (field, message) in mapping.violations() {
                violations.push(Violation { mapping: label.clone(), field, message });
            }
            if !seen_uuids.insert(mapping.uuid()) {
                violations.push(Violation {
                    mapping: label.clone(),
                    field: "UUID".into(),
                    message: format!(
                        "{} is used by another mapping; each mapping needs its own",
                        quote(&mapping.uuid())
                    ),
                });
            }
            // AWS: "The consumer group ID must be unique among all your Kafka event sources." Two mappings in
            // one group take each other's partitions: each sees part of its topics and both keep rebalancing.
            let group = mapping.consumer_group_id();
            match groups.get(&group) {
                Some(first) => violations.push(Violation {
                    mapping: label.clone(),
                    field: mapping.consumer_group_field().into(),
                    message: format!(
                        "consumer group {} is also used by {first}; each mapping needs its own consumer group, as in AWS",
                        quote(&group)
                    ),
                }),
                None => {
                    groups.insert(group, label.clone());
                }
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(violations))
        }
    }
}

impl Mapping {
    /// The mapping's UUID: the configured one, or a name-based UUID (v5) over the function, topics and
    /// cluster, so the same mapping keeps the same id (and default consumer group) across runs.
    pub fn uuid(&self) -> String {
        if let Some(uuid) = &self.uuid {
            return uuid.clone();
        }
        let seed = format!(
            "{}|{}|{}|{}",
            self.function_name,
            self.topics.join(","),
            self.bootstrap_servers().join(","),
            self.event_source_arn.clone().unwrap_or_default()
        );
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, seed.as_bytes()).to_string()
    }

    /// The consumer group: the configured id, else the mapping's UUID (AWS's default).
    pub fn consumer_group_id(&self) -> String {
        self.self_managed_kafka_event_source_config
            .as_ref()
            .or(self.amazon_managed_kafka_event_source_config.as_ref())
            .and_then(|c| c.consumer_group_id.clone())
            .unwrap_or_else(|| self.uuid())
    }

    /// The field that sets the consumer group (the configured one, or where it would be set).
    fn consumer_group_field(&self) -> &'static str {
        if self.amazon_managed_kafka_event_source_config.is_some()
            && self.self_managed_kafka_event_source_config.is_none()
        {
            "AmazonManagedKafkaEventSourceConfig.ConsumerGroupId"
        } else {
            "SelfManagedKafkaEventSourceConfig.ConsumerGroupId"
        }
    }

    /// The schema registry configuration, from whichever of the two Kafka source configs is set.
    pub fn schema_registry_config(&self) -> Option<&KafkaSchemaRegistryConfig> {
        self.self_managed_kafka_event_source_config
            .as_ref()
            .or(self.amazon_managed_kafka_event_source_config.as_ref())
            .and_then(|c| c.schema_registry_config.as_ref())
    }

    /// Bootstrap servers as configured (empty for an MSK mapping without endpoints).
    pub fn bootstrap_servers(&self) -> Vec<String> {
        self.self_managed_event_source
            .as_ref()
            .map(|s| s.endpoints.kafka_bootstrap_servers.clone())
            .unwrap_or_default()
    }

    /// `aws:kafka` for an MSK mapping, else `SelfManagedKafka`.
    pub fn event_source(&self) -> &'static str {
        if self.is_msk() {
            "aws:kafka"
        } else {
            "SelfManagedKafka"
        }
    }

    /// Whether `EventSourceArn` names an MSK cluster.
    pub fn is_msk(&self) -> bool {
        self.event_source_arn.as_deref().is_some_and(is_msk_arn)
    }

    /// The batching window: the configured seconds, else AWS's 500 ms.
    pub fn batching_window(&self) -> Duration {
        match self.maximum_batching_window_in_seconds {
            Some(seconds) => Duration::from_secs(seconds.max(0) as u64),
            None => DEFAULT_BATCHING_WINDOW,
        }
    }

    /// Whether the target may answer with `batchItemFailures`.
    pub fn reports_batch_item_failures(&self) -> bool {
        self.function_response_types.iter().any(|t| t == "ReportBatchItemFailures")
    }

    /// `RelayExtensions.LargeRecordOffload`, when set: oversized records go through S3.
    pub fn large_record_offload(&self) -> Option<&LargeRecordOffload> {
        self.relay_extensions.as_ref().and_then(|e| e.large_record_offload.as_ref())
    }

    /// The on-failure destination ARN, if any (`""` means none).
    pub fn destination(&self) -> Option<&str> {
        self.destination_config
            .as_ref()
            .and_then(|d| d.on_failure.as_ref())
            .map(|o| o.destination.as_str())
            .filter(|d| !d.is_empty())
    }

    /// Retries after the first attempt; `None` is infinite. AWS: -1 with a destination means 10.
    pub fn retry_limit(&self) -> Option<u32> {
        match self.maximum_retry_attempts {
            -1 if self.destination().is_some() => Some(RETRIES_WITH_DESTINATION),
            -1 => None,
            n => Some(n.clamp(0, u32::MAX as i64) as u32),
        }
    }

    /// Maximum record age; `None` is infinite.
    pub fn max_record_age(&self) -> Option<Duration> {
        (self.maximum_record_age_in_seconds >= 0)
            .then(|| Duration::from_secs(self.maximum_record_age_in_seconds as u64))
    }

    /// The metric groups `MetricsConfig` selects (valid names only, each once, in [`METRIC_GROUPS`] order).
    pub fn metric_groups(&self) -> Vec<&'static str> {
        let chosen = self.metrics_config.as_ref().map(|c| c.metrics.as_slice()).unwrap_or_default();
        METRIC_GROUPS.iter().copied().filter(|group| chosen.iter().any(|c| c == group)).collect()
    }

    /// `LoggingConfig.SystemLogLevel`, when set to one of [`SYSTEM_LOG_LEVELS`].
    pub fn system_log_level(&self) -> Option<&'static str> {
        let level = self.logging_config.as_ref()?.system_log_level.as_deref()?;
        SYSTEM_LOG_LEVELS.iter().copied().find(|l| *l == level)
    }

    /// Violations of `MetricsConfig` and `LoggingConfig`, with AWS's allowed values and limits.
    fn operations_violations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(config) = &self.metrics_config {
            if config.metrics.len() > METRIC_GROUPS.len() {
                out.push((
                    "MetricsConfig.Metrics".to_string(),
                    format!("has {} entries; allowed at most {}", config.metrics.len(), METRIC_GROUPS.len()),
                ));
            }
            for (index, metric) in config.metrics.iter().enumerate() {
                if !METRIC_GROUPS.contains(&metric.as_str()) {
                    out.push((
                        "MetricsConfig.Metrics".to_string(),
                        format!("{metric:?} is not a metric group; allowed {}", METRIC_GROUPS.join(", ")),
                    ));
                } else if config.metrics[..index].contains(metric) {
                    out.push(("MetricsConfig.Metrics".to_string(), format!("{metric:?} is listed twice")));
                }
            }
        }
        if let Some(level) = self.logging_config.as_ref().and_then(|c| c.system_log_level.as_ref()) {
            if !SYSTEM_LOG_LEVELS.contains(&level.as_str()) {
                out.push((
                    "LoggingConfig.SystemLogLevel".to_string(),
                    format!("{level:?} is not a log level; allowed {}", SYSTEM_LOG_LEVELS.join(", ")),
                ));
            }
        }
        out
    }

    /// Every violation in this mapping, as (field, message).
    fn violations(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut bad = |field: &str, message: String| out.push((field.to_string(), message));

        if let Some(uuid) = &self.uuid {
            if !is_uuid(uuid) {
                bad(
                    "UUID",
                    format!(
                        "{} is not a UUID (8-4-4-4-12 hexadecimal digits, as AWS assigns); omit it to derive one",
                        quote(uuid)
                    ),
                );
            }
        }
        if let Err(problem) = check_function_name(&self.function_name) {
            bad("FunctionName", problem);
        }
        if self.topics.is_empty() {
            bad("Topics", "is empty; at least one topic is required".into());
        } else if self.topics.len() > MAX_TOPICS {
            bad("Topics", format!("has {} topics; allowed at most {MAX_TOPICS}", self.topics.len()));
        }
        let mut seen_topics = BTreeSet::new();
        for topic in &self.topics {
            if !is_topic_name(topic) {
                bad(
                    "Topics",
                    format!(
                        "{} is not a Kafka topic name (1-249 of [a-zA-Z0-9._-], not \".\" or \"..\")",
                        quote(topic)
                    ),
                );
            } else if !seen_topics.insert(topic.as_str()) {
                // librdkafka refuses a subscription that names a topic twice ("Invalid argument").
                bad("Topics", format!("{} is listed more than once; list each topic once", quote(topic)));
            }
        }

        match &self.event_source_arn {
            Some(arn) if !is_msk_arn(arn) => bad(
                "EventSourceArn",
                format!("{} is not an MSK cluster ARN (arn:aws:kafka:<region>:<account>:cluster/...)", quote(arn)),
            ),
            _ => {}
        }
        let servers = self.bootstrap_servers();
        if servers.is_empty() && !self.is_msk() {
            // An MSK mapping without endpoints gets its brokers from kafka:GetBootstrapBrokers (auth::msk).
            bad(
                "SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS",
                "is required: one or more host:port (or an MSK cluster ARN in EventSourceArn)".into(),
            );
        }
        if let Some(connectivity) = self.msk_connectivity {
            if !self.is_msk() || !servers.is_empty() {
                bad(
                    "MskConnectivity",
                    format!(
                        "{connectivity:?} is only used for an MSK mapping (EventSourceArn) without SelfManagedEventSource endpoints; remove it"
                    ),
                );
            }
        }
        if servers.len() > MAX_BOOTSTRAP_SERVERS {
            bad(
                "SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS",
                format!("has {} servers; allowed at most {MAX_BOOTSTRAP_SERVERS}", servers.len()),
            );
        }
        for server in &servers {
            if !is_bootstrap_server(server) {
                bad(
                    "SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS",
                    format!(
                        "{} is not host:port (a DNS name or IPv4 address, a port 1-65535, at most 300 characters)",
                        quote(server)
                    ),
                );
            }
        }

        if self.self_managed_kafka_event_source_config.is_some() && self.amazon_managed_kafka_event_source_config.is_some() {
            bad(
                "AmazonManagedKafkaEventSourceConfig",
                "is set together with SelfManagedKafkaEventSourceConfig; set only one".into(),
            );
        }
        for (field, config) in [
            ("SelfManagedKafkaEventSourceConfig.ConsumerGroupId", &self.self_managed_kafka_event_source_config),
            ("AmazonManagedKafkaEventSourceConfig.ConsumerGroupId", &self.amazon_managed_kafka_event_source_config),
        ] {
            if let Some(group) = config.as_ref().and_then(|c| c.consumer_group_id.as_ref()) {
                let length = group.chars().count();
                if !(1..=200).contains(&length) {
                    bad(field, format!("{} has {length} characters; allowed 1-200", quote(group)));
                } else if !group.chars().all(is_group_char) {
                    bad(
                        field,
                        format!(
                            "{} is not a consumer group ID; allowed characters a-z A-Z 0-9 and -/*:_+=.@",
                            quote(group)
                        ),
                    );
                }
            }
        }

        for (prefix, config) in [
            ("SelfManagedKafkaEventSourceConfig.SchemaRegistryConfig", &self.self_managed_kafka_event_source_config),
            (
                "AmazonManagedKafkaEventSourceConfig.SchemaRegistryConfig",
                &self.amazon_managed_kafka_event_source_config,
            ),
        ] {
            if let Some(registry) = config.as_ref().and_then(|c| c.schema_registry_config.as_ref()) {
                for (field, message) in registry.violations() {
                    bad(&format!("{prefix}.{field}"), message);
                }
            }
        }

        if !(1..=10_000).contains(&self.batch_size) {
            bad("BatchSize", format!("{} is out of range; allowed 1-10000", self.batch_size));
        }
        if let Some(window) = self.maximum_batching_window_in_seconds {
            if !(0..=300).contains(&window) {
                bad("MaximumBatchingWindowInSeconds", format!("{window} is out of range; allowed 0-300"));
            }
        }
        match (self.starting_position, self.starting_position_timestamp) {
            (None, _) => bad("StartingPosition", "is required: LATEST, TRIM_HORIZON or AT_TIMESTAMP".into()),
            (Some(StartingPosition::AtTimestamp), None) => {
                bad("StartingPositionTimestamp", "is required with StartingPosition AT_TIMESTAMP".into())
            }
            (Some(StartingPosition::AtTimestamp), Some(ts)) if !(ts.is_finite() && ts >= 0.0) => {
                bad("StartingPositionTimestamp", format!("{ts} is not a Unix time in seconds (>= 0)"))
            }
            (Some(position), Some(ts)) if position != StartingPosition::AtTimestamp => bad(
                "StartingPositionTimestamp",
                format!("{ts} is set but StartingPosition is {position:?}; it is only allowed with AT_TIMESTAMP"),
            ),
            _ => {}
        }

        if self.source_access_configurations.len() > MAX_SOURCE_ACCESS_CONFIGURATIONS {
            bad(
                "SourceAccessConfigurations",
                format!(
                    "has {} entries; allowed at most {MAX_SOURCE_ACCESS_CONFIGURATIONS}",
                    self.source_access_configurations.len()
                ),
            );
        }
        for entry in &self.source_access_configurations {
            if !SOURCE_ACCESS_TYPES.contains(&entry.kind.as_str()) {
                bad(
                    "SourceAccessConfigurations.Type",
                    format!("{} is not supported; allowed {}", quote(&entry.kind), SOURCE_ACCESS_TYPES.join(", ")),
                );
                continue;
            }
            let uri_ok = is_access_uri(&entry.uri)
                && match entry.kind.as_str() {
                    "VPC_SUBNET" => entry.uri.starts_with("subnet:subnet-"),
                    "VPC_SECURITY_GROUP" => entry.uri.starts_with("security_group:sg-"),
                    _ => is_secret_arn(&entry.uri),
                };
            if !uri_ok {
                let expected = match entry.kind.as_str() {
                    "VPC_SUBNET" => "subnet:subnet-<id>",
                    "VPC_SECURITY_GROUP" => "security_group:sg-<id>",
                    _ => "a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)",
                };
                bad(
                    "SourceAccessConfigurations.URI",
                    format!("{} for {} is not {expected}", quote(&entry.uri), entry.kind),
                );
            }
        }
        let sasl: Vec<&str> = self
            .source_access_configurations
            .iter()
            .map(|e| e.kind.as_str())
            .filter(|k| matches!(*k, "BASIC_AUTH" | "SASL_SCRAM_256_AUTH" | "SASL_SCRAM_512_AUTH"))
            .collect();
        if sasl.len() > 1 {
            bad(
                "SourceAccessConfigurations.Type",
                format!("{} are set together; choose one SASL mechanism", sasl.join(" and ")),
            );
        }
        let duplicates_of = |kind: &str| self.source_access_configurations.iter().filter(|e| e.kind == kind).count() > 1;
        for kind in ["CLIENT_CERTIFICATE_TLS_AUTH", "SERVER_ROOT_CA_CERTIFICATE"] {
            if duplicates_of(kind) {
                bad("SourceAccessConfigurations.Type", format!("{kind} is set more than once; allowed once"));
            }
        }

        if let Err(error) = crate::auth::validate(self) {
            // Only reached when the entries themselves are well-formed: e.g. a bootstrap server whose
            // protocol prefix contradicts the chosen authentication.
            if out.is_empty() {
                out.push(("SourceAccessConfigurations".to_string(), error.sentence));
            }
        }
        let mut bad = |field: &str, message: String| out.push((field.to_string(), message));
        if let Some(destination) = self.destination() {
            if destination_kind(destination).is_none() {
                bad(
                    "DestinationConfig.OnFailure.Destination",
                    format!(
                        "{} is not an SQS queue, SNS topic or S3 bucket ARN, nor kafka://<topic> (or \"\" for none)",
                        quote(destination)
                    ),
                );
            }
            // AWS refuses a Kafka destination that is one of the source topics: records would loop.
            if let Some(topic) = kafka_destination_topic(destination).filter(|t| self.topics.iter().any(|s| s == t)) {
                bad(
                    "DestinationConfig.OnFailure.Destination",
                    format!("{} is one of the mapping's Topics; the failure topic must be another topic", quote(topic)),
                );
            }
        }
        if let Some(offload) = self.relay_extensions.as_ref().and_then(|e| e.large_record_offload.as_ref()) {
            if !is_bucket_name(&offload.bucket) {
                bad(
                    "RelayExtensions.LargeRecordOffload.Bucket",
                    format!("{} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')", quote(&offload.bucket)),
                );
            }
            if offload.key_prefix.as_ref().is_some_and(|p| p.len() > MAX_OFFLOAD_KEY_PREFIX) {
                bad(
                    "RelayExtensions.LargeRecordOffload.KeyPrefix",
                    format!("is longer than {MAX_OFFLOAD_KEY_PREFIX} bytes"),
                );
            }
        }
        for response_type in &self.function_response_types {
            if response_type != "ReportBatchItemFailures" {
                bad(
                    "FunctionResponseTypes",
                    format!("{} is not supported; allowed [\"ReportBatchItemFailures\"]", quote(response_type)),
                );
            }
        }
        if !(self.maximum_retry_attempts == -1 || (0..=10_000).contains(&self.maximum_retry_attempts)) {
            bad(
                "MaximumRetryAttempts",
                format!("{} is out of range; allowed -1 (infinite) or 0-10000", self.maximum_retry_attempts),
            );
        }
        if !(self.maximum_record_age_in_seconds == -1 || (60..=604_800).contains(&self.maximum_record_age_in_seconds)) {
            bad(
                "MaximumRecordAgeInSeconds",
                format!("{} is out of range; allowed -1 (infinite) or 60-604800", self.maximum_record_age_in_seconds),
            );
        }
        if let Some(criteria) = &self.filter_criteria {
            if criteria.filters.len() > crate::filter::MAX_PATTERNS {
                bad(
                    "FilterCriteria.Filters",
                    format!("has {} patterns; allowed at most {}", criteria.filters.len(), crate::filter::MAX_PATTERNS),
                );
            }
            for filter in &criteria.filters {
                if let Err(error) = crate::filter::Pattern::parse(&filter.pattern) {
                    bad(
                        "FilterCriteria.Filters[].Pattern",
                        format!("{} is not a valid pattern: {error}", quote(&filter.pattern)),
                    );
                }
            }
        }
        if let Some(pollers) = &self.provisioned_poller_config {
            out.extend(pollers.violations());
        }
        out.extend(self.operations_violations());
        out
    }
}

/// What kind of on-failure destination an ARN names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    /// `arn:aws:sqs:region:account:queue`
    Sqs,
    /// `arn:aws:sns:region:account:topic`
    Sns,
    /// `arn:aws:s3:::bucket`
    S3,
    /// `kafka://<topic>`: a topic on the mapping's own cluster.
    Kafka,
}

/// The topic of a Kafka on-failure destination (`kafka://<topic>`, AWS's form), when `destination` is one.
pub fn kafka_destination_topic(destination: &str) -> Option<&str> {
    destination.strip_prefix("kafka://").filter(|topic| is_kafka_topic_name(topic))
}

/// A Kafka topic name: 1-249 of `[a-zA-Z0-9._-]`, neither `.` nor `..`.
fn is_kafka_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Classifies a destination ARN; `None` when it is none of SQS, SNS or S3, or breaks that service's naming
/// rules. The same check decides `validate` and the run's destination client, so a destination `validate`
/// accepts is one the run can use.
pub fn destination_kind(arn: &str) -> Option<DestinationKind> {
    if arn.len() > MAX_DESTINATION_ARN_CHARS {
        return None;
    }
    if arn.starts_with("kafka://") {
        return kafka_destination_topic(arn).map(|_| DestinationKind::Kafka);
    }
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !is_partition(parts[1]) {
        return None;
    }
    let (region, account, resource) = (parts[3], parts[4], parts[5]);
    match parts[2] {
        // SQS: 1-80 of [a-zA-Z0-9_-], with a `.fifo` suffix for FIFO queues.
        "sqs" if is_region(region) && is_account(account) && is_queue_or_topic_name(resource, 80) => {
            Some(DestinationKind::Sqs)
        }
        // SNS: 1-256 of [a-zA-Z0-9_-], with a `.fifo` suffix for FIFO topics.
        "sns" if is_region(region) && is_account(account) && is_queue_or_topic_name(resource, 256) => {
            Some(DestinationKind::Sns)
        }
        // S3 bucket ARNs have neither region nor account.
        "s3" if region.is_empty() && account.is_empty() && is_bucket_name(resource) => Some(DestinationKind::S3),
        _ => None,
    }
}

fn is_msk_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    (12..=1024).contains(&arn.len())
        && parts.len() == 6
        && parts[0] == "arn"
        && is_partition(parts[1])
        && parts[2] == "kafka"
        && is_region(parts[3])
        && is_account(parts[4])
        && parts[5].strip_prefix("cluster/").is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_control))
}

// ---------------------------------------------------------------------------------------------------------
// AWS's input constraints (the `CreateEventSourceMapping` API reference and the Kafka protocol), checked by
// hand: each function states the rule it enforces. Every bad value reaches an error message only through
// [`quote`].
// ---------------------------------------------------------------------------------------------------------

/// At most this many characters of a bad value are quoted in an error message.
pub const QUOTED_CHARS: usize = 48;

/// The relay's limit on `Topics` (AWS allows exactly one; the relay reads several with one group).
pub const MAX_TOPICS: usize = 5000;

/// AWS: `Endpoints.KAFKA_BOOTSTRAP_SERVERS` holds 1-10 servers.
pub const MAX_BOOTSTRAP_SERVERS: usize = 10;

/// AWS: `SourceAccessConfigurations` holds at most 22 entries.
pub const MAX_SOURCE_ACCESS_CONFIGURATIONS: usize = 22;

/// AWS: `DestinationConfig.OnFailure.Destination` is at most 350 characters.
pub const MAX_DESTINATION_ARN_CHARS: usize = 350;

/// `value` for an error message: Rust-escaped and quoted (control characters and NUL become `\n`, `\0`,
/// `\u{..}`), cut to its first [`QUOTED_CHARS`] characters with the full length said, so a megabyte of input
/// never becomes a megabyte of log.
pub fn quote(value: &str) -> String {
    let count = value.chars().count();
    if count <= QUOTED_CHARS {
        format!("{value:?}")
    } else {
        let prefix: String = value.chars().take(QUOTED_CHARS).collect();
        format!("{prefix:?}... ({count} characters)")
    }
}

/// A UUID as AWS writes one: 8-4-4-4-12 hexadecimal digits.
fn is_uuid(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(
            |(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            },
        )
}

/// Kafka's topic name rule: 1-249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
fn is_topic_name(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// AWS's `ConsumerGroupId` (and `SourceAccessConfigurations.URI`) characters: `[a-zA-Z0-9-\/*:_+=.@-]`.
fn is_group_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '*' | ':' | '_' | '+' | '=' | '.' | '@')
}

/// AWS's `SourceAccessConfigurations.URI`: 1-200 of `[a-zA-Z0-9-\/*:_+=.@-]`.
fn is_access_uri(uri: &str) -> bool {
    (1..=200).contains(&uri.len()) && uri.chars().all(is_group_char)
}

/// A Secrets Manager secret ARN: `arn:<partition>:secretsmanager:<region>:<12 digits>:secret:<name>`.
fn is_secret_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && is_partition(parts[1])
        && parts[2] == "secretsmanager"
        && is_region(parts[3])
        && is_account(parts[4])
        && parts[5].strip_prefix("secret:").is_some_and(|name| !name.is_empty())
}

/// An ARN partition: `aws`, `aws-cn`, `aws-us-gov`, ... (AWS: `aws[a-zA-Z0-9-]*`).
fn is_partition(partition: &str) -> bool {
    partition.strip_prefix("aws").is_some_and(|rest| rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// A region as AWS's patterns have it: `(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}`.
fn is_region(region: &str) -> bool {
    let region = region.strip_prefix("eusc-").unwrap_or(region);
    let parts: Vec<&str> = region.split('-').collect();
    let letters = |s: &str, exact: Option<usize>| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase()) && exact.is_none_or(|n| s.len() == n)
    };
    let digit = |s: &str| s.len() == 1 && s.chars().all(|c| c.is_ascii_digit());
    match parts.as_slice() {
        [area, name, number] => letters(area, Some(2)) && letters(name, None) && digit(number),
        [area, special, name, number] => {
            let special_ok = *special == "gov"
                || special
                    .strip_prefix("iso")
                    .is_some_and(|r| r.len() <= 1 && r.chars().all(|c| c.is_ascii_lowercase()));
            letters(area, Some(2)) && special_ok && letters(name, None) && digit(number)
        }
        _ => false,
    }
}

/// A 12-digit AWS account ID.
fn is_account(account: &str) -> bool {
    account.len() == 12 && account.chars().all(|c| c.is_ascii_digit())
}

/// An SQS queue or SNS topic name: 1-`max` of `[a-zA-Z0-9_-]`, the `.fifo` suffix included in the count.
fn is_queue_or_topic_name(name: &str, max: usize) -> bool {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    (1..=max).contains(&name.len())
        && !stem.is_empty()
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// An S3 bucket name: 3-63 of `[a-z0-9.-]`, starting and ending with a letter or digit, no `..`.
fn is_bucket_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))
        && edge(name.chars().next())
        && edge(name.chars().last())
        && !name.contains("..")
}

/// AWS's bootstrap server pattern, a DNS name or IPv4 address and a port:
/// `(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9]):[0-9]{1,5}`,
/// 1-300 characters, with the port in 1-65535. A librdkafka `protocol://` prefix is allowed in front (the
/// auth module refuses one that disagrees with `SourceAccessConfigurations`).
fn is_bootstrap_server(server: &str) -> bool {
    if !(1..=300).contains(&server.len()) {
        return false;
    }
    let address = match server.split_once("://") {
        Some((protocol, rest))
            if !protocol.is_empty() && protocol.chars().all(|c| c.is_ascii_alphabetic() || c == '_') =>
        {
            rest
        }
        Some(_) => return false,
        None => server,
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (1..=5).contains(&port.len())
        && port.chars().all(|c| c.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65_535).contains(&p))
        && host.split('.').all(label_ok)
}

/// Checks `FunctionName` against AWS's pattern (a name, a partial or full ARN, each with an optional
/// version or alias) and lengths (1-140 in all, the name itself 1-64):
/// `(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?`
fn check_function_name(value: &str) -> Result<(), String> {
    let length = value.chars().count();
    if value.trim().is_empty() {
        return Err("is required (a function name, ARN or partial ARN)".into());
    }
    if length > 140 {
        return Err(format!("{} has {length} characters; allowed 1-140", quote(value)));
    }
    if !function_name_matches(value) {
        return Err(format!(
            "{} is not a function name (1-64 of [a-zA-Z0-9-_]), partial ARN (123456789012:function:name) or function ARN (arn:aws:lambda:<region>:<account>:function:name), with an optional :version or :alias",
            quote(value)
        ));
    }
    Ok(())
}

/// Whether the `:`-separated parts of `value` follow AWS's `FunctionName` pattern, with the name at most 64
/// characters. The pattern's optional groups are tried in order, backtracking where a part could be read two
/// ways (`us-east-1` is a valid function name and a region).
fn function_name_matches(value: &str) -> bool {
    let parts: Vec<&str> = value.split(':').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["arn", partition, "lambda", rest @ ..] if partition.is_empty() || is_partition_letters(partition) => rest,
        _ => &parts,
    };
    let name_chars = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    let steps: [&dyn Fn(&str) -> bool; 3] = [&is_region, &is_account, &|s: &str| s == "function"];
    fn tail(parts: &[&str], name_chars: &dyn Fn(&str) -> bool) -> bool {
        match parts {
            [name] => name_chars(name) && name.len() <= 64,
            [name, qualifier] => {
                name_chars(name)
                    && name.len() <= 64
                    && (*qualifier == "$LATEST" || *qualifier == "$LATEST.PUBLISHED" || name_chars(qualifier))
            }
            _ => false,
        }
    }
    fn from(parts: &[&str], steps: &[&dyn Fn(&str) -> bool], name_chars: &dyn Fn(&str) -> bool) -> bool {
        match steps.split_first() {
            None => tail(parts, name_chars),
            Some((step, later)) => {
                (parts.first().is_some_and(|p| step(p)) && from(&parts[1..], later, name_chars))
                    || from(parts, later, name_chars)
            }
        }
    }
    from(rest, &steps, &name_chars)
}

/// The partition in a function ARN: `aws[a-zA-Z-]*`.
fn is_partition_letters(partition: &str) -> bool {
    partition.strip_prefix("aws").is_some_and(|rest| rest.chars().all(|c| c.is_ascii_alphabetic() || c == '-'))
}

/// Why a run of `run_length` cannot deliver anything to a target whose timeout is `target_timeout`, or `None`
/// when it can.
///
/// An invocation starts only if it can finish before the run ends with `margin` left for the final commit
/// (the engine's invoke cutoff is `deadline - (target timeout + margin)`); a run shorter than that starts no
/// invocation at all, so records would wait while the report said nothing was there to do. The sentence
/// names both lengths and what to change; the engine reports it as a `PROBLEM`, `validate` and
/// `run --check` as a warning.
pub fn run_length_problem(run_length: Duration, target_timeout: Duration, margin: Duration) -> Option<String> {
    if run_length > target_timeout + margin {
        return None;
    }
    Some(format!(
        "the run lasts {} but the target function's timeout is {} (plus {} kept for the final commit): no invocation can finish within the run, so none is started; make the run longer (--max-seconds, RELAY_MAX_SECONDS or the relay's own Lambda timeout) or the target's timeout shorter",
        seconds(run_length),
        seconds(target_timeout),
        seconds(margin)
    ))
}

/// `15 s`, `2.5 s`.
fn seconds(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{} s", millis / 1000)
    } else {
        format!("{} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "FunctionName": "target",
            "Topics": ["orders"],
            "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1:9092"]}}
        })
    }

    fn config_with(mapping: serde_json::Value) -> RelayConfig {
        serde_json::from_value(serde_json::json!({ "Mappings": [mapping] })).expect("parses")
    }

    fn violations(mapping: serde_json::Value) -> Vec<Violation> {
        match config_with(mapping).validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(v)) => v,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn minimal_mapping_gets_aws_defaults() {
        let config = config_with(minimal());
        config.validate().unwrap();
        let m = &config.mappings[0];
        assert_eq!(m.batch_size, 100);
        assert_eq!(m.batching_window(), Duration::from_millis(500));
        assert_eq!(m.retry_limit(), None);
        assert_eq!(m.max_record_age(), None);
        assert!(m.enabled);
        assert_eq!(m.event_source(), "SelfManagedKafka");
        assert_eq!(m.consumer_group_id(), m.uuid());
    }

    #[test]
    fn derived_uuid_is_stable_and_distinct() {
        let a = config_with(minimal()).mappings[0].uuid();
        assert_eq!(a, config_with(minimal()).mappings[0].uuid());
        let mut other = minimal();
        other["Topics"] = serde_json::json!(["payments"]);
        assert_ne!(a, config_with(other).mappings[0].uuid());
    }

    #[test]
    fn unknown_field_is_an_error() {
        let mut m = minimal();
        m["BatchSzie"] = serde_json::json!(10);
        let err = RelayConfig::parse_valid(&serde_json::json!({"Mappings": [m]}).to_string()).unwrap_err();
        assert!(err.to_string().contains("BatchSzie"), "{err}");
    }

    #[test]
    fn every_violation_is_listed_with_field_value_and_range() {
        let mut m = minimal();
        m["BatchSize"] = serde_json::json!(0);
        m["MaximumBatchingWindowInSeconds"] = serde_json::json!(301);
        m["MaximumRetryAttempts"] = serde_json::json!(-2);
        m["MaximumRecordAgeInSeconds"] = serde_json::json!(59);
        m["DestinationConfig"] = serde_json::json!({"OnFailure": {"Destination": "arn:aws:dynamodb:us-east-1:1:table/t"}});
        m["FunctionResponseTypes"] = serde_json::json!(["Partial"]);
        let v = violations(m);
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "BatchSize",
                "MaximumBatchingWindowInSeconds",
                "DestinationConfig.OnFailure.Destination",
                "FunctionResponseTypes",
                "MaximumRetryAttempts",
                "MaximumRecordAgeInSeconds"
            ]
        );
        assert_eq!(v[0].message, "0 is out of range; allowed 1-10000");
        assert_eq!(v[1].message, "301 is out of range; allowed 0-300");
    }

    #[test]
    fn at_timestamp_needs_a_timestamp() {
        let mut m = minimal();
        m["StartingPosition"] = serde_json::json!("AT_TIMESTAMP");
        assert_eq!(violations(m.clone())[0].field, "StartingPositionTimestamp");
        m["StartingPositionTimestamp"] = serde_json::json!(1_700_000_000);
        assert!(violations(m).is_empty());
    }

    #[test]
    fn missing_bootstrap_and_starting_position_are_reported() {
        let m = serde_json::json!({"FunctionName": "f", "Topics": ["t"], "StartingPosition": null});
        let fields: Vec<String> = violations(m).into_iter().map(|v| v.field).collect();
        assert_eq!(fields, vec!["SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS", "StartingPosition"]);
    }

    #[test]
    fn retry_limit_follows_aws_rules() {
        let mut m = minimal();
        assert_eq!(config_with(m.clone()).mappings[0].retry_limit(), None);
        m["DestinationConfig"] = serde_json::json!({"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:dlq"}});
        assert_eq!(config_with(m.clone()).mappings[0].retry_limit(), Some(10));
        m["MaximumRetryAttempts"] = serde_json::json!(2);
        assert_eq!(config_with(m.clone()).mappings[0].retry_limit(), Some(2));
        m["DestinationConfig"] = serde_json::json!({"OnFailure": {"Destination": ""}});
        m["MaximumRetryAttempts"] = serde_json::json!(-1);
        assert_eq!(config_with(m).mappings[0].retry_limit(), None);
    }

    #[test]
    fn destination_kinds() {
        assert_eq!(destination_kind("arn:aws:sqs:us-east-1:123456789012:dlq"), Some(DestinationKind::Sqs));
        assert_eq!(destination_kind("arn:aws:sns:us-east-1:123456789012:alerts"), Some(DestinationKind::Sns));
        assert_eq!(destination_kind("arn:aws:s3:::my-bucket"), Some(DestinationKind::S3));
        assert_eq!(destination_kind("arn:aws:s3:::my-bucket/prefix"), None);
        assert_eq!(destination_kind("arn:aws:sqs:us-east-1::dlq"), None);
        assert_eq!(destination_kind("dlq"), None);
    }

    #[test]
    fn metrics_and_logging_config_take_aws_values_only() {
        let mut m = minimal();
        assert!(config_with(m.clone()).mappings[0].metric_groups().is_empty(), "no MetricsConfig: no group");
        assert_eq!(config_with(m.clone()).mappings[0].system_log_level(), None);
        m["MetricsConfig"] = serde_json::json!({"Metrics": ["KafkaMetrics", "EventCount"]});
        m["LoggingConfig"] = serde_json::json!({"SystemLogLevel": "DEBUG"});
        assert!(violations(m.clone()).is_empty());
        let mapping = config_with(m.clone()).mappings[0].clone();
        assert_eq!(mapping.metric_groups(), vec!["EventCount", "KafkaMetrics"]);
        assert_eq!(mapping.system_log_level(), Some("DEBUG"));

        m["MetricsConfig"] = serde_json::json!({"Metrics": ["EventCount", "Throughput", "EventCount", "ErrorCount"]});
        m["LoggingConfig"] = serde_json::json!({"SystemLogLevel": "TRACE"});
        let messages: Vec<String> = violations(m.clone()).into_iter().map(|v| format!("{}: {}", v.field, v.message)).collect();
        assert_eq!(
            messages,
            vec![
                "MetricsConfig.Metrics: has 4 entries; allowed at most 3",
                "MetricsConfig.Metrics: \"Throughput\" is not a metric group; allowed EventCount, ErrorCount, KafkaMetrics",
                "MetricsConfig.Metrics: \"EventCount\" is listed twice",
                "LoggingConfig.SystemLogLevel: \"TRACE\" is not a log level; allowed DEBUG, INFO, WARN",
            ]
        );
        m["LoggingConfig"] = serde_json::json!({"SystemLogLevel": "INFO", "ApplicationLogLevel": "INFO"});
        let err = RelayConfig::parse_valid(&serde_json::json!({"Mappings": [m]}).to_string()).unwrap_err();
        assert!(err.to_string().contains("ApplicationLogLevel"), "{err}");
    }

    #[test]
    fn msk_mapping_uses_aws_kafka_source() {
        let mut m = minimal();
        m["EventSourceArn"] = serde_json::json!("arn:aws:kafka:us-east-1:123456789012:cluster/demo/abc-1");
        let config = config_with(m);
        config.validate().unwrap();
        assert_eq!(config.mappings[0].event_source(), "aws:kafka");
    }

    /// AWS's MSK example: `aws lambda create-event-source-mapping --event-source-arn <cluster ARN> --topics
    /// AWSKafkaTopic --starting-position LATEST --function-name my-kafka-function`, no access configuration.
    #[test]
    fn aws_msk_cli_example_validates_without_endpoints() {
        let config = config_with(serde_json::json!({
            "EventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/vpc-2priv-2pub/751d2973-a626-431c-9d4e-d7975eb44dd7-2",
            "Topics": ["AWSKafkaTopic"],
            "StartingPosition": "LATEST",
            "FunctionName": "my-kafka-function"
        }));
        config.validate().unwrap();
        let m = &config.mappings[0];
        assert!(m.is_msk());
        assert!(m.bootstrap_servers().is_empty());
        assert_eq!(m.msk_connectivity, None);
    }

    #[test]
    fn msk_connectivity_is_parsed_and_only_allowed_for_msk_without_endpoints() {
        let arn = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abc-1";
        let mut m = serde_json::json!({"EventSourceArn": arn, "Topics": ["t"], "StartingPosition": "LATEST", "FunctionName": "f", "MskConnectivity": "MULTI_VPC"});
        assert_eq!(config_with(m.clone()).mappings[0].msk_connectivity, Some(crate::auth::msk::Connectivity::MultiVpc));
        assert!(violations(m.clone()).is_empty());
        m["SelfManagedEventSource"] = serde_json::json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b:9098"]}});
        let v = violations(m);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, "MskConnectivity");
        let mut self_managed = minimal();
        self_managed["MskConnectivity"] = serde_json::json!("PUBLIC");
        assert_eq!(violations(self_managed)[0].field, "MskConnectivity");
        let mut wrong = minimal();
        wrong["MskConnectivity"] = serde_json::json!("INTERNET");
        assert!(RelayConfig::from_json(&serde_json::json!({"Mappings": [wrong]}).to_string()).is_err());
    }

    fn with_registry(registry: serde_json::Value) -> serde_json::Value {
        let mut m = minimal();
        m["SelfManagedKafkaEventSourceConfig"] = serde_json::json!({"SchemaRegistryConfig": registry});
        m
    }

    #[test]
    fn schema_registry_config_parses_with_aws_field_names() {
        let m = with_registry(serde_json::json!({
            "SchemaRegistryURI": "https://registry.example.com:8081",
            "EventRecordFormat": "JSON",
            "AccessConfigs": [{"Type": "BASIC_AUTH", "URI": "arn:aws:secretsmanager:us-east-1:123456789012:secret:sr"}],
            "SchemaValidationConfigs": [{"Attribute": "KEY"}, {"Attribute": "VALUE"}]
        }));
        let config = config_with(m);
        config.validate().unwrap();
        let registry = config.mappings[0].schema_registry_config().expect("set");
        assert_eq!(registry.event_record_format, Some(EventRecordFormat::Json));
        assert!(!registry.is_glue());
        assert!(registry.validates(SchemaValidationAttribute::Key));
        assert!(registry.validates(SchemaValidationAttribute::Value));
        assert_eq!(registry.access_configs[0].kind, "BASIC_AUTH");
    }

    #[test]
    fn glue_registry_on_msk_mapping_is_valid_and_names_region_and_registry() {
        let mut m = minimal();
        m["EventSourceArn"] = serde_json::json!("arn:aws:kafka:us-east-1:123456789012:cluster/demo/abc-1");
        m["AmazonManagedKafkaEventSourceConfig"] = serde_json::json!({"SchemaRegistryConfig": {
            "SchemaRegistryURI": "arn:aws:glue:eu-west-1:123456789012:registry/orders",
            "EventRecordFormat": "SOURCE",
            "SchemaValidationConfigs": [{"Attribute": "VALUE"}]
        }});
        let config = config_with(m);
        config.validate().unwrap();
        let registry = config.mappings[0].schema_registry_config().unwrap();
        assert!(registry.is_glue());
        assert!(!registry.validates(SchemaValidationAttribute::Key));
        assert_eq!(glue_registry_arn(&registry.schema_registry_uri), Some(("eu-west-1", "orders")));
    }

    #[test]
    fn schema_registry_violations_name_the_field_and_value() {
        let m = with_registry(serde_json::json!({
            "SchemaRegistryURI": "arn:aws:glue:us-east-1:123456789012:schema/orders/x",
            "AccessConfigs": [
                {"Type": "OAUTHBEARER_AUTH", "URI": "arn:aws:secretsmanager:us-east-1:1:secret:o"},
                {"Type": "BASIC_AUTH", "URI": "secret"}
            ],
            "SchemaValidationConfigs": [{"Attribute": "VALUE"}, {"Attribute": "VALUE"}]
        }));
        let v = violations(m);
        let got: Vec<(String, String)> = v.into_iter().map(|v| (v.field, v.message)).collect();
        let prefix = "SelfManagedKafkaEventSourceConfig.SchemaRegistryConfig";
        assert_eq!(
            got,
            vec![
                (format!("{prefix}.SchemaRegistryURI"), "\"arn:aws:glue:us-east-1:123456789012:schema/orders/x\" is not a Glue registry ARN (arn:aws:glue:<region>:<account>:registry/<name>)".to_string()),
                (format!("{prefix}.EventRecordFormat"), "is required: JSON or SOURCE".to_string()),
                (format!("{prefix}.SchemaValidationConfigs"), "VALUE is listed more than once; allowed once".to_string()),
                (format!("{prefix}.AccessConfigs"), "is set for a Glue registry; Glue is reached with the relay's role (glue:GetSchemaVersion), leave AccessConfigs empty".to_string()),
                (format!("{prefix}.AccessConfigs.Type"), "\"OAUTHBEARER_AUTH\" is not supported; allowed BASIC_AUTH, CLIENT_CERTIFICATE_TLS_AUTH, SERVER_ROOT_CA_CERTIFICATE".to_string()),
                (format!("{prefix}.AccessConfigs.URI"), "\"secret\" for BASIC_AUTH is not a Secrets Manager secret ARN (arn:aws:secretsmanager:...)".to_string()),
            ]
        );
    }

    #[test]
    fn schema_registry_uri_length_pattern_and_attributes_are_checked() {
        let long = format!("https://{}", "a".repeat(10_000));
        let cases = [
            (
                serde_json::json!({"SchemaRegistryURI": "", "EventRecordFormat": "JSON", "SchemaValidationConfigs": [{"Attribute": "KEY"}]}),
                "has 0 characters; allowed 1-10000 (a Glue registry ARN or a registry URL)".to_string(),
            ),
            (
                serde_json::json!({"SchemaRegistryURI": long, "EventRecordFormat": "JSON", "SchemaValidationConfigs": [{"Attribute": "KEY"}]}),
                "has 10008 characters; allowed 1-10000 (a Glue registry ARN or a registry URL)".to_string(),
            ),
            (
                serde_json::json!({"SchemaRegistryURI": "https://r.example.com/?a b", "EventRecordFormat": "JSON", "SchemaValidationConfigs": [{"Attribute": "KEY"}]}),
                "\"https://r.example.com/?a b\" has characters outside AWS's pattern [a-zA-Z0-9-/*:_+=.@]".to_string(),
            ),
            (
                serde_json::json!({"SchemaRegistryURI": "ftp://r.example.com", "EventRecordFormat": "JSON", "SchemaValidationConfigs": [{"Attribute": "KEY"}]}),
                "\"ftp://r.example.com\" is neither a Glue registry ARN nor an http(s) registry URL".to_string(),
            ),
            (
                serde_json::json!({"SchemaRegistryURI": "https://r.example.com", "EventRecordFormat": "JSON", "SchemaValidationConfigs": []}),
                "is empty; list at least one of {\"Attribute\": \"KEY\"} and {\"Attribute\": \"VALUE\"}".to_string(),
            ),
        ];
        for (registry, expected) in cases {
            let v = violations(with_registry(registry));
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].message, expected);
        }
        let v = violations(with_registry(serde_json::json!({"SchemaRegistryURI": "https://relay:hunter2@r.example.com",
            "EventRecordFormat": "JSON", "SchemaValidationConfigs": [{"Attribute": "KEY"}]})));
        assert_eq!(v.len(), 1);
        assert!(v[0].message.starts_with("carries credentials") && !v[0].message.contains("hunter2"), "{}", v[0].message);
        // Unknown enum values fail at parse time, naming the value.
        let text = serde_json::json!({"Mappings": [with_registry(serde_json::json!({
            "SchemaRegistryURI": "https://r", "EventRecordFormat": "XML", "SchemaValidationConfigs": [{"Attribute": "KEY"}]}))]})
        .to_string();
        let err = RelayConfig::parse_valid(&text).unwrap_err().to_string();
        assert!(err.contains("XML"), "{err}");
    }

    #[test]
    fn sasl_and_secret_uris_are_checked() {
        let mut m = minimal();
        m["SourceAccessConfigurations"] = serde_json::json!([
            {"Type": "SASL_SCRAM_512_AUTH", "URI": "arn:aws:secretsmanager:us-east-1:123456789012:secret:s"},
            {"Type": "BASIC_AUTH", "URI": "not-an-arn"},
            {"Type": "KERBEROS", "URI": "x"}
        ]);
        let messages: Vec<String> = violations(m).into_iter().map(|v| v.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("not-an-arn"));
        assert!(messages[1].contains("KERBEROS"));
        assert!(messages[2].contains("choose one SASL mechanism"));
    }

    #[test]
    fn provisioned_poller_config_takes_aws_ranges_and_defaults() {
        let mut m = minimal();
        m["ProvisionedPollerConfig"] = serde_json::json!({"MinimumPollers": 2, "MaximumPollers": 12});
        let config = config_with(m);
        config.validate().unwrap();
        assert_eq!(config.mappings[0].provisioned_poller_config.unwrap().limits(), (2, 12));

        let mut m = minimal();
        m["ProvisionedPollerConfig"] = serde_json::json!({});
        assert_eq!(config_with(m).mappings[0].provisioned_poller_config.unwrap().limits(), (1, 200), "AWS's defaults");
        assert_eq!(config_with(minimal()).mappings[0].provisioned_poller_config, None, "on-demand without it");
    }

    #[test]
    fn provisioned_poller_config_outside_aws_ranges_is_rejected() {
        for (pollers, field, message) in [
            (serde_json::json!({"MinimumPollers": 0}), "ProvisionedPollerConfig.MinimumPollers", "0 is out of range; allowed 1-200"),
            (serde_json::json!({"MinimumPollers": 201}), "ProvisionedPollerConfig.MinimumPollers", "201 is out of range; allowed 1-200"),
            (serde_json::json!({"MaximumPollers": 0}), "ProvisionedPollerConfig.MaximumPollers", "0 is out of range; allowed 1-2000"),
            (serde_json::json!({"MaximumPollers": 2001}), "ProvisionedPollerConfig.MaximumPollers", "2001 is out of range; allowed 1-2000"),
            (
                serde_json::json!({"MinimumPollers": 5, "MaximumPollers": 4}),
                "ProvisionedPollerConfig.MinimumPollers",
                "5 is above MaximumPollers (4); it must be at most MaximumPollers",
            ),
        ] {
            let mut m = minimal();
            m["ProvisionedPollerConfig"] = pollers.clone();
            let v = violations(m);
            assert_eq!(v.len(), 1, "{pollers}: {v:?}");
            assert_eq!((v[0].field.as_str(), v[0].message.as_str()), (field, message), "{pollers}");
        }
        let mut m = minimal();
        m["ProvisionedPollerConfig"] = serde_json::json!({"MinimumPollers": 200, "MaximumPollers": 2000});
        assert!(violations(m).is_empty(), "the range ends are allowed");
        let mut m = minimal();
        m["ProvisionedPollerConfig"] = serde_json::json!({"Minimum": 1});
        assert!(serde_json::from_value::<RelayConfig>(serde_json::json!({ "Mappings": [m] })).is_err(), "unknown fields are refused");
    }

    fn messages(mapping: serde_json::Value) -> Vec<String> {
        violations(mapping).into_iter().map(|v| v.to_string()).collect()
    }

    fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
        let mut m = minimal();
        m[field] = value;
        m
    }

    #[test]
    fn a_kafka_destination_must_be_another_topic_of_valid_name() {
        let dest = |d: &str| with("DestinationConfig", serde_json::json!({"OnFailure": {"Destination": d}}));
        assert_eq!(messages(dest("kafka://orders-failed")), Vec::<String>::new());
        let own = messages(dest("kafka://orders"));
        assert_eq!(own.len(), 1, "{own:?}");
        assert!(own[0].contains("DestinationConfig.OnFailure.Destination") && own[0].contains("one of the mapping's Topics"), "{own:?}");
        let bad = messages(dest("kafka://no spaces"));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("kafka://<topic>"), "{bad:?}");
    }

    #[test]
    fn large_record_offload_is_a_relay_extension_with_a_bucket_name() {
        let offload = |v: serde_json::Value| with("RelayExtensions", serde_json::json!({"LargeRecordOffload": v}));
        assert_eq!(messages(offload(serde_json::json!({"Bucket": "big-records"}))), Vec::<String>::new());
        let bad = messages(offload(serde_json::json!({"Bucket": "arn:aws:s3:::big-records", "KeyPrefix": "x".repeat(513)})));
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("RelayExtensions.LargeRecordOffload.Bucket"), "{bad:?}");
        assert!(bad[1].contains("RelayExtensions.LargeRecordOffload.KeyPrefix"), "{bad:?}");
        let config = config_with(offload(serde_json::json!({"Bucket": "big-records"})));
        let offload = config.mappings[0].large_record_offload().expect("set");
        assert_eq!((offload.bucket.as_str(), offload.key_prefix.as_deref()), ("big-records", None));
        assert_eq!(config_with(minimal()).mappings[0].large_record_offload(), None, "off by default");
        let typo = serde_json::json!({"Mappings": [with("RelayExtensions", serde_json::json!({"LargeRecordOfload": {}}))]});
        assert!(serde_json::from_value::<RelayConfig>(typo).is_err(), "unknown extension fields are refused");
    }

    // Defect (issue 13): `validate` accepted a topic listed twice; `run` then failed subscribing with
    // "Invalid argument or configuration".
    #[test]
    fn a_topic_listed_twice_is_refused() {
        let v = violations(with("Topics", serde_json::json!(["orders", "payments", "orders"])));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, "Topics");
        assert_eq!(v[0].message, "\"orders\" is listed more than once; list each topic once");
    }

    // Defect (issue 13): a NUL byte in a bootstrap server passed `validate` and failed `run` ("FFI nul error").
    #[test]
    fn a_nul_byte_in_a_bootstrap_server_is_refused_and_shown_escaped() {
        let m = with(
            "SelfManagedEventSource",
            serde_json::json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b-1\u{0}.example:9092"]}}),
        );
        let v = violations(m);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, "SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS");
        assert!(v[0].message.starts_with("\"b-1\\0.example:9092\" is not host:port"), "{}", v[0].message);
    }

    #[test]
    fn bootstrap_servers_follow_aws_host_port_pattern() {
        for good in [
            "127.0.0.1:9092",
            "localhost:1",
            "b-1.kafka.example.internal:9096",
            "B-1.Example:65535",
            "plaintext://b-1.example:9094",
        ] {
            let m =
                with("SelfManagedEventSource", serde_json::json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [good]}}));
            assert_eq!(violations(m), vec![], "{good}");
        }
        for bad in [
            "b-1.example",
            "b-1.example:0",
            "b-1.example:65536",
            "b-1.example:123456",
            ":9092",
            "-b.example:9092",
            "b..example:9092",
            "b_1.example:9092",
            "b 1:9092",
            "a:1,b:2",
            "[::1]:9092",
            "://b:9092",
            "h:9092 ",
            "héllo:9092",
        ] {
            let m =
                with("SelfManagedEventSource", serde_json::json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bad]}}));
            assert_eq!(violations(m).len(), 1, "{bad} must be refused");
        }
        let eleven: Vec<String> = (0..11).map(|i| format!("b-{i}.example:9092")).collect();
        let m = with("SelfManagedEventSource", serde_json::json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": eleven}}));
        assert_eq!(messages(m), vec!["Mappings[0]: SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS: has 11 servers; allowed at most 10"]);
        let long = format!("{}.example:9092", "a".repeat(300));
        let m = with("SelfManagedEventSource", serde_json::json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [long]}}));
        assert_eq!(violations(m).len(), 1);
    }

    // Defect (issue 13): `../../etc/passwd`, `target?x=1#y` and emoji validated and were invoked.
    #[test]
    fn function_names_follow_aws_pattern_and_lengths() {
        for good in [
            "my-function",
            "My_Function-2",
            "my-function:v1",
            "my-function:$LATEST",
            "123456789012:function:my-function",
            "123456789012:function:my-function:PROD",
            "arn:aws:lambda:us-west-2:123456789012:function:my-function",
            "arn:aws:lambda:us-west-2:123456789012:function:my-function:$LATEST.PUBLISHED",
            "arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:f:7",
            "arn:aws-cn:lambda:cn-north-1:123456789012:function:f",
            "us-east-1",
            &"f".repeat(64),
        ] {
            assert_eq!(violations(with("FunctionName", serde_json::json!(good))), vec![], "{good}");
        }
        for bad in [
            "../../etc/passwd",
            "target?x=1#y",
            "target\u{1F600}",
            "my function",
            "f:",
            ":f",
            "f:a:b",
            "arn:aws:s3:us-east-1:123456789012:function:f",
            "arn:aws:lambda:us-east-1:12345:function:f",
            "123456789012:function:",
            "f:$LATEST.OTHER",
            &"f".repeat(65),
            "",
            " ",
        ] {
            let v = violations(with("FunctionName", serde_json::json!(bad)));
            assert_eq!(v.len(), 1, "{bad:?} must be refused: {v:?}");
            assert_eq!(v[0].field, "FunctionName");
        }
        let long = format!("arn:aws:lambda:us-west-2:123456789012:function:{}", "f".repeat(100));
        let v = violations(with("FunctionName", serde_json::json!(long)));
        assert!(v[0].message.ends_with("(147 characters) has 147 characters; allowed 1-140"), "{}", v[0].message);
    }

    // Defect (issue 13): a 1 MB UUID was accepted and filled megabytes of stderr.
    #[test]
    fn uuid_must_be_a_uuid_and_a_huge_one_is_quoted_short() {
        assert_eq!(violations(with("UUID", serde_json::json!("6d2a0c1e-3f4b-4a5c-9d8e-7f6a5b4c3d21"))), vec![]);
        assert_eq!(violations(with("UUID", serde_json::json!("6D2A0C1E-3F4B-4A5C-9D8E-7F6A5B4C3D21"))), vec![]);
        for bad in ["", "orders-to-billing", "6d2a0c1e3f4b4a5c9d8e7f6a5b4c3d21", "6d2a0c1e-3f4b-4a5c-9d8e-7f6a5b4c3d2g"]
        {
            let v = violations(with("UUID", serde_json::json!(bad)));
            assert_eq!(v.len(), 1, "{bad}");
            assert_eq!(v[0].field, "UUID");
        }
        let huge = "x".repeat(1 << 20);
        let error = RelayConfig::parse_valid(
            &serde_json::json!({"Mappings": [with("UUID", serde_json::json!(huge))]}).to_string(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.len() < 1000, "the error is {} bytes", error.len());
        assert!(error.contains(&format!("{:?}... (1048576 characters)", "x".repeat(QUOTED_CHARS))), "{error}");
    }

    // Defect (issue 13): a 1 MB filter pattern was echoed whole in the error message.
    #[test]
    fn a_huge_filter_pattern_is_refused_with_a_short_quote() {
        let huge = format!("{{\"value\": [\"{}\"]}}", "y".repeat(1 << 20));
        let v = violations(with("FilterCriteria", serde_json::json!({"Filters": [{"Pattern": huge}]})));
        assert_eq!(v.len(), 1);
        assert!(v[0].message.len() < 300, "{}", v[0].message);
        let expected =
            format!("is not a valid pattern: {} characters long; allowed at most 4096", huge.chars().count());
        assert!(v[0].message.ends_with(&expected), "{}", v[0].message);
    }

    // Defect (issue 13): two mappings sharing a ConsumerGroupId were accepted and rebalanced each other.
    #[test]
    fn a_consumer_group_shared_by_two_mappings_is_refused_naming_both() {
        let mut a = minimal();
        a["UUID"] = serde_json::json!("6d2a0c1e-3f4b-4a5c-9d8e-7f6a5b4c3d21");
        a["SelfManagedKafkaEventSourceConfig"] = serde_json::json!({"ConsumerGroupId": "shared"});
        let mut b = minimal();
        b["Topics"] = serde_json::json!(["payments"]);
        b["SelfManagedKafkaEventSourceConfig"] = serde_json::json!({"ConsumerGroupId": "shared"});
        let config: RelayConfig = serde_json::from_value(serde_json::json!({"Mappings": [a.clone(), b]})).unwrap();
        let Err(ConfigError::Invalid(v)) = config.validate() else { panic!("a shared group must be refused") };
        assert_eq!(
            v.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            vec![
                "Mappings[1]: SelfManagedKafkaEventSourceConfig.ConsumerGroupId: consumer group \"shared\" is also used by Mappings[0] (\"6d2a0c1e-3f4b-4a5c-9d8e-7f6a5b4c3d21\"); each mapping needs its own consumer group, as in AWS"
            ]
        );
        // A configured group equal to another mapping's derived group (its UUID) is the same group.
        let mut c = minimal();
        c["Topics"] = serde_json::json!(["payments"]);
        c["SelfManagedKafkaEventSourceConfig"] =
            serde_json::json!({"ConsumerGroupId": "6d2a0c1e-3f4b-4a5c-9d8e-7f6a5b4c3d21"});
        let mut d = a;
        d.as_object_mut().unwrap().remove("SelfManagedKafkaEventSourceConfig");
        let config: RelayConfig = serde_json::from_value(serde_json::json!({"Mappings": [d, c]})).unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn consumer_group_ids_follow_aws_pattern() {
        for good in ["g", "billing-relay", "a/b*c:d_e+f=g.h@i", &"g".repeat(200)] {
            let m = with("SelfManagedKafkaEventSourceConfig", serde_json::json!({"ConsumerGroupId": good}));
            assert_eq!(violations(m), vec![], "{good}");
        }
        for bad in ["", "a b", "a\u{0}b", "grüppe", "a,b", &"g".repeat(201)] {
            let m = with("SelfManagedKafkaEventSourceConfig", serde_json::json!({"ConsumerGroupId": bad}));
            assert_eq!(violations(m).len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn topic_names_follow_kafka_rules_and_count() {
        for good in ["t", "orders.v1", "a_b-c", &"t".repeat(249), ".hidden"] {
            assert_eq!(violations(with("Topics", serde_json::json!([good]))), vec![], "{good}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "a\u{0}", "^orders.*", &"t".repeat(250)] {
            assert_eq!(violations(with("Topics", serde_json::json!([bad]))).len(), 1, "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_TOPICS).map(|i| format!("t{i}")).collect();
        assert_eq!(
            messages(with("Topics", serde_json::json!(many))),
            vec![format!("Mappings[0]: Topics: has {} topics; allowed at most {MAX_TOPICS}", MAX_TOPICS + 1)]
        );
    }

    #[test]
    fn destination_arns_follow_each_services_naming_rules() {
        use DestinationKind::*;
        for (arn, kind) in [
            ("arn:aws:sqs:us-east-1:123456789012:dlq", Some(Sqs)),
            ("arn:aws:sqs:us-east-1:123456789012:dlq.fifo", Some(Sqs)),
            ("arn:aws-us-gov:sqs:us-gov-west-1:123456789012:dlq", Some(Sqs)),
            ("arn:aws:sqs:us-east-1:123456789012:dl q", None),
            ("arn:aws:sqs:us-east-1:123456789012:", None),
            (&format!("arn:aws:sqs:us-east-1:123456789012:{}", "q".repeat(81)), None),
            ("arn:aws:sqs:us-east-1:1:dlq", None),
            ("arn:aws:sqs:useast1:123456789012:dlq", None),
            ("arn:aws:sns:eu-west-1:111122223333:alerts", Some(Sns)),
            (&format!("arn:aws:sns:eu-west-1:111122223333:{}", "t".repeat(256)), Some(Sns)),
            (&format!("arn:aws:sns:eu-west-1:111122223333:{}", "t".repeat(257)), None),
            ("arn:aws:sns:eu-west-1:111122223333:a/b", None),
            ("arn:aws:s3:::my-bucket", Some(S3)),
            ("arn:aws:s3:::my.bucket-1", Some(S3)),
            ("arn:aws:s3:::My-Bucket", None),
            ("arn:aws:s3:::ab", None),
            ("arn:aws:s3:::-bucket", None),
            ("arn:aws:s3:::my..bucket", None),
            ("arn:aws:s3:us-east-1::my-bucket", None),
            ("arn:aws:s3:::my-bucket/prefix", None),
            ("arn:aws:dynamodb:us-east-1:123456789012:table/t", None),
            ("arn:gcp:sqs:us-east-1:123456789012:dlq", None),
            ("kafka://failed-records-topic", Some(Kafka)),
            ("kafka://a.b_c-1", Some(Kafka)),
            ("kafka://", None),
            ("kafka://..", None),
            ("kafka://a/b", None),
            ("kafka://two words", None),
            (&format!("kafka://{}", "t".repeat(250)), None),
            ("KAFKA://t", None),
        ] {
            assert_eq!(destination_kind(arn), kind, "{arn}");
        }
    }

    #[test]
    fn secret_uris_must_be_secrets_manager_arns() {
        for (uri, ok) in [
            ("arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka/billing-AbCdEf", true),
            ("arn:aws:secretsmanager:us-east-1:123456789012:secret:", false),
            ("arn:aws:secretsmanager:us-east-1:1:secret:s", false),
            ("arn:aws:s3:us-east-1:123456789012:secret:s", false),
            ("arn:aws:secretsmanager:us-east-1:123456789012:secret:a b", false),
        ] {
            let m = with("SourceAccessConfigurations", serde_json::json!([{"Type": "BASIC_AUTH", "URI": uri}]));
            assert_eq!(violations(m).is_empty(), ok, "{uri}");
        }
        let many: Vec<serde_json::Value> =
            (0..23).map(|i| serde_json::json!({"Type": "VPC_SUBNET", "URI": format!("subnet:subnet-{i}")})).collect();
        assert_eq!(
            messages(with("SourceAccessConfigurations", serde_json::json!(many))),
            vec!["Mappings[0]: SourceAccessConfigurations: has 23 entries; allowed at most 22"]
        );
    }

    #[test]
    fn quote_escapes_and_shortens() {
        assert_eq!(quote("a\u{0}b\n"), "\"a\\0b\\n\"");
        assert_eq!(quote(&"é".repeat(QUOTED_CHARS)), format!("{:?}", "é".repeat(QUOTED_CHARS)));
        assert_eq!(
            quote(&"é".repeat(QUOTED_CHARS + 1)),
            format!("{:?}... ({} characters)", "é".repeat(QUOTED_CHARS), QUOTED_CHARS + 1)
        );
    }

    #[test]
    fn a_run_shorter_than_the_target_timeout_plus_margin_is_a_problem() {
        let s = Duration::from_secs;
        // (run length, target timeout, margin, fits)
        let table = [
            (s(900), s(840), s(5), true),
            (s(15), s(3), s(3), true),
            (s(15), s(12), s(3), false), // exactly the cutoff: the invoke cutoff is already reached at start
            (s(15), s(30), s(3), false),
            (s(15), s(15), s(0), false),
            (Duration::from_millis(2500), s(1), s(1), true),
            (s(0), s(1), s(0), false),
        ];
        for (run, timeout, margin, fits) in table {
            assert_eq!(run_length_problem(run, timeout, margin).is_none(), fits, "{run:?} {timeout:?} {margin:?}");
        }
        assert_eq!(
            run_length_problem(s(15), s(30), s(3)).as_deref(),
            Some("the run lasts 15 s but the target function's timeout is 30 s (plus 3 s kept for the final commit): no invocation can finish within the run, so none is started; make the run longer (--max-seconds, RELAY_MAX_SECONDS or the relay's own Lambda timeout) or the target's timeout shorter")
        );
        assert!(run_length_problem(Duration::from_millis(2500), s(3), s(0)).unwrap().starts_with("the run lasts 2.5 s"));
    }
}
