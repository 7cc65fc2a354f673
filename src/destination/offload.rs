//! Large records, opt-in (`RelayExtensions.LargeRecordOffload`, not an AWS feature): a record whose event
//! alone would exceed 6 MB is not given up with `MaximumPayloadSizeExceeded` but stored in S3, and the
//! target gets the record with a **pointer in place of its value**:
//!
//! - the object: `<KeyPrefix><mapping UUID>/<topic>-<partition>/<offset, 20 digits>`, holding the record's
//!   value byte for byte (the key is deterministic, so storing it again after a failure rewrites the same
//!   object);
//! - the record in the event: same topic, partition, offset, timestamp, key and headers, plus the header
//!   [`POINTER_HEADER`] (`"s3"`); its `value` is the base64 of the JSON [`Pointer`]
//!   `{"bucket":"...","key":"...","size":N}`.
//!
//! **The object is written before the pointer event is invoked**, and the offset commits only after that
//! invocation succeeded (or the record was handed to the on-failure destination, as for any record: then
//! the destination gets the pointer record and event too). A failed `PutObject` is an invocation (or a
//! destination write) that did not happen: the record stays uncommitted and is tried again with the
//! transient backoff, the partition waiting behind it, as after a throttle.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AwsError, S3Put};
use crate::event::EventSource;
use crate::kafka::Record;

/// Header added to a record whose value was replaced by a [`Pointer`].
pub const POINTER_HEADER: &str = "kafka-lambda-relay-large-record";

/// The default `KeyPrefix`.
pub const DEFAULT_KEY_PREFIX: &str = "kafka-lambda-relay/large-records/";

/// Where a record's value was stored: the decoded `value` of a record carrying [`POINTER_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The S3 bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The value's size in bytes.
    pub size: usize,
}

/// Stores oversized records' values in one bucket.
#[derive(Clone)]
pub struct LargeRecordOffload {
    client: Arc<dyn S3Put>,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for LargeRecordOffload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeRecordOffload").field("bucket", &self.bucket).field("prefix", &self.prefix).finish()
    }
}

/// `PutObject` of an oversized record's value failed.
#[derive(Debug, thiserror::Error)]
#[error("large-record offload: s3 PutObject to bucket {bucket:?} key {key:?} failed: {source}")]
pub struct OffloadError {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// What S3 said.
    #[source]
    pub source: AwsError,
}

