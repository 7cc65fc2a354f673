//! Schema registries: Avro, Protobuf and JSON Schema records decoded through AWS Glue or a
//! Confluent-compatible registry, as AWS's provisioned-mode Kafka mappings do (`SchemaRegistryConfig`).
//!
//! **Where it runs**: [`Decoder::decode`] is called for every polled record of a mapping with a
//! `SchemaRegistryConfig`, before filtering, so `FilterCriteria` match decoded fields. It returns the record
//! with the parts named in `SchemaValidationConfigs` replaced — by the decoded JSON for
//! `EventRecordFormat: JSON`, by the payload without its framing for `SOURCE` — and with AWS's
//! `keySchemaMetadata` / `valueSchemaMetadata` (`{"dataFormat", "schemaId"}`) in the record's event JSON.
//! A null key or value has nothing to decode and passes through unchanged.
//!
//! **Undecodable records**: a [`DecodeFailure`] carries the record back with the reason AWS documents:
//! `SCHEMA_NOT_FOUND` (the registry has no such schema) or `DESERIALIZATION_ERROR` (bad framing, bytes that
//! do not decode, a JSON Schema violation, a schema that does not compile). [`disposition`] says what the
//! engine does with it: such a record is given up at once, never invoked, to the on-failure destination;
//! without a destination AWS discards it, and so does the relay (logged, committed past).
//!
//! **Registry outages** are retried with backoff inside the lookup ([`RetryPolicy`]); one that outlasts the
//! retries, like a registry that refuses the relay's credentials or answers with an error, is not a record
//! failure: [`disposition`] says *hold* (deliver nothing at or after the record in its
//! partition this run, commit nothing past it; the next run retries), until the record is older than the
//! mapping's `MaximumRecordAgeInSeconds`, when it is given up as `RetryAttemptsExhausted`.
//!
//! Schemas are fetched once per run and cached by id / version UUID ([`SchemaCache`]).

pub mod confluent;
pub mod format;
pub mod glue;
pub mod registry;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

pub use format::{CompiledSchema, DataFormat, Decoded, Framing, RegisteredSchema};
pub use registry::{LookupError, RegistryError, RetryPolicy, SchemaCache, SchemaRef, SchemaRegistry};

use crate::config::{EventRecordFormat, KafkaSchemaRegistryConfig, SchemaValidationAttribute};
use crate::destination::Condition;
use crate::kafka::{Record, SchemaMetadata};

/// Building a mapping's registry client failed: a configuration or secret problem, fixed in the mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A secret named in `AccessConfigs` could not be read or has the wrong shape (the message names the
    /// ARN and field, never a value).
    #[error("schema registry secret: {0}")]
    Secret(String),
    /// A certificate or key does not load.
    #[error("schema registry TLS: {0}")]
    Tls(String),
    /// Something the relay does not implement.
    #[error("schema registry: {0} is not supported")]
    Unsupported(String),
}

/// AWS's reason for an undecodable record, written with it to the on-failure destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The registry has no schema with the record's id.
    SchemaNotFound,
    /// The record's bytes do not decode or validate with its schema.
    DeserializationError,
    /// The registry stayed unreachable, refused the relay's credentials, or answered with an error: not a
    /// record failure (see [`disposition`]).
    RegistryUnavailable,
}

impl Reason {
    /// `SCHEMA_NOT_FOUND`, `DESERIALIZATION_ERROR` (AWS's codes) or `REGISTRY_UNAVAILABLE` (the relay's,
    /// for logs only: such records are held, not given up with this code).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SchemaNotFound => "SCHEMA_NOT_FOUND",
            Reason::DeserializationError => "DESERIALIZATION_ERROR",
            Reason::RegistryUnavailable => "REGISTRY_UNAVAILABLE",
        }
    }
}

