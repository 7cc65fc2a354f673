//! A Kafka topic as on-failure destination (`kafka://<topic>`, AWS's form): the given-up records are
//! produced to a topic on the mapping's own cluster, with the mapping's connection and authentication.
//!
//! What is written follows AWS's "Record format for a Kafka destination": **one message per failed
//! record**, whose value is a JSON document with the failure metadata (`requestContext`,
//! `responseContext`, `version`, `timestamp`, `KafkaBatchInfo` with the record's `recordInfo`) and, in
//! `payload`, the event the target would get for that record alone (a JSON object, AWS's event shape).
//! The message key is the original record's key (AWS: "the same partition key"); a record without a key
//! is produced without one, so the partitioner spreads those. AWS documents no headers for these
//! messages, and the relay writes none: the original headers are in `payload`.
//!
//! **The hand-off is done only when the broker acknowledged every message** (each delivery future
//! resolved `Ok`): the producer is idempotent (`enable.idempotence=true`, which implies `acks=all`), so
//! librdkafka's own retries never duplicate or reorder a message within a partition. Any failed message
//! fails the whole hand-off: nothing is committed, and the next attempt produces every record again, so
//! the failure topic may hold a record twice after a partial failure (at least once, never lost).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::record::{millis_rfc3339, RequestContext};
use super::{DestinationError, GivenUp, ResponseContext};
use crate::auth::DiagnosingContext;
use crate::event::EventSource;
use crate::kafka::Record;

/// How long librdkafka may try to deliver one message (`message.timeout.ms`) before the hand-off fails
/// and the relay's own backoff takes over.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message the producer builds (`message.max.bytes`): one record's event (at most 6 MB) plus
/// the metadata. The failure topic's `max.message.bytes` must allow it too, or the broker refuses the
/// message (`MessageSizeTooLarge`) and the partition waits until the topic is changed.
pub const MAX_KAFKA_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// The metadata of one failed record, as the value of a message in the failure topic (without `payload`,
/// which [`KafkaFailureMessage::to_json`] appends as the event object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaFailureMessage {
    /// Which invocation, of which function, and why the record was given up.
    #[serde(rename = "requestContext")]
    pub request_context: RequestContext,
    /// The last invocation's response; `null` when the record was never invoked.
    #[serde(rename = "responseContext")]
    pub response_context: Option<ResponseContext>,
    /// Always `"1.0"`.
    pub version: String,
    /// When the message was written (RFC 3339, milliseconds, `Z`).
    pub timestamp: String,
    /// The given-up batch, and this message's record.
    #[serde(rename = "KafkaBatchInfo")]
    pub kafka_batch_info: KafkaRecordBatchInfo,
}

/// `KafkaBatchInfo` of a Kafka destination message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRecordBatchInfo {
    /// Records in the given-up batch (one message each).
    pub batch_size: usize,
    /// The MSK cluster ARN; `null` for a self-managed cluster.
    pub event_source_arn: Option<String>,
    /// Comma-separated bootstrap servers.
    pub bootstrap_servers: String,
    /// Size in bytes of this message's `payload` (the event for this record).
    pub payload_size: usize,
    /// This message's record.
    pub record_info: RecordInfo,
}

/// `recordInfo`: the failed record's offset (a string, as AWS writes offsets) and timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordInfo {
    /// The record's offset in its source partition.
    pub offset: String,
    /// The record's timestamp (RFC 3339, milliseconds).
    pub timestamp: String,
}

impl KafkaFailureMessage {
    /// The metadata for `record`, one of `given_up`'s records, written at `now`.
    pub fn new(given_up: &GivenUp<'_>, record: &Record, payload_size: usize, now: OffsetDateTime) -> Self {
        Self {
            request_context: RequestContext {
                request_id: uuid::Uuid::new_v4().to_string(),
                function_arn: given_up.function_arn.to_string(),
                condition: given_up.condition,
                approximate_invoke_count: given_up.approximate_invoke_count,
            },
            response_context: if given_up.condition.uninvoked() { None } else { given_up.response.clone() },
            version: "1.0".to_string(),
            timestamp: super::rfc3339_millis(now),
            kafka_batch_info: KafkaRecordBatchInfo {
                batch_size: given_up.records.len(),
                event_source_arn: given_up.event_source_arn.map(str::to_string),
                bootstrap_servers: given_up.bootstrap_servers.to_string(),
                payload_size,
                record_info: RecordInfo {
                    offset: record.offset.to_string(),
                    timestamp: millis_rfc3339(record.timestamp_ms),
                },
            },
        }
    }

    /// The message value: this metadata with `"payload": <event>` appended, `event` being a JSON object
    /// the relay encoded (so it is spliced in as it is, never parsed again).
    pub fn to_json(&self, event: &[u8]) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("the metadata serializes");
        debug_assert_eq!(out.last(), Some(&b'}'));
        out.pop();
        out.reserve(event.len() + 12);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(event);
        out.push(b'}');
        out
    }
}

