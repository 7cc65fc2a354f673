#![cfg(feature = "e2e")]
//! The decoding stage against real registries and real producers' framing: Glue's schema registry on
//! moto_server with records framed by AWS's `aws-glue-schema-registry` serializer, and the Confluent REST
//! API served by `tests/schema/registry_double.py` (a test double: no Confluent-compatible registry
//! installs from the reachable package registries) with records framed by confluent-kafka's serializers.
//!
//! Needs `RELAY_TEST_MOTO` and `RELAY_VENV` (scripts/test.sh sets both).

mod schema;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kafka_lambda_relay::auth::SecretsManagerSource;
use kafka_lambda_relay::config::KafkaSchemaRegistryConfig;
use kafka_lambda_relay::kafka::{PartitionKey, Record, TimestampType};
use kafka_lambda_relay::schema::confluent::ConfluentRegistry;
use kafka_lambda_relay::schema::glue::GlueRegistry;
use kafka_lambda_relay::schema::{Decoder, Reason, RetryPolicy, SchemaRegistry};
use schema::*;
use serde_json::{json, Value};

fn registry_config(uri: &str, format: &str, attributes: &[&str]) -> KafkaSchemaRegistryConfig {
    serde_json::from_value(json!({
        "SchemaRegistryURI": uri,
        "EventRecordFormat": format,
        "SchemaValidationConfigs": attributes.iter().map(|a| json!({"Attribute": a})).collect::<Vec<_>>(),
    }))
    .expect("valid SchemaRegistryConfig")
}

fn record(offset: i64, key: Option<Vec<u8>>, value: Option<Vec<u8>>) -> Record {
    Record::new(
        PartitionKey::new("orders", 0),
        offset,
        1_700_000_000_000,
        TimestampType::CreateTime,
        key,
        value,
        Vec::new(),
    )
}

fn event_json(record: &Record) -> Value {
    let mut out = Vec::new();
    record.write_json(&mut out);
    serde_json::from_slice(&out).expect("record JSON")
}

fn value_json(record: &Record) -> TestResult<Value> {
    Ok(serde_json::from_slice(record.value.as_deref().ok_or("no value")?)?)
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy { attempts: 2, initial: Duration::from_millis(10), max: Duration::from_millis(20) }
}

#[tokio::test]
async fn confluent_kafka_framed_avro_json_and_protobuf_decode_through_the_registry_double() -> TestResult {
    let double = RegistryDouble::start()?;
    let order = |id: i64, status: &str| json!({"id": id, "status": status, "amount": 12.5});
    let mut framed = Vec::new();
    for (format, topic) in [("avro", unique("avro")), ("json", unique("json")), ("protobuf", unique("proto"))] {
        let (records, _) = produce(json!({
            "registry": "confluent", "url": double.url, "topic": topic,
            "records": [{"format": format, "value": order(7, "PAID"), "key": "order-7", "key_avro": true}]
        }))?;
        framed.push((format, records[0].clone()));
    }
    let registry: Arc<dyn SchemaRegistry> = Arc::new(ConfluentRegistry::connect(&double.url, &[], &NoSecrets).await?);
    let json_decoder =
        Decoder::new(&registry_config(&double.url, "JSON", &["KEY", "VALUE"]), registry.clone(), quick_retry());
    let source_decoder = Decoder::new(&registry_config(&double.url, "SOURCE", &["VALUE"]), registry, quick_retry());
    for (offset, (format, (key, value))) in framed.into_iter().enumerate() {
        let value_bytes = value.clone().ok_or("value")?;
        let decoded =
            json_decoder.decode(record(offset as i64, key.clone(), value.clone())).await.map_err(|f| f.to_string())?;
        let expected = match format {
            // Protobuf's JSON mapping writes int64 as a string.
            "protobuf" => json!({"id": "7", "status": "PAID", "amount": 12.5}),
            _ => order(7, "PAID"),
        };
        assert_eq!(value_json(&decoded)?, expected, "{format}");
        assert_eq!(decoded.key.as_deref(), Some(&b"\"order-7\""[..]), "{format}");
        let schema_id = u32::from_be_bytes(value_bytes[1..5].try_into()?);
        let metadata = &event_json(&decoded)["valueSchemaMetadata"];
        let data_format = match format {
            "avro" => "AVRO",
            "json" => "JSON",
            _ => "PROTOBUF",
        };
        assert_eq!(metadata, &json!({"dataFormat": data_format, "schemaId": schema_id.to_string()}));
        assert_eq!(event_json(&decoded)["keySchemaMetadata"]["dataFormat"], "AVRO");
        // SOURCE: the bytes after the 5-byte header, and for Protobuf after the message indexes (one 0 byte
        // for the file's first message, as confluent-kafka writes it).
        let source = source_decoder.decode(record(0, key, value)).await.map_err(|f| f.to_string())?;
        let header = if format == "protobuf" { 6 } else { 5 };
        assert_eq!(source.value.as_deref(), Some(&value_bytes[header..]), "{format}");
    }
    Ok(())
}