/// Why one part of a record did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes lack the registry's framing.
    #[error(transparent)]
    Framing(#[from] wire::FramingError),
    /// The schema could not be had.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The payload does not decode or validate.
    #[error(transparent)]
    Payload(#[from] format::PayloadError),
}

impl DecodeError {
    /// AWS's reason for this error: the one place it is decided.
    pub fn reason(&self) -> Reason {
        match self {
            DecodeError::Lookup(LookupError::Registry(RegistryError::NotFound { .. })) => Reason::SchemaNotFound,
            // A schema the relay cannot use (references, an unknown type) is one it cannot decode with.
            DecodeError::Lookup(LookupError::Registry(RegistryError::Unsupported { .. })) => {
                Reason::DeserializationError
            }
            // Refused credentials, a malformed or failed answer: the registry's (or the mapping's) fault, not
            // the record's. Giving records up for it would empty a topic into the destination over a typo.
            DecodeError::Lookup(LookupError::Registry(_)) | DecodeError::Lookup(LookupError::Unavailable(_)) => {
                Reason::RegistryUnavailable
            }
            DecodeError::Lookup(LookupError::Compile(_)) | DecodeError::Framing(_) | DecodeError::Payload(_) => {
                Reason::DeserializationError
            }
        }
    }
}

/// A record that did not decode, handed back whole for the engine to give up (or hold).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeFailure {
    /// The record as polled.
    pub record: Box<Record>,
    /// Which part failed.
    pub attribute: SchemaValidationAttribute,
    /// Why.
    pub error: DecodeError,
}

impl DecodeFailure {
    /// AWS's reason.
    pub fn reason(&self) -> Reason {
        self.error.reason()
    }
}

impl std::fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} at offset {} of {}: {}",
            self.reason().as_str(),
            self.attribute.as_str(),
            self.record.offset,
            self.record.key_partition,
            self.error
        )
    }
}

/// What the engine does with a [`DecodeFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Give the record up now, uninvoked, with this condition in the invocation record:
    /// `SCHEMA_NOT_FOUND`, `DESERIALIZATION_ERROR`, or `RetryAttemptsExhausted` for a registry outage that
    /// outlived the record's maximum age.
    GiveUp(Condition),
    /// Keep the record: deliver nothing at or after it in its partition this run and commit nothing past
    /// it, so the next run decodes it again.
    Hold,
}

/// The decision for an undecodable record. A bad record is given up at once, as AWS does (retrying cannot
/// change its bytes or the registry's answer). A registry outage is not the record's fault: it is held
/// until it is older than `MaximumRecordAgeInSeconds`, the only limit that applies to a record never
/// invoked.
pub fn disposition(failure: &DecodeFailure, now_ms: i64, max_age: Option<Duration>) -> Disposition {
    match failure.reason() {
        Reason::SchemaNotFound => Disposition::GiveUp(Condition::SchemaNotFound),
        Reason::DeserializationError => Disposition::GiveUp(Condition::DeserializationError),
        Reason::RegistryUnavailable => {
            let age_ms = now_ms.saturating_sub(failure.record.timestamp_ms);
            match max_age {
                Some(max) if age_ms > max.as_millis() as i64 => Disposition::GiveUp(Condition::RetryAttemptsExhausted),
                _ => Disposition::Hold,
            }
        }
    }
}

/// A mapping's decoding stage: its registry (through a per-run [`SchemaCache`]), which parts to decode and
/// how to hand them on. Create one per mapping per run.
#[derive(Debug)]
pub struct Decoder {
    cache: SchemaCache,
    framing: Framing,
    format: EventRecordFormat,
    key: bool,
    value: bool,
}

impl Decoder {
    /// A decoder for `config` over `registry`. The framing follows the registry: Glue's header for a Glue
    /// registry ARN, Confluent's for a registry URL.
    pub fn new(config: &KafkaSchemaRegistryConfig, registry: Arc<dyn SchemaRegistry>, retry: RetryPolicy) -> Self {
        Self {
            cache: SchemaCache::new(registry, retry),
            framing: if config.is_glue() { Framing::Glue } else { Framing::Confluent },
            format: config.event_record_format.unwrap_or(EventRecordFormat::Json),
            key: config.validates(SchemaValidationAttribute::Key),
            value: config.validates(SchemaValidationAttribute::Value),
        }
    }