/// A `kafka://<topic>` on-failure destination: an idempotent producer on the mapping's cluster.
pub struct KafkaDestination {
    destination: String,
    topic: String,
    source: EventSource,
    producer: FutureProducer<DiagnosingContext>,
}

impl std::fmt::Debug for KafkaDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDestination").field("destination", &self.destination).finish_non_exhaustive()
    }
}

impl KafkaDestination {
    /// The destination `kafka://<topic>` on the cluster `connection` connects to (bootstrap servers and
    /// the mapping's security settings, as the consumer has them); `context` supplies MSK IAM tokens and
    /// redacted logs. `source` is the mapping's event header, for each record's `payload`.
    pub fn new(
        destination: &str,
        connection: &ClientConfig,
        context: DiagnosingContext,
        source: EventSource,
        delivery_timeout: Duration,
    ) -> Result<Self, DestinationError> {
        let Some(topic) = crate::config::kafka_destination_topic(destination) else {
            return Err(DestinationError::InvalidArn { arn: destination.to_string() });
        };
        let mut config = connection.clone();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", delivery_timeout.as_millis().max(1).to_string())
            .set("message.max.bytes", MAX_KAFKA_MESSAGE_BYTES.to_string())
            // Java's partitioner for keyed records, so a key lands where Java producers would put it.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5");
        let producer = config.create_with_context(context).map_err(|error| DestinationError::KafkaProducer {
            topic: topic.to_string(),
            reason: match &error {
                // Never the value: a configuration error may quote a secret.
                KafkaError::ClientConfig(_, description, key, _) => format!("{key}: {description}"),
                other => other.to_string(),
            },
        })?;
        Ok(Self { destination: destination.to_string(), topic: topic.to_string(), source, producer })
    }

    /// The failure topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces one message per record of `given_up` and waits until the broker acknowledged all of them.
    /// `Ok` holds the (partition, offset) of each message in the failure topic, in record order; on `Err`
    /// nothing may be committed.
    pub async fn send(&self, given_up: &GivenUp<'_>) -> Result<Vec<(i32, i64)>, DestinationError> {
        if given_up.records.is_empty() {
            return Err(DestinationError::EmptyBatch);
        }
        let now = OffsetDateTime::now_utc();
        let mut pending = Vec::with_capacity(given_up.records.len());
        for record in given_up.records {
            let event = self.source.encode(std::slice::from_ref(record));
            let value = KafkaFailureMessage::new(given_up, record, event.len(), now).to_json(&event);
            drop(event);
            pending.push((record, self.enqueue(record, value).await?));
        }
        let mut written = Vec::with_capacity(pending.len());
        for (record, delivery) in pending {
            match delivery.await {
                Ok(Ok(delivery)) => written.push((delivery.partition, delivery.offset)),
                Ok(Err((error, _))) => return Err(self.produce_error(record, &error)),
                Err(_canceled) => {
                    return Err(self.produce_error(record, &KafkaError::Canceled));
                }
            }
        }
        Ok(written)
    }

    /// Queues one message, waiting while librdkafka's queue is full.
    async fn enqueue(
        &self,
        record: &Record,
        value: Vec<u8>,
    ) -> Result<rdkafka::producer::DeliveryFuture, DestinationError> {
        loop {
            let mut message = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&value);
            if let Some(key) = &record.key {
                message = message.key(key.as_slice());
            }
            match self.producer.send_result(message) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => return Err(self.produce_error(record, &error)),
            }
        }
    }

    fn produce_error(&self, record: &Record, error: &KafkaError) -> DestinationError {
        DestinationError::kafka_produce(&self.topic, format!("{}@{}", record.key_partition, record.offset), error)
    }

    /// Waits up to `timeout` for queued messages (on shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

#[async_trait::async_trait]
impl crate::relay::FailureSink for KafkaDestination {
    async fn send(&self, given_up: &GivenUp<'_>) -> Result<String, DestinationError> {
        let written = KafkaDestination::send(self, given_up).await?;
        let first = written.first().map(|(p, o)| format!("{p}@{o}")).unwrap_or_default();
        Ok(format!("{} ({} messages, first {first})", self.destination, written.len()))
    }
}

#[cfg(test)]
mod tests {
    use crate::destination::test_support::given_up;
    use super::*;
    use crate::kafka::{PartitionKey, TimestampType};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;
    use rdkafka::Message;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn source() -> EventSource {
        EventSource { event_source: "SelfManagedKafka".into(), event_source_arn: None, bootstrap_servers: "b:9092".into() }
    }

    fn records() -> Vec<Record> {
        vec![
            Record::new(
                PartitionKey::new("orders", 3),
                40,
                1_700_000_000_040,
                TimestampType::CreateTime,
                Some(b"customer-7".to_vec()),
                Some(b"{\"n\":40}".to_vec()),
                vec![("trace".into(), b"abc".to_vec())],
            ),
            Record::new(PartitionKey::new("orders", 3), 41, 1_700_000_000_041, TimestampType::CreateTime, None, None, vec![]),
        ]
    }


