//! `kafka-lambda-relay redrive`: brings the records an on-failure destination holds back to a function.
//!
//! Layout, in the order a redrive goes:
//! - [`Source`]: where the invocation records are: an SQS queue (SQS and SNS→SQS destinations), an S3
//!   prefix, or a Kafka failure topic (`kafka://topic`, AWS's Kafka-topic destination format).
//! - [`parse`]: invocation records → failed batches; events → records (pure).
//! - [`kafka`]: an SQS/SNS record holds offsets only: they are read back from the mapping's cluster with an
//!   assigned consumer (no group joined, nothing committed); the failure topic is read and committed here.
//! - [`select`]: the filters, what retention deleted, and **when an item may leave its source** (pure).
//! - [`run`]: each batch rebuilt in AWS's event shape ([`crate::event`]), sent to the target through
//!   [`crate::invoke`], judged as the relay judges an invocation ([`crate::outcome::classify`]), then the
//!   item removed (SQS), checkpointed (S3 marker object, failure-topic group commit) or kept.
//! - [`aws`]: the SQS and S3 calls; [`error`]: one variant per failing call.
//!
//! The summary (stdout, JSON) counts what was found, redriven, failed, skipped by a filter and missing
//! from Kafka, and lists each missing offset range with its reason: nothing is skipped silently.

pub mod aws;
mod error;
pub mod kafka;
pub mod parse;
mod run;
pub mod select;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use error::RedriveError;
pub use run::redrive;
pub use select::{Filters, Missing, MissingReason};

use crate::config::{Mapping, RelayConfig};

/// Default prefix, in the source bucket, of the S3 checkpoint markers.
pub const DEFAULT_CHECKPOINT_PREFIX: &str = "kafka-lambda-relay-redrive/";

/// Where the invocation records are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An SQS queue URL.
    Sqs {
        /// The queue URL.
        url: String,
    },
    /// An S3 prefix.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty).
        prefix: String,
    },
    /// A Kafka failure topic on the mapping's cluster.
    Kafka {
        /// The topic.
        topic: String,
    },
}

impl Source {
    /// `https://sqs.../queue` (or `http://` for emulators), `s3://bucket/prefix`, `kafka://topic`.
    pub fn parse(value: &str) -> Result<Self, RedriveError> {
        let invalid = || RedriveError::InvalidSource { value: value.to_string() };
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid());
            }
            return Ok(Source::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() });
        }
        if let Some(topic) = value.strip_prefix("kafka://") {
            if topic.is_empty() || topic.contains('/') {
                return Err(invalid());
            }
            return Ok(Source::Kafka { topic: topic.to_string() });
        }
        if value.starts_with("https://") || value.starts_with("http://") {
            return Ok(Source::Sqs { url: value.to_string() });
        }
        Err(invalid())
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Sqs { url } => f.write_str(url),
            Source::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Source::Kafka { topic } => write!(f, "kafka://{topic}"),
        }
    }
}

/// How a redrive behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the records are.
    pub source: Source,
    /// Invoke this function instead of the mapping's `FunctionName`.
    pub function: Option<String>,
    /// Print what would be sent; invoke nothing, remove nothing.
    pub dry_run: bool,
    /// At most this many invocations per second.
    pub rate: Option<f64>,
    /// Which records to redrive.
    pub filters: Filters,
    /// The target's timeout; read with `GetFunctionConfiguration` when absent.
    pub target_timeout: Option<Duration>,
    /// S3: where checkpoint markers go, in the source bucket.
    pub checkpoint_prefix: String,
    /// Kafka: the consumer group whose commits checkpoint the failure topic; default
    /// `kafka-lambda-relay-redrive-<topic>`.
    pub group: Option<String>,
    /// A progress line on stderr after each batch.
    pub progress: bool,
}

impl Options {
    /// Options for `source` with every default.
    pub fn new(source: Source) -> Self {
        Self {
            source,
            function: None,
            dry_run: false,
            rate: None,
            filters: Filters::default(),
            target_timeout: None,
            checkpoint_prefix: DEFAULT_CHECKPOINT_PREFIX.to_string(),
            group: None,
            progress: false,
        }
    }
}

/// What a redrive talks to.
#[derive(Clone)]
pub struct Services {
    /// Lambda.
    pub invoker: Arc<dyn crate::invoke::Invoke>,
    /// SQS and S3 clients are built from this.
    pub sdk_config: aws_config::SdkConfig,
    /// Secrets Manager, for the mapping's `SourceAccessConfigurations`.
    pub secrets: Arc<dyn crate::auth::SecretSource>,
}