    /// The decoder for `mapping`, if it has a `SchemaRegistryConfig`: a Glue client in the registry's
    /// region, or a Confluent client with the secrets of its `AccessConfigs`.
    pub async fn for_mapping(
        mapping: &crate::config::Mapping,
        sdk_config: &aws_config::SdkConfig,
        secrets: &dyn crate::auth::SecretSource,
    ) -> Result<Option<Self>, SetupError> {
        let Some(config) = mapping.schema_registry_config() else {
            return Ok(None);
        };
        let registry: Arc<dyn SchemaRegistry> = if config.is_glue() {
            let (region, name) = crate::config::glue_registry_arn(&config.schema_registry_uri)
                .ok_or_else(|| SetupError::Unsupported(format!("registry ARN {:?}", config.schema_registry_uri)))?;
            Arc::new(glue::GlueRegistry::new(sdk_config, region, name))
        } else {
            Arc::new(
                confluent::ConfluentRegistry::connect(&config.schema_registry_uri, &config.access_configs, secrets)
                    .await?,
            )
        };
        Ok(Some(Self::new(config, registry, RetryPolicy::default())))
    }

    /// Decodes and validates `record`'s key and/or value; see the module docs for what comes back.
    pub async fn decode(&self, record: Record) -> Result<Record, DecodeFailure> {
        self.decode_with_filter_view(record).await.map(|(record, _)| record)
    }

    /// [`Self::decode`], plus, for `EventRecordFormat: SOURCE`, the record with its decoded parts as JSON:
    /// what `FilterCriteria` match, since AWS filters on the decoded record whatever format it delivers.
    /// `None` when the delivered record is itself the JSON one (or nothing was decoded).
    pub async fn decode_with_filter_view(&self, record: Record) -> Result<(Record, Option<Record>), DecodeFailure> {
        let (mut key, mut value) = (record.key.clone(), record.value.clone());
        let (mut key_json, mut value_json) = (None, None);
        let (mut key_metadata, mut value_metadata) = (None, None);
        for (attribute, wanted, part, json, metadata) in [
            (SchemaValidationAttribute::Key, self.key, &mut key, &mut key_json, &mut key_metadata),
            (SchemaValidationAttribute::Value, self.value, &mut value, &mut value_json, &mut value_metadata),
        ] {
            let Some(bytes) = part.as_deref().filter(|_| wanted) else {
                continue;
            };
            match self.decode_part(bytes).await {
                Ok((decoded, schema)) => {
                    *part = Some(match self.format {
                        EventRecordFormat::Json => serde_json::to_vec(&decoded.json).expect("JSON values serialize"),
                        EventRecordFormat::Source => decoded.source,
                    });
                    if self.format == EventRecordFormat::Source {
                        *json = Some(serde_json::to_vec(&decoded.json).expect("JSON values serialize"));
                    }
                    *metadata = Some(schema);
                }
                Err(error) => return Err(DecodeFailure { record: Box::new(record), attribute, error }),
            }
        }
        if key_metadata.is_none() && value_metadata.is_none() {
            return Ok((record, None));
        }
        let rebuild = |key: Option<Vec<u8>>, value: Option<Vec<u8>>, headers: Vec<(String, Vec<u8>)>| {
            Record::with_schema_metadata(
                record.key_partition.clone(),
                record.offset,
                record.timestamp_ms,
                record.timestamp_type,
                key,
                value,
                headers,
                key_metadata.clone(),
                value_metadata.clone(),
            )
        };
        let view = (key_json.is_some() || value_json.is_some()).then(|| {
            rebuild(key_json.or_else(|| key.clone()), value_json.or_else(|| value.clone()), record.headers.clone())
        });
        let delivered = rebuild(key, value, record.headers.clone());
        Ok((delivered, view))
    }