    fn destination(bootstrap: &str, topic: &str, timeout: Duration) -> Result<KafkaDestination, DestinationError> {
        let mut connection = ClientConfig::new();
        connection.set("bootstrap.servers", bootstrap).set("log_level", "3");
        let mapping: crate::config::Mapping = serde_json::from_value(serde_json::json!({
            "FunctionName": "f", "Topics": ["orders"], "StartingPosition": "LATEST",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}}
        }))
        .expect("mapping");
        let diagnostics = crate::auth::ConnectionDiagnostics::new(&crate::auth::KafkaSecurity::plaintext(), &mapping);
        let context = DiagnosingContext::new(std::sync::Arc::new(diagnostics));
        KafkaDestination::new(&format!("kafka://{topic}"), &connection, context, source(), timeout)
    }

    fn read_all(bootstrap: &str, topic: &str, expected: usize) -> Vec<rdkafka::message::OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "reader")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut out = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while out.len() < expected && std::time::Instant::now() < until {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                out.push(message.detach());
            }
        }
        out
    }

    #[test]
    fn the_message_value_is_aws_metadata_with_the_records_event_as_payload() -> TestResult {
        let records = records();
        let event = source().encode(&records[..1]);
        let message = KafkaFailureMessage::new(&given_up(&records, b"{}"), &records[0], event.len(), OffsetDateTime::UNIX_EPOCH);
        let value: serde_json::Value = serde_json::from_slice(&message.to_json(&event))?;
        assert_eq!(value["requestContext"]["condition"], "RetryAttemptsExhausted");
        assert_eq!(value["requestContext"]["approximateInvokeCount"], 11);
        assert_eq!(value["responseContext"]["functionError"], "Unhandled");
        assert_eq!(value["version"], "1.0");
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000Z");
        let info = &value["KafkaBatchInfo"];
        assert_eq!(info["batchSize"], 2);
        assert_eq!(info["eventSourceArn"], serde_json::Value::Null);
        assert_eq!(info["payloadSize"], event.len());
        assert_eq!(info["recordInfo"], serde_json::json!({"offset": "40", "timestamp": "2023-11-14T22:13:20.040Z"}));
        let payload: serde_json::Value = serde_json::from_slice(&event)?;
        assert_eq!(value["payload"], payload, "the payload is the event object for this record alone");
        assert_eq!(value["payload"]["records"]["orders-3"][0]["headers"][0]["trace"], serde_json::json!([97, 98, 99]));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_record_is_one_acknowledged_message_keyed_like_the_original() -> TestResult {
        let cluster = MockCluster::new(1)?;
        let bootstrap = cluster.bootstrap_servers();
        cluster.create_topic("orders-failed", 4, 1)?;
        let sink = destination(&bootstrap, "orders-failed", Duration::from_secs(10))?;
        let records = records();
        let written = sink.send(&given_up(&records, b"{}")).await?;
        assert_eq!(written.len(), 2, "one message per record, each acknowledged");
        let messages = read_all(&bootstrap, "orders-failed", 2);
        assert_eq!(messages.len(), 2);
        let mut by_offset: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for message in &messages {
            let value: serde_json::Value = serde_json::from_slice(message.payload().ok_or("no value")?)?;
            assert!(message.headers().is_none(), "AWS documents no headers; the relay writes none");
            by_offset.push((value["KafkaBatchInfo"]["recordInfo"]["offset"].as_str().unwrap_or("").to_string(), message.key().map(<[u8]>::to_vec)));
        }
        by_offset.sort();
        assert_eq!(by_offset, vec![("40".to_string(), Some(b"customer-7".to_vec())), ("41".to_string(), None)]);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_the_broker_refuses_fails_the_hand_off_with_its_code() -> TestResult {
        let cluster = MockCluster::new(1)?;
        let bootstrap = cluster.bootstrap_servers();
        cluster.create_topic("orders-failed", 1, 1)?;
        cluster.topic_error("orders-failed", RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)?;
        let sink = destination(&bootstrap, "orders-failed", Duration::from_secs(3))?;
        let records = records();
        let error = sink.send(&given_up(&records, b"{}")).await.expect_err("the broker refuses the topic");
        assert!(matches!(error, DestinationError::KafkaProduce { .. }), "{error}");
        assert!(error.to_string().contains("orders-failed"), "{error}");
        assert_eq!((error.error_code(), error.retryable()), ("TopicAuthorizationFailed", false), "{error}");
        Ok(())
    }

    #[test]
    fn only_kafka_destinations_are_taken() {
        let error = destination("127.0.0.1:1", "bad topic", Duration::from_secs(1)).expect_err("invalid");
        assert!(matches!(error, DestinationError::InvalidArn { .. }));
    }
}
