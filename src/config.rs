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
        for (index, mapping) in self.mappings.iter().enumerate() {
            let label = match &mapping.uuid {
                Some(uuid) => format!("Mappings[{index}] ({uuid})"),
                None => format!("Mappings[{index}]"),
            };
            for (field, message) in mapping.violations() {
                violations.push(Violation { mapping: label.clone(), field, message });
            }
            if !seen_uuids.insert(mapping.uuid()) {
                violations.push(Violation {
                    mapping: label.clone(),
                    field: "UUID".into(),
                    message: format!("{:?} is used by another mapping; each mapping needs its own", mapping.uuid()),
                });
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

    /// Every violation in this mapping, as (field, message).
    fn violations(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut bad = |field: &str, message: String| out.push((field.to_string(), message));

        if let Some(uuid) = &self.uuid {
            if uuid.trim().is_empty() {
                bad("UUID", "is empty; omit it to derive one".into());
            }
        }
        if self.function_name.trim().is_empty() {
            bad("FunctionName", "is required (a function name, ARN or partial ARN)".into());
        } else if self.function_name.len() > 140 {
            bad(
                "FunctionName",
                format!("{:?} has {} characters; allowed 1-140", self.function_name, self.function_name.len()),
            );
        }
        if self.topics.is_empty() {
            bad("Topics", "is empty; at least one topic is required".into());
        }
        for topic in &self.topics {
            let valid = !topic.is_empty()
                && topic.len() <= 249
                && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                bad("Topics", format!("{topic:?} is not a Kafka topic name (1-249 of [a-zA-Z0-9._-])"));
            }
        }

        match &self.event_source_arn {
            Some(arn) if !is_msk_arn(arn) => bad(
                "EventSourceArn",
                format!("{arn:?} is not an MSK cluster ARN (arn:aws:kafka:<region>:<account>:cluster/...)"),
            ),
            _ => {}
        }
        let servers = self.bootstrap_servers();
        if servers.is_empty() {
            if self.is_msk() {
                // The relay does not call kafka:GetBootstrapBrokers; the brokers must be listed.
                bad(
                    "SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS",
                    "is required: list the MSK cluster's bootstrap brokers (host:port); the relay does not look them up".into(),
                );
            } else {
                bad(
                    "SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS",
                    "is required: one or more host:port".into(),
                );
            }
        }
        for server in &servers {
            let valid = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                bad("SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS", format!("{server:?} is not host:port"));
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
                    bad(field, format!("{group:?} has {length} characters; allowed 1-200"));
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

        for entry in &self.source_access_configurations {
            if !SOURCE_ACCESS_TYPES.contains(&entry.kind.as_str()) {
                bad(
                    "SourceAccessConfigurations.Type",
                    format!("{:?} is not supported; allowed {}", entry.kind, SOURCE_ACCESS_TYPES.join(", ")),
                );
                continue;
            }
            let uri_ok = match entry.kind.as_str() {
                "VPC_SUBNET" => entry.uri.starts_with("subnet:subnet-"),
                "VPC_SECURITY_GROUP" => entry.uri.starts_with("security_group:sg-"),
                _ => entry.uri.starts_with("arn:") && entry.uri.contains(":secretsmanager:"),
            };
            if !uri_ok {
                let expected = match entry.kind.as_str() {
                    "VPC_SUBNET" => "subnet:subnet-<id>",
                    "VPC_SECURITY_GROUP" => "security_group:sg-<id>",
                    _ => "a Secrets Manager secret ARN (arn:aws:secretsmanager:...)",
                };
                bad("SourceAccessConfigurations.URI", format!("{:?} for {} is not {expected}", entry.uri, entry.kind));
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
                    format!("{destination:?} is not an SQS queue, SNS topic or S3 bucket ARN (or \"\" for none)"),
                );
            }
        }
        for response_type in &self.function_response_types {
            if response_type != "ReportBatchItemFailures" {
                bad(
                    "FunctionResponseTypes",
                    format!("{response_type:?} is not supported; allowed [\"ReportBatchItemFailures\"]"),
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
            if criteria.filters.len() > 5 {
                bad("FilterCriteria.Filters", format!("has {} patterns; allowed at most 5", criteria.filters.len()));
            }
            for filter in &criteria.filters {
                if let Err(error) = crate::filter::Pattern::parse(&filter.pattern) {
                    bad("FilterCriteria.Filters[].Pattern", format!("{:?} is not a valid pattern: {error}", filter.pattern));
                }
            }
        }
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
}

/// Classifies a destination ARN; `None` when it is none of SQS, SNS or S3.
pub fn destination_kind(arn: &str) -> Option<DestinationKind> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !parts[1].starts_with("aws") || parts[5].is_empty() {
        return None;
    }
    match parts[2] {
        "sqs" if !parts[3].is_empty() && !parts[4].is_empty() => Some(DestinationKind::Sqs),
        "sns" if !parts[3].is_empty() && !parts[4].is_empty() => Some(DestinationKind::Sns),
        "s3" if !parts[5].contains('/') => Some(DestinationKind::S3),
        _ => None,
    }
}

fn is_msk_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6 && parts[0] == "arn" && parts[2] == "kafka" && parts[5].starts_with("cluster/")
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
    fn msk_mapping_uses_aws_kafka_source() {
        let mut m = minimal();
        m["EventSourceArn"] = serde_json::json!("arn:aws:kafka:us-east-1:123456789012:cluster/demo/abc-1");
        let config = config_with(m);
        config.validate().unwrap();
        assert_eq!(config.mappings[0].event_source(), "aws:kafka");
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
            {"Type": "SASL_SCRAM_512_AUTH", "URI": "arn:aws:secretsmanager:us-east-1:1:secret:s"},
            {"Type": "BASIC_AUTH", "URI": "not-an-arn"},
            {"Type": "KERBEROS", "URI": "x"}
        ]);
        let messages: Vec<String> = violations(m).into_iter().map(|v| v.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("not-an-arn"));
        assert!(messages[1].contains("KERBEROS"));
        assert!(messages[2].contains("choose one SASL mechanism"));
    }
}