#[tokio::test]
async fn unknown_schema_ids_and_invalid_json_are_undecodable_with_awss_reasons() -> TestResult {
    let double = RegistryDouble::start()?;
    let topic = unique("json");
    let (records, _) = produce(json!({
        "registry": "confluent", "url": double.url, "topic": topic,
        "records": [{"format": "json", "value": {"id": 1, "status": "NEW", "amount": 1}}]
    }))?;
    let good = records[0].1.clone().ok_or("value")?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(ConfluentRegistry::connect(&double.url, &[], &NoSecrets).await?);
    let decoder = Decoder::new(&registry_config(&double.url, "JSON", &["VALUE"]), registry, quick_retry());
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&9999u32.to_be_bytes());
    let failure = decoder.decode(record(1, None, Some(unknown))).await.expect_err("schema 9999 does not exist");
    assert_eq!(failure.reason(), Reason::SchemaNotFound);
    // The same schema id, a payload that breaks the schema's enum.
    let mut invalid = good[..5].to_vec();
    invalid.extend_from_slice(br#"{"id": 1, "status": "LOST", "amount": 1}"#);
    let failure = decoder.decode(record(2, None, Some(invalid))).await.expect_err("LOST is not in the enum");
    assert_eq!(failure.reason(), Reason::DeserializationError);
    Ok(())
}

#[tokio::test]
async fn a_registry_outage_is_retried_with_backoff_and_recovered_from() -> TestResult {
    let double = RegistryDouble::start()?;
    let (records, _) = produce(json!({
        "registry": "confluent", "url": double.url, "topic": unique("avro"),
        "records": [{"format": "avro", "value": {"id": 3, "status": "NEW", "amount": 2.0}}]
    }))?;
    double.set_down(true)?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(ConfluentRegistry::connect(&double.url, &[], &NoSecrets).await?);
    let retry = RetryPolicy { attempts: 20, initial: Duration::from_millis(100), max: Duration::from_millis(200) };
    let decoder = Decoder::new(&registry_config(&double.url, "JSON", &["VALUE"]), registry, retry);
    let dir = double.dir.clone();
    let recovery = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        std::fs::remove_file(dir.join("down"))
    });
    let decoded = decoder.decode(record(0, None, records[0].1.clone())).await.map_err(|f| f.to_string())?;
    recovery.await??;
    assert_eq!(value_json(&decoded)?["id"], 3);
    let lookups: Vec<String> = double.requests().into_iter().filter(|r| r.starts_with("GET /schemas/ids/")).collect();
    assert!(lookups.len() >= 2, "{lookups:?}");
    assert!(lookups[..lookups.len() - 1].iter().all(|r| r.ends_with(" 503")), "{lookups:?}");
    assert!(lookups.last().is_some_and(|r| r.ends_with(" 200")), "{lookups:?}");
    Ok(())
}