impl LargeRecordOffload {
    /// The offload `settings` describe, writing through `client`.
    pub fn new(settings: &crate::config::LargeRecordOffload, client: Arc<dyn S3Put>) -> Self {
        Self {
            client,
            bucket: settings.bucket.clone(),
            prefix: settings.key_prefix.clone().unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string()),
        }
    }

    /// The object key of `record`'s value.
    pub fn object_key(&self, mapping_uuid: &str, record: &Record) -> String {
        format!("{}{mapping_uuid}/{}/{:020}", self.prefix, record.key_partition, record.offset)
    }

    /// `record` with its value replaced by the pointer to `key` (and [`POINTER_HEADER`] added).
    pub fn pointer_record(&self, key: &str, record: &Record) -> Record {
        let size = record.value.as_ref().map_or(0, Vec::len);
        let pointer = Pointer { bucket: self.bucket.clone(), key: key.to_string(), size };
        let mut headers = record.headers.clone();
        headers.push((POINTER_HEADER.to_string(), b"s3".to_vec()));
        Record::new(
            record.key_partition.clone(),
            record.offset,
            record.timestamp_ms,
            record.timestamp_type,
            record.key.clone(),
            Some(serde_json::to_vec(&pointer).expect("the pointer serializes")),
            headers,
        )
    }

    /// Whether the pointer event of `record` fits in `max_payload` bytes (a record oversized by its key or
    /// headers rather than its value still cannot be sent, and is given up as AWS does).
    pub fn fits(&self, source: &EventSource, mapping_uuid: &str, record: &Record, max_payload: usize) -> bool {
        let pointer = self.pointer_record(&self.object_key(mapping_uuid, record), record);
        source.sizer().with(&pointer) <= max_payload
    }

    /// Stores `record`'s value and returns the pointer record and its event, to use instead of `record`.
    pub async fn store(
        &self,
        source: &EventSource,
        mapping_uuid: &str,
        record: &Record,
    ) -> Result<(Record, Vec<u8>), OffloadError> {
        let key = self.object_key(mapping_uuid, record);
        let value = record.value.clone().unwrap_or_default();
        self.client.put_bytes(&self.bucket, &key, value).await.map_err(|source| OffloadError {
            bucket: self.bucket.clone(),
            key: key.clone(),
            source,
        })?;
        tracing::info!(bucket = %self.bucket, key = %key, record = %format!("{}@{}", record.key_partition, record.offset), "large record stored in S3; invoking with a pointer");
        let pointer = self.pointer_record(&key, record);
        let event = source.encode(std::slice::from_ref(&pointer));
        Ok((pointer, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{PartitionKey, TimestampType};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Bucket {
        objects: Mutex<Vec<(String, String, Vec<u8>)>>,
        fail: Mutex<Option<AwsError>>,
    }

    #[async_trait::async_trait]
    impl S3Put for Bucket {
        async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), AwsError> {
            if let Some(error) = self.fail.lock().unwrap().take() {
                return Err(error);
            }
            self.objects.lock().unwrap().push((bucket.into(), key.into(), body));
            Ok(())
        }
    }

    fn source() -> EventSource {
        EventSource { event_source: "SelfManagedKafka".into(), event_source_arn: None, bootstrap_servers: "b:9092".into() }
    }

    fn big() -> Record {
        let value: Vec<u8> = (0..7_000_000u32).map(|i| (i % 251) as u8).collect();
        Record::new(PartitionKey::new("orders", 2), 77, 1_700_000_000_000, TimestampType::CreateTime, Some(b"k".to_vec()), Some(value), vec![("h".into(), b"v".to_vec())])
    }

    fn offload(bucket: Arc<Bucket>) -> LargeRecordOffload {
        LargeRecordOffload::new(&crate::config::LargeRecordOffload { bucket: "big".into(), key_prefix: None }, bucket)
    }

    #[tokio::test]
    async fn the_value_goes_to_s3_and_the_event_carries_a_pointer() -> Result<(), Box<dyn std::error::Error>> {
        use base64::Engine as _;
        let bucket = Arc::new(Bucket::default());
        let offload = offload(bucket.clone());
        let record = big();
        assert!(offload.fits(&source(), "m-1", &record, crate::config::MAX_PAYLOAD_BYTES));
        let (pointer_record, event) = offload.store(&source(), "m-1", &record).await?;
        assert_eq!((pointer_record.offset, pointer_record.key.as_deref()), (77, Some(&b"k"[..])));
        assert!(event.len() < 2_000, "{} bytes", event.len());
        let objects = bucket.objects.lock().unwrap().clone();
        assert_eq!(objects.len(), 1);
        let (name, key, body) = &objects[0];
        assert_eq!((name.as_str(), key.as_str()), ("big", "kafka-lambda-relay/large-records/m-1/orders-2/00000000000000000077"));
        assert!(body == record.value.as_ref().unwrap(), "the object is the value byte for byte");
        let event: serde_json::Value = serde_json::from_slice(&event)?;
        let sent = &event["records"]["orders-2"][0];
        assert_eq!((sent["offset"].as_i64(), sent["key"].as_str()), (Some(77), Some("aw==")));
        let pointer: Pointer = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(sent["value"].as_str().unwrap())?)?;
        assert_eq!(pointer, Pointer { bucket: "big".into(), key: key.clone(), size: 7_000_000 });
        assert_eq!(sent["headers"][1][POINTER_HEADER], serde_json::json!([115, 51]));
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_put_is_an_error_and_stores_nothing() {
        let bucket = Arc::new(Bucket::default());
        *bucket.fail.lock().unwrap() = Some(AwsError::service("NoSuchBucket", 404, "missing"));
        let error = offload(bucket.clone()).store(&source(), "m-1", &big()).await.expect_err("put fails");
        assert_eq!(error.source.code(), "NoSuchBucket");
        assert!(error.to_string().contains("bucket \"big\""), "{error}");
        assert!(bucket.objects.lock().unwrap().is_empty());
    }
}