    /// One part's decoded forms and its schema metadata.
    async fn decode_part(&self, bytes: &[u8]) -> Result<(Decoded, SchemaMetadata), DecodeError> {
        let (id, payload) = match self.framing {
            Framing::Confluent => {
                let frame = wire::confluent(bytes)?;
                (SchemaRef::Confluent(frame.schema_id), std::borrow::Cow::Borrowed(frame.payload))
            }
            Framing::Glue => {
                let frame = wire::glue(bytes)?;
                (SchemaRef::Glue(frame.schema_version_id), frame.payload)
            }
        };
        let schema = self.cache.get(id).await?;
        let decoded = schema.decode(&payload, self.framing)?;
        Ok((decoded, SchemaMetadata { data_format: schema.format().as_str().to_string(), schema_id: id.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::format::tests::{avro_order, proto_order, AVRO_ORDER, JSON_ORDER, PROTO_ORDER};
    use super::registry::tests::{fast_retry, ScriptedRegistry};
    use super::wire::tests::{confluent_frame, glue_frame};
    use super::*;
    use crate::kafka::{PartitionKey, TimestampType};
    use base64::Engine as _;

    const GLUE_ID: &str = "0f8e8a3c-3b8e-4a51-9c55-0d5c7a7e1b11";

    fn registry_config(uri: &str, format: &str, attributes: &[&str]) -> KafkaSchemaRegistryConfig {
        serde_json::from_value(serde_json::json!({
            "SchemaRegistryURI": uri,
            "EventRecordFormat": format,
            "SchemaValidationConfigs": attributes.iter().map(|a| serde_json::json!({"Attribute": a})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn registry() -> Arc<ScriptedRegistry> {
        let mut registry = ScriptedRegistry::default();
        let glue = SchemaRef::Glue(uuid::Uuid::parse_str(GLUE_ID).unwrap());
        for (id, format, text) in [
            (SchemaRef::Confluent(1), DataFormat::Avro, AVRO_ORDER),
            (SchemaRef::Confluent(2), DataFormat::Protobuf, PROTO_ORDER),
            (SchemaRef::Confluent(3), DataFormat::Json, JSON_ORDER),
            (SchemaRef::Confluent(4), DataFormat::Avro, r#""string""#),
            (glue, DataFormat::Avro, AVRO_ORDER),
        ] {
            registry.schemas.insert(id, RegisteredSchema::new(format, text));
        }
        Arc::new(registry)
    }

    fn record(key: Option<Vec<u8>>, value: Option<Vec<u8>>) -> Record {
        Record::new(
            PartitionKey::new("orders", 0),
            5,
            1_700_000_000_000,
            TimestampType::CreateTime,
            key,
            value,
            vec![("h".into(), b"v".to_vec())],
        )
    }

    fn event_record(record: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        record.write_json(&mut out);
        serde_json::from_slice(&out).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[tokio::test]
    async fn confluent_avro_value_becomes_json_with_value_schema_metadata() {
        let decoder =
            Decoder::new(&registry_config("http://registry:8081", "JSON", &["VALUE"]), registry(), fast_retry(1));
        let polled = record(Some(b"k1".to_vec()), Some(confluent_frame(1, &avro_order())));
        let decoded = decoder.decode(polled).await.unwrap();
        let expected_value = br#"{"id":42,"note":"rush","status":"PAID"}"#;
        assert_eq!(decoded.value.as_deref(), Some(&expected_value[..]));
        assert_eq!(decoded.key.as_deref(), Some(&b"k1"[..]));
        // The golden shape: AWS's record fields, then valueSchemaMetadata only (the key was not validated).
        assert_eq!(
            event_record(&decoded),
            serde_json::json!({
                "topic": "orders", "partition": 0, "offset": 5, "timestamp": 1_700_000_000_000i64,
                "timestampType": "CREATE_TIME", "key": b64(b"k1"), "value": b64(expected_value),
                "headers": [{"h": [118]}],
                "valueSchemaMetadata": {"dataFormat": "AVRO", "schemaId": "1"}
            })
        );
        assert_eq!(decoded.encoded_len(), serde_json::to_vec(&event_record(&decoded)).unwrap().len());
    }

    #[tokio::test]
    async fn source_format_strips_framing_and_message_indexes() {
        let decoder =
            Decoder::new(&registry_config("https://registry", "SOURCE", &["KEY", "VALUE"]), registry(), fast_retry(1));
        let mut proto = vec![0u8];
        proto.extend(proto_order());
        let key = confluent_frame(4, &[14, b'o', b'r', b'd', b'e', b'r', b'-', b'7']);
        let decoded = decoder.decode(record(Some(key), Some(confluent_frame(2, &proto)))).await.unwrap();
        assert_eq!(decoded.value, Some(proto_order()));
        assert_eq!(decoded.key.as_deref(), Some(&[14, b'o', b'r', b'd', b'e', b'r', b'-', b'7'][..]));
        let json = event_record(&decoded);
        assert_eq!(json["keySchemaMetadata"], serde_json::json!({"dataFormat": "AVRO", "schemaId": "4"}));
        assert_eq!(json["valueSchemaMetadata"], serde_json::json!({"dataFormat": "PROTOBUF", "schemaId": "2"}));
    }

    #[tokio::test]
    async fn glue_zlib_avro_decodes_with_the_version_uuid_as_schema_id() {
        let uri = "arn:aws:glue:us-east-1:123456789012:registry/orders";
        let decoder = Decoder::new(&registry_config(uri, "JSON", &["VALUE"]), registry(), fast_retry(1));
        let id = uuid::Uuid::parse_str(GLUE_ID).unwrap();
        let decoded = decoder.decode(record(None, Some(glue_frame(id, &avro_order(), true)))).await.unwrap();
        let value: serde_json::Value = serde_json::from_slice(decoded.value.as_deref().unwrap()).unwrap();
        assert_eq!(value["status"], "PAID");
        assert_eq!(
            event_record(&decoded)["valueSchemaMetadata"],
            serde_json::json!({"dataFormat": "AVRO", "schemaId": GLUE_ID})
        );
        assert_eq!(event_record(&decoded)["key"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn records_not_validated_or_null_pass_through_unchanged() {
        let decoder = Decoder::new(&registry_config("http://r", "JSON", &["KEY"]), registry(), fast_retry(1));
        let polled = record(None, Some(b"not framed at all".to_vec()));
        assert_eq!(decoder.decode(polled.clone()).await.unwrap(), polled);
    }

    #[tokio::test]
    async fn unknown_schema_is_schema_not_found_and_returns_the_record() {
        let decoder = Decoder::new(&registry_config("http://r", "JSON", &["VALUE"]), registry(), fast_retry(1));
        let polled = record(None, Some(confluent_frame(77, b"\x02")));
        let failure = decoder.decode(polled.clone()).await.unwrap_err();
        assert_eq!(failure.reason(), Reason::SchemaNotFound);
        assert_eq!(*failure.record, polled);
        assert_eq!(failure.attribute, SchemaValidationAttribute::Value);
        assert_eq!(disposition(&failure, polled.timestamp_ms, None), Disposition::GiveUp(Condition::SchemaNotFound));
    }

    #[tokio::test]
    async fn bad_bytes_and_schema_violations_are_deserialization_errors() {
        let decoder = Decoder::new(&registry_config("http://r", "JSON", &["KEY", "VALUE"]), registry(), fast_retry(1));
        for (key, value, attribute) in [
            (Some(b"plain".to_vec()), None, SchemaValidationAttribute::Key),
            (None, Some(confluent_frame(1, &[0xff, 0xff])), SchemaValidationAttribute::Value),
            (None, Some(confluent_frame(3, br#"{"id": 1, "status": "LOST"}"#)), SchemaValidationAttribute::Value),
        ] {
            let failure = decoder.decode(record(key, value)).await.unwrap_err();
            assert_eq!((failure.reason(), failure.attribute), (Reason::DeserializationError, attribute), "{failure}");
            assert_eq!(disposition(&failure, 0, None), Disposition::GiveUp(Condition::DeserializationError));
        }
    }

    #[tokio::test]
    async fn registry_outage_holds_the_record_until_its_maximum_age() {
        let registry = registry();
        registry
            .failures
            .lock()
            .unwrap()
            .extend((0..4).map(|_| RegistryError::Unreachable { id: "1".into(), message: "refused".into() }));
        let decoder = Decoder::new(&registry_config("http://r", "JSON", &["VALUE"]), registry.clone(), fast_retry(2));
        let polled = record(None, Some(confluent_frame(1, &avro_order())));
        let failure = decoder.decode(polled.clone()).await.unwrap_err();
        assert_eq!(failure.reason(), Reason::RegistryUnavailable);
        let young = polled.timestamp_ms + 59_000;
        let old = polled.timestamp_ms + 61_000;
        assert_eq!(disposition(&failure, young, Some(Duration::from_secs(60))), Disposition::Hold);
        assert_eq!(disposition(&failure, old, None), Disposition::Hold);
        assert_eq!(
            disposition(&failure, old, Some(Duration::from_secs(60))),
            Disposition::GiveUp(Condition::RetryAttemptsExhausted)
        );
    }

    #[tokio::test]
    async fn refused_credentials_hold_the_record_instead_of_giving_it_up() {
        let registry = registry();
        registry
            .failures
            .lock()
            .unwrap()
            .push_back(RegistryError::Unauthorized { id: "1".into(), detail: "HTTP 401".into() });
        let decoder = Decoder::new(&registry_config("http://r", "JSON", &["VALUE"]), registry, fast_retry(3));
        let failure = decoder.decode(record(None, Some(confluent_frame(1, &avro_order())))).await.unwrap_err();
        assert_eq!(failure.reason(), Reason::RegistryUnavailable);
        assert_eq!(disposition(&failure, 0, None), Disposition::Hold);
    }

    #[tokio::test]
    async fn with_source_format_filters_see_the_decoded_json_while_the_target_gets_the_source_bytes() {
        let decoder = Decoder::new(&registry_config("http://r", "SOURCE", &["VALUE"]), registry(), fast_retry(1));
        let polled = record(Some(b"k".to_vec()), Some(confluent_frame(1, &avro_order())));
        let (delivered, view) = decoder.decode_with_filter_view(polled).await.unwrap();
        assert_eq!(delivered.value, Some(avro_order()));
        let view = view.expect("a JSON view for filtering");
        assert_eq!(view.value.as_deref(), Some(&br#"{"id":42,"note":"rush","status":"PAID"}"#[..]));
        assert_eq!((view.key.as_deref(), view.offset), (Some(&b"k"[..]), delivered.offset));
        // JSON format: the delivered record is the JSON one; no second view.
        let decoder = Decoder::new(&registry_config("http://r", "JSON", &["VALUE"]), registry(), fast_retry(1));
        let (_, view) =
            decoder.decode_with_filter_view(record(None, Some(confluent_frame(1, &avro_order())))).await.unwrap();
        assert!(view.is_none());
    }

    #[tokio::test]
    async fn decoded_json_is_what_filters_see() {
        let decoder = Decoder::new(&registry_config("http://r", "JSON", &["VALUE"]), registry(), fast_retry(1));
        let decoded = decoder.decode(record(None, Some(confluent_frame(1, &avro_order())))).await.unwrap();
        let filters = |pattern: &str| {
            let criteria =
                crate::config::FilterCriteria { filters: vec![crate::config::Filter { pattern: pattern.into() }] };
            crate::filter::Filters::new(Some(&criteria)).unwrap()
        };
        assert!(filters(r#"{"value": {"status": ["PAID"]}}"#).matches(&decoded));
        assert!(!filters(r#"{"value": {"status": ["NEW"]}}"#).matches(&decoded));
    }
}
