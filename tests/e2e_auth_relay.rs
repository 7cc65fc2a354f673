#![cfg(feature = "e2e")]
//! The relay itself on authenticated clusters (scripts/auth-listeners.sh): SCRAM-256 and SCRAM-512 over TLS
//! deliver records end to end, and a mapping with a wrong password fails with EVENT_SOURCE_AUTHN_ERROR
//! without stopping a good mapping of the same run. No secret value appears in the report.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::auth::{resolve, SecretsManagerSource};
use kafka_lambda_relay::config::RelayConfig;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{echo_success, local_sdk_config, LocalLambda};
use kafka_lambda_relay::relay::{RunOptions, Services};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: scripts/test.sh starts the auth listeners and sets it"))
}


async fn store(client: &aws_sdk_secretsmanager::Client, value: serde_json::Value) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let out = client.create_secret().name(format!("relay-e2e-{}", uuid::Uuid::new_v4())).secret_string(value.to_string()).send().await?;
    Ok(out.arn().ok_or("no ARN")?.to_string())
}

fn mapping(function: &str, topic: &str, kind: &str, credentials: &str, ca: &str) -> serde_json::Value {
    serde_json::json!({
        "FunctionName": function,
        "Topics": [topic],
        "StartingPosition": "TRIM_HORIZON",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [var("RELAY_TEST_SCRAM_TLS")]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": format!("group-{topic}")},
        "SourceAccessConfigurations": [{"Type": kind, "URI": credentials}, {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca}],
        "MaximumBatchingWindowInSeconds": 0
    })
}

/// Creates `topic` and produces `count` records through the same security settings the relay uses.
async fn seed(config: &RelayConfig, secrets: &SecretsManagerSource, count: usize) -> TestResult {
    let m = &config.mappings[0];
    let security = resolve(m, secrets).await?;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", var("RELAY_TEST_SCRAM_TLS"));
    security.apply(&mut client);
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    for result in admin
        .create_topics([&NewTopic::new(&m.topics[0], 2, TopicReplication::Fixed(1))], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await?
    {
        result.map_err(|(topic, code)| format!("creating {topic}: {code}"))?;
    }
    let producer: FutureProducer = client.create()?;
    for i in 0..count {
        let value = format!("v{i}");
        producer
            .send(FutureRecord::<str, str>::to(&m.topics[0]).partition((i % 2) as i32).payload(&value), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_mappings_deliver_and_a_wrong_password_fails_alone() -> TestResult {
    let client = common::moto_secrets_manager().await;
    let good = store(&client, serde_json::json!({"username": var("RELAY_TEST_SCRAM_USER"), "password": var("RELAY_TEST_SCRAM_PASSWORD")})).await?;
    let wrong_password = format!("not-{}", uuid::Uuid::new_v4().simple());
    let bad = store(&client, serde_json::json!({"username": var("RELAY_TEST_SCRAM_USER"), "password": wrong_password})).await?;
    let ca_pem = std::fs::read_to_string(std::path::Path::new(&var("RELAY_TEST_AUTH_DIR")).join("ca.pem"))?;
    let ca = store(&client, serde_json::json!({"certificate": ca_pem})).await?;
    let secrets = SecretsManagerSource::from_client(client);

    let lambda = LocalLambda::start().await?;
    lambda.register("target", Duration::from_secs(5), echo_success());
    let (t256, t512, tbad) = (format!("s256-{}", uuid::Uuid::new_v4().simple()), format!("s512-{}", uuid::Uuid::new_v4().simple()), format!("sbad-{}", uuid::Uuid::new_v4().simple()));
    let config = RelayConfig::parse_valid(
        &serde_json::json!({"Mappings": [
            mapping("target", &t256, "SASL_SCRAM_256_AUTH", &good, &ca),
            mapping("target", &t512, "SASL_SCRAM_512_AUTH", &good, &ca),
            mapping("target", &tbad, "SASL_SCRAM_512_AUTH", &bad, &ca),
        ]})
        .to_string(),
    )?;
    for index in 0..2 {
        let one = RelayConfig { mappings: vec![config.mappings[index].clone()] };
        seed(&one, &secrets, 20).await?;
    }

    let services = Services {
        invoker: Arc::new(LambdaInvoker::new(&local_sdk_config(&lambda.endpoint()).await)),
        sinks: Arc::new(|arn: &str| Err(kafka_lambda_relay::destination::DestinationError::InvalidArn { arn: arn.to_string() })),
        secrets: Arc::new(secrets),
    };
    let options = RunOptions {
        until_idle: true,
        max_in_flight: 4,
        deadline: Some(std::time::Instant::now() + Duration::from_secs(60)),
        target_timeout: Some(Duration::from_secs(5)),
        ..RunOptions::default()
    };
    let report = run_all(&config, &services, &options).await;

    for m in &report.mappings[..2] {
        assert_eq!((m.state.as_str(), m.counts.delivered, m.error_code.as_deref()), ("Enabled", 20, None), "{m:?}");
    }
    let failed = &report.mappings[2];
    assert_eq!(failed.error_code.as_deref(), Some("EVENT_SOURCE_AUTHN_ERROR"), "{failed:?}");
    assert!(failed.last_processing_result.contains("SASL authentication failed"), "{}", failed.last_processing_result);
    let text = serde_json::to_string(&report)?;
    assert!(!text.contains(&wrong_password) && !text.contains(&var("RELAY_TEST_SCRAM_PASSWORD")), "no secret in the report");
    Ok(())
}