#[tokio::test]
async fn basic_auth_credentials_come_from_secrets_manager() -> TestResult {
    let double = RegistryDouble::start()?;
    let (records, _) = produce(json!({
        "registry": "confluent", "url": double.url, "topic": unique("avro"),
        "records": [{"format": "avro", "value": {"id": 4, "status": "NEW", "amount": 2.0}}]
    }))?;
    std::fs::write(double.dir.join("basic-auth"), "relay:s3cret-pw")?;
    let sdk = moto_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let arn = secrets
        .create_secret()
        .name(unique("registry"))
        .secret_string(r#"{"username": "relay", "password": "s3cret-pw"}"#)
        .send()
        .await?
        .arn()
        .ok_or("no ARN")?
        .to_string();
    let access: Vec<_> = serde_json::from_value(json!([{"Type": "BASIC_AUTH", "URI": arn}]))?;
    let source = SecretsManagerSource::new(&sdk);
    let registry: Arc<dyn SchemaRegistry> = Arc::new(ConfluentRegistry::connect(&double.url, &access, &source).await?);
    let decoder = Decoder::new(&registry_config(&double.url, "JSON", &["VALUE"]), registry, quick_retry());
    let decoded = decoder.decode(record(0, None, records[0].1.clone())).await.map_err(|f| f.to_string())?;
    assert_eq!(value_json(&decoded)?["id"], 4);
    // Without the secret the registry refuses the lookup: the mapping's fault, not the record's, so the
    // record is held rather than given up.
    let anonymous: Arc<dyn SchemaRegistry> = Arc::new(ConfluentRegistry::connect(&double.url, &[], &NoSecrets).await?);
    let decoder = Decoder::new(&registry_config(&double.url, "JSON", &["VALUE"]), anonymous, quick_retry());
    let failure = decoder.decode(record(0, None, records[0].1.clone())).await.expect_err("401 without credentials");
    assert_eq!(failure.reason(), Reason::RegistryUnavailable);
    assert!(!failure.to_string().contains("s3cret-pw"), "{failure}");
    Ok(())
}

#[tokio::test]
async fn glue_framed_avro_json_and_protobuf_decode_through_motos_glue() -> TestResult {
    let registry_name = unique("registry");
    let mut framed = Vec::new();
    let mut arn = None;
    for format in ["avro", "json", "protobuf"] {
        let (records, registry_arn) = produce(json!({
            "registry": "glue", "moto": moto(), "registry_name": registry_name, "topic": unique(format),
            "records": [{"format": format, "value": {"id": 11, "status": "SHIPPED", "amount": 3.25}, "key": "k-11", "key_avro": true}]
        }))?;
        framed.push((format, records[0].clone()));
        arn = registry_arn;
    }
    let arn = arn.ok_or("no registry ARN")?;
    assert_eq!(arn, format!("arn:aws:glue:us-east-1:123456789012:registry/{registry_name}"));
    let sdk = moto_config().await;
    let (region, name) = kafka_lambda_relay::config::glue_registry_arn(&arn).ok_or("not a registry ARN")?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(GlueRegistry::new(&sdk, region, name));
    let decoder = Decoder::new(&registry_config(&arn, "JSON", &["KEY", "VALUE"]), registry.clone(), quick_retry());
    for (format, (key, value)) in framed {
        let value_bytes = value.clone().ok_or("value")?;
        let decoded = decoder.decode(record(0, key, value)).await.map_err(|f| f.to_string())?;
        let id = if format == "protobuf" { json!("11") } else { json!(11) };
        assert_eq!(value_json(&decoded)?, json!({"id": id, "status": "SHIPPED", "amount": 3.25}), "{format}");
        assert_eq!(decoded.key.as_deref(), Some(&b"\"k-11\""[..]));
        let version = uuid::Uuid::from_slice(&value_bytes[2..18])?;
        assert_eq!(event_json(&decoded)["valueSchemaMetadata"]["schemaId"], version.to_string());
    }
    // A version id the registry does not have.
    let mut unknown = vec![3u8, 0];
    unknown.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    unknown.push(0);
    let failure = decoder.decode(record(1, None, Some(unknown))).await.expect_err("unknown version");
    assert_eq!(failure.reason(), Reason::SchemaNotFound);
    Ok(())
}

/// No secrets: registries without AccessConfigs.
struct NoSecrets;

#[async_trait::async_trait]
impl kafka_lambda_relay::auth::SecretSource for NoSecrets {
    async fn secret_string(&self, arn: &str) -> Result<String, kafka_lambda_relay::auth::SecretError> {
        Err(kafka_lambda_relay::auth::SecretError::NotFound {
            arn: arn.to_string(),
            code: "ResourceNotFoundException".into(),
        })
    }
}

/// Avro `"string"` schema 1 in the double's directory, and a Confluent-framed record of it.
fn seed_string_schema(double: &RegistryDouble) -> TestResult<Vec<u8>> {
    std::fs::create_dir_all(double.dir.join("schemas"))?;
    std::fs::write(
        double.dir.join("schemas/1.json"),
        r#"{"schema": "\"string\"", "schemaType": "AVRO", "references": []}"#,
    )?;
    // Confluent header for id 1, then the Avro string "tls" (length 3, zigzag 6).
    Ok(vec![0, 0, 0, 0, 1, 6, b't', b'l', b's'])
}

#[tokio::test]
async fn mutual_tls_and_a_private_root_ca_come_from_secrets_manager() -> TestResult {
    let pki = std::env::temp_dir().join(unique("registry-pki"));
    std::fs::create_dir_all(&pki)?;
    let generated = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/auth/gen-certs.sh"))
        .arg(&pki)
        .env("CLIENT_KEY_PASSWORD", "unused-here")
        .status()?;
    assert!(generated.success(), "gen-certs.sh failed");
    let double =
        RegistryDouble::start_tls(&pki.join("server.pem"), &pki.join("server.key"), Some(&pki.join("ca.pem")))?;
    let framed = seed_string_schema(&double)?;

    let sdk = moto_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = |body: Value| {
        let secrets = secrets.clone();
        async move {
            let created =
                secrets.create_secret().name(unique("registry-tls")).secret_string(body.to_string()).send().await?;
            TestResult::Ok(created.arn().ok_or("no ARN")?.to_string())
        }
    };
    let read = |name: &str| std::fs::read_to_string(pki.join(name));
    let ca = secret(json!({"certificate": read("ca.pem")?})).await?;
    let client = secret(json!({"certificate": read("client.pem")?, "privateKey": read("client-key.pem")?})).await?;
    let source = SecretsManagerSource::new(&sdk);
    let decode_with = |access: Value| {
        let (url, framed, source) = (double.url.clone(), framed.clone(), &source);
        async move {
            let access: Vec<_> = serde_json::from_value(access)?;
            let registry: Arc<dyn SchemaRegistry> = Arc::new(ConfluentRegistry::connect(&url, &access, source).await?);
            let decoder = Decoder::new(&registry_config(&url, "JSON", &["VALUE"]), registry, quick_retry());
            TestResult::Ok(decoder.decode(record(0, None, Some(framed))).await)
        }
    };

    let both = decode_with(json!([
        {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca},
        {"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": client}
    ]))
    .await?
    .map_err(|f| f.to_string())?;
    assert_eq!(both.value.as_deref(), Some(&b"\"tls\""[..]));
    // Without the client certificate the registry ends the handshake; without the CA the relay does not
    // trust the registry's certificate. Neither is the record's fault: it is held.
    for (access, why) in [
        (json!([{"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca}]), "CertificateRequired"),
        (json!([{"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": client}]), "UnknownIssuer"),
    ] {
        let failure = decode_with(access.clone()).await?.expect_err("the TLS handshake fails");
        assert_eq!(failure.reason(), Reason::RegistryUnavailable, "{access}: {failure}");
        assert!(failure.to_string().contains(why), "{access}: {failure}");
    }
    let _ = std::fs::remove_dir_all(&pki);
    Ok(())
}