/// The JSON summary printed at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Summary {
    /// The source, as given.
    pub source: String,
    /// The function invoked (or that would have been).
    pub function: String,
    /// `--dry-run`.
    pub dry_run: bool,
    /// Invocation records read.
    pub batches_found: usize,
    /// Records those batches hold (read back from Kafka for SQS/SNS records).
    pub records_found: usize,
    /// Batches whose invocation succeeded.
    pub batches_redriven: usize,
    /// Records those invocations carried.
    pub records_redriven: usize,
    /// Batches whose invocation failed (kept in the source).
    pub batches_failed: usize,
    /// Records those invocations carried.
    pub records_failed: usize,
    /// Batches with no record left after the filters.
    pub batches_skipped_by_filter: usize,
    /// Records `--since`/`--until`/`--partition` left out.
    pub records_skipped_by_filter: usize,
    /// Records in an SQS/SNS record's offset range that the mapping's `FilterCriteria` drops (they were
    /// never part of the failed batch).
    pub records_filtered_by_mapping: usize,
    /// Offsets named by records that Kafka no longer has (see `Missing`).
    pub records_missing: usize,
    /// S3 objects a checkpoint marks as redriven already.
    pub batches_already_redriven: usize,
    /// Items removed: SQS messages deleted, S3 checkpoints written, failure-topic messages committed.
    pub removed: usize,
    /// Items left where they were.
    pub kept: usize,
    /// Items that are not invocation records the redrive understands (kept).
    pub unreadable: usize,
    /// Every missing offset range, with its reason.
    pub missing: Vec<Missing>,
    /// Every failed or unreadable item, with why.
    pub failures: Vec<ItemFailure>,
    /// `--dry-run`: what would have been sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_send: Vec<WouldSend>,
}

impl Summary {
    /// Exit status 1 when a batch failed or an item could not be read.
    pub fn has_failures(&self) -> bool {
        !self.failures.is_empty()
    }

    /// One line for a terminal.
    pub fn progress_line(&self) -> String {
        format!(
            "redrive: {} batch(es) read, {} redriven ({} records), {} failed, {} records skipped by filter, \
             {} offsets missing",
            self.batches_found,
            self.batches_redriven,
            self.records_redriven,
            self.batches_failed,
            self.records_skipped_by_filter,
            self.records_missing
        )
    }
}

/// An item that failed or could not be read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ItemFailure {
    /// SQS message id, S3 key or `topic-partition@offset`.
    pub item: String,
    /// Why.
    pub reason: String,
}

/// A batch a dry run would have sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WouldSend {
    /// SQS message id, S3 key or `topic-partition@offset`.
    pub item: String,
    /// The function.
    pub function: String,
    /// Records in the event.
    pub records: usize,
    /// The event.
    pub event: serde_json::Value,
}

/// The mapping `uuid` names, or the only one.
pub fn choose_mapping<'a>(config: &'a RelayConfig, uuid: Option<&str>) -> Result<&'a Mapping, RedriveError> {
    match (uuid, config.mappings.as_slice()) {
        (_, []) => Err(RedriveError::NoMappings),
        (Some(uuid), mappings) => mappings
            .iter()
            .find(|m| m.uuid() == uuid)
            .ok_or_else(|| RedriveError::UnknownMapping { uuid: uuid.to_string() }),
        (None, [only]) => Ok(only),
        (None, mappings) => Err(RedriveError::MappingNotChosen {
            count: mappings.len(),
            uuids: mappings.iter().map(|m| format!("{:?}", m.uuid())).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// `--since` / `--until`: RFC 3339 or Unix milliseconds.
pub fn parse_time(option: &'static str, value: &str) -> Result<i64, RedriveError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| RedriveError::InvalidTime { option, value: value.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_from_their_three_forms() {
        assert_eq!(
            Source::parse("https://sqs.us-east-1.amazonaws.com/1/dlq").unwrap(),
            Source::Sqs { url: "https://sqs.us-east-1.amazonaws.com/1/dlq".into() }
        );
        assert_eq!(
            Source::parse("s3://bucket/kafka-lambda-relay/m-1/").unwrap(),
            Source::S3 { bucket: "bucket".into(), prefix: "kafka-lambda-relay/m-1/".into() }
        );
        assert_eq!(Source::parse("s3://bucket").unwrap(), Source::S3 { bucket: "bucket".into(), prefix: "".into() });
        assert_eq!(Source::parse("kafka://failed").unwrap(), Source::Kafka { topic: "failed".into() });
        for bad in ["s3://", "kafka://", "kafka://a/b", "arn:aws:sqs:us-east-1:1:q", "dlq"] {
            assert!(matches!(Source::parse(bad), Err(RedriveError::InvalidSource { .. })), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_unix_milliseconds() {
        assert_eq!(parse_time("--since", "1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_time("--since", "2019-11-14T00:38:04.835Z").unwrap(), 1_573_691_884_835);
        let error = parse_time("--until", "yesterday").unwrap_err();
        assert_eq!(
            error.to_string(),
            "--until \"yesterday\" is neither an RFC 3339 time (2026-11-30T12:00:00Z) nor Unix milliseconds"
        );
    }

    #[test]
    fn a_mapping_is_chosen_by_uuid_or_alone() {
        let mapping = |uuid: &str| {
            serde_json::json!({"UUID": uuid, "FunctionName": "f", "Topics": ["t"], "StartingPosition": "LATEST",
                "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b:9092"]}}})
        };
        let one = RelayConfig::from_json(&serde_json::json!({"Mappings": [mapping("a")]}).to_string()).unwrap();
        assert_eq!(choose_mapping(&one, None).unwrap().uuid(), "a");
        let two =
            RelayConfig::from_json(&serde_json::json!({"Mappings": [mapping("a"), mapping("b")]}).to_string()).unwrap();
        assert_eq!(choose_mapping(&two, Some("b")).unwrap().uuid(), "b");
        assert!(matches!(choose_mapping(&two, None), Err(RedriveError::MappingNotChosen { count: 2, .. })));
        assert!(matches!(choose_mapping(&two, Some("c")), Err(RedriveError::UnknownMapping { .. })));
    }
}
