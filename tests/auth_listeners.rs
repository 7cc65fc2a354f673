#![cfg(feature = "e2e")]
//! Authentication against real listeners started by `scripts/auth-listeners.sh start` (tansu behind
//! stunnel), with secrets in moto_server's Secrets Manager, resolved through `SecretsManagerSource`.
//!
//! Needs: `RELAY_TEST_MOTO` and the variables of `.work/auth/env` (`RELAY_TEST_SCRAM_TLS`,
//! `RELAY_TEST_TLS_BADHOST`, `RELAY_TEST_MTLS`, `RELAY_TEST_AUTH_DIR`, `RELAY_TEST_SCRAM_USER`,
//! `RELAY_TEST_SCRAM_PASSWORD`, `RELAY_TEST_CLIENT_KEY_PASSWORD`).
//!
//! Every test also checks that no secret value (passwords, key password, private key) appears in anything
//! it could print: errors, `Debug` output, and everything logged through `tracing` (librdkafka's logs
//! included, at debug level with `debug=security,broker`).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kafka_lambda_relay::auth::{
    self, check_with_timeout, CheckError, ConnectionDiagnostics, DiagnosingContext, ErrorCode, KafkaSecurity,
    SecretsManagerSource,
};
use kafka_lambda_relay::config::Mapping;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long a failing connection may take to be diagnosed; the check gives up later than this, so a
/// failure that is not diagnosed shows up as `Unreachable`, not as a slow pass.
const DIAGNOSIS_WITHIN: Duration = Duration::from_secs(8);
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/auth-listeners.sh start, source the env file it prints, and set RELAY_TEST_MOTO to a moto_server URL")
    })
}

fn file(name: &str) -> String {
    let path = std::path::Path::new(&var("RELAY_TEST_AUTH_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Everything `tracing` printed during the tests of this binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buffer
    })
    .clone()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The secret values no output may contain: the SCRAM password, the key password, a wrong password the
/// test used, and each line of the private key's PEM body.
fn secret_values(extra: &[&str]) -> Vec<String> {
    let mut values = vec![var("RELAY_TEST_SCRAM_PASSWORD"), var("RELAY_TEST_CLIENT_KEY_PASSWORD")];
    values.extend(extra.iter().map(|s| s.to_string()));
    for key in ["client-key-pbes2.pem", "client-key-pbes1.pem", "client-key-des.pem", "client-key.pem"] {
        values.extend(file(key).lines().filter(|l| !l.starts_with("-----")).map(String::from));
    }
    values
}

fn assert_no_secret(outputs: &[String], extra: &[&str]) {
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    for value in secret_values(extra) {
        for output in outputs.iter().chain(std::iter::once(&logs)) {
            assert!(!output.contains(&value), "a secret value appears in output: {output}");
        }
    }
}

/// Stores `value` under a fresh name and returns the secret's ARN.
async fn store_secret(
    client: &aws_sdk_secretsmanager::Client,
    value: serde_json::Value,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let name = format!("relay-test-{}", uuid::Uuid::new_v4());
    let output = client.create_secret().name(name).secret_string(value.to_string()).send().await?;
    Ok(output.arn().ok_or("no ARN")?.to_string())
}

/// The SCRAM user the listeners accept, as a secret's JSON.
fn scram_credentials() -> serde_json::Value {
    serde_json::json!({"username": var("RELAY_TEST_SCRAM_USER"), "password": var("RELAY_TEST_SCRAM_PASSWORD")})
}

async fn scram_secret(
    client: &aws_sdk_secretsmanager::Client,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    store_secret(client, scram_credentials()).await
}

async fn ca_secret(
    client: &aws_sdk_secretsmanager::Client,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    store_secret(client, serde_json::json!({"certificate": file("ca.pem")})).await
}

async fn client_certificate_secret(
    client: &aws_sdk_secretsmanager::Client,
    key_file: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    store_secret(
        client,
        serde_json::json!({
            "certificate": file("client-chain.pem"),
            "privateKey": file(key_file),
            "privateKeyPassword": var("RELAY_TEST_CLIENT_KEY_PASSWORD"),
        }),
    )
    .await
}

fn mapping(server: &str, topic: &str, access: serde_json::Value) -> Mapping {
    serde_json::from_value(serde_json::json!({
        "FunctionName": "target",
        "Topics": [topic],
        "StartingPosition": "TRIM_HORIZON",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [server]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": format!("group-{topic}")},
        "SourceAccessConfigurations": access
    }))
    .expect("mapping parses")
}

fn topic_name() -> String {
    format!("auth-{}", uuid::Uuid::new_v4().simple())
}

/// A client config for `mapping` with `security`, short timeouts and librdkafka's security debug logs on.
fn client_config(mapping: &Mapping, security: &KafkaSecurity) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", mapping.bootstrap_servers().join(","))
        .set("socket.timeout.ms", "10000")
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("message.timeout.ms", "10000")
        .set("debug", "security,broker")
        .set_log_level(RDKafkaLogLevel::Debug);
    security.apply(&mut config);
    config
}

fn context(mapping: &Mapping, security: &KafkaSecurity) -> DiagnosingContext {
    DiagnosingContext::new(Arc::new(ConnectionDiagnostics::new(security, mapping)))
}

/// Creates the topic, produces `values`, and reads them back from partition 0 with the group, committing.
async fn round_trip(
    mapping: &Mapping,
    security: &KafkaSecurity,
    values: &[String],
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let topic = mapping.topics[0].clone();
    let admin: AdminClient<DiagnosingContext> =
        client_config(mapping, security).create_with_context(context(mapping, security))?;
    let created = admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in created {
        result.map_err(|(topic, code)| format!("creating {topic}: {code}"))?;
    }

    let producer: FutureProducer<DiagnosingContext> =
        client_config(mapping, security).create_with_context(context(mapping, security))?;
    for (index, value) in values.iter().enumerate() {
        let key = index.to_string();
        producer
            .send(FutureRecord::to(&topic).partition(0).key(&key).payload(value), Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)?;
    }

    let mut config = client_config(mapping, security);
    config.set("group.id", mapping.consumer_group_id()).set("enable.auto.commit", "false");
    let consumer: BaseConsumer<DiagnosingContext> = config.create_with_context(context(mapping, security))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = Vec::new();
    while received.len() < values.len() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => received.push(String::from_utf8(message.payload().unwrap_or_default().to_vec())?),
            Some(Err(error)) => return Err(format!("consuming: {error}").into()),
            None => {}
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync)?;
    Ok(received)
}

fn values(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("record-{i}-{}", uuid::Uuid::new_v4())).collect()
}

async fn expect_authn(
    mapping: &Mapping,
    source: &SecretsManagerSource,
    sentence_start: &str,
    extra_secrets: &[&str],
) -> Result<auth::AuthError, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let error = match check_with_timeout(mapping, source, CHECK_TIMEOUT).await {
        Ok(report) => return Err(format!("check succeeded: {report:?}").into()),
        Err(CheckError::Auth(error)) => error,
        Err(other) => return Err(format!("not diagnosed as an auth error: {other}").into()),
    };
    assert_eq!(error.code, ErrorCode::EventSourceAuthnError, "{error}");
    assert!(
        error.sentence.starts_with(sentence_start),
        "expected a sentence starting {sentence_start:?}, got: {error}"
    );
    assert!(started.elapsed() < DIAGNOSIS_WITHIN, "diagnosis took {:?}", started.elapsed());
    eprintln!("diagnosed in {:?}: {error}", started.elapsed());
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(logs.contains("kafka client error"), "the client's errors are logged through tracing (and searched below)");
    assert_no_secret(&[error.to_string(), format!("{error:?}")], extra_secrets);
    Ok(error)
}

#[tokio::test]
async fn scram_256_over_tls_delivers_records() -> TestResult {
    captured_logs();
    let client = common::moto_secrets_manager().await;
    let (scram, ca) = (scram_secret(&client).await?, ca_secret(&client).await?);
    let m = mapping(
        &var("RELAY_TEST_SCRAM_TLS"),
        &topic_name(),
        serde_json::json!([{"Type": "SASL_SCRAM_256_AUTH", "URI": scram}, {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca}]),
    );
    let source = SecretsManagerSource::from_client(client);
    let security = auth::resolve(&m, &source).await?;
    assert_eq!((security.security_protocol(), security.sasl_mechanism()), ("sasl_ssl", Some("SCRAM-SHA-256")));
    let sent = values(5);
    assert_eq!(round_trip(&m, &security, &sent).await?, sent);
    assert_no_secret(&[format!("{security:?}")], &[]);
    Ok(())
}

#[tokio::test]
async fn scram_512_over_tls_delivers_records_and_check_reports_offsets() -> TestResult {
    captured_logs();
    let client = common::moto_secrets_manager().await;
    let (scram, ca) = (scram_secret(&client).await?, ca_secret(&client).await?);
    let m = mapping(
        &var("RELAY_TEST_SCRAM_TLS"),
        &topic_name(),
        serde_json::json!([{"Type": "SASL_SCRAM_512_AUTH", "URI": scram}, {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca}]),
    );
    let source = SecretsManagerSource::from_client(client);
    let security = auth::resolve(&m, &source).await?;
    assert_eq!(security.sasl_mechanism(), Some("SCRAM-SHA-512"));
    let sent = values(7);
    assert_eq!(round_trip(&m, &security, &sent).await?, sent);

    let report = check_with_timeout(&m, &source, CHECK_TIMEOUT).await?;
    assert_eq!(report.security_protocol, "sasl_ssl");
    assert_eq!(report.sasl_mechanism.as_deref(), Some("SCRAM-SHA-512"));
    assert_eq!(report.consumer_group, m.consumer_group_id());
    assert_eq!(report.topics.len(), 1);
    assert_eq!(report.topics[0].topic, m.topics[0]);
    let partitions = &report.topics[0].partitions;
    assert_eq!(partitions.len(), 1, "{report:?}");
    assert_eq!((partitions[0].partition, partitions[0].low_watermark, partitions[0].high_watermark), (0, 0, 7));
    assert_eq!(partitions[0].committed_offset, Some(7), "{report:?}");
    assert_eq!(partitions[0].lag, Some(0));
    assert_no_secret(&[serde_json::to_string(&report)?, format!("{security:?}")], &[]);
    Ok(())
}

/// A connection that must fail with `EVENT_SOURCE_AUTHN_ERROR`: one row of the table the tests below fill in.
struct FailingConnection {
    /// The variable naming the listener (`RELAY_TEST_SCRAM_TLS`, `RELAY_TEST_TLS_BADHOST`, `RELAY_TEST_MTLS`).
    listener: &'static str,
    /// The `SourceAccessConfigurations` type and the secret stored for it, if any.
    credentials: Option<(&'static str, serde_json::Value)>,
    /// Whether the private CA is configured (`SERVER_ROOT_CA_CERTIFICATE`).
    with_ca: bool,
    /// The sentence's start, from the listener's address and the credentials' secret ARN.
    sentence: fn(listener: &str, credentials_arn: &str) -> String,
    /// Secret values of this case that must appear nowhere.
    secrets: Vec<String>,
}

/// Stores the case's secrets, checks the mapping and returns the diagnosis (see [`expect_authn`]).
async fn diagnose(case: FailingConnection) -> Result<auth::AuthError, Box<dyn std::error::Error + Send + Sync>> {
    captured_logs();
    let client = common::moto_secrets_manager().await;
    let mut access = Vec::new();
    let mut credentials_arn = String::new();
    if let Some((kind, secret)) = case.credentials {
        credentials_arn = store_secret(&client, secret).await?;
        access.push(serde_json::json!({"Type": kind, "URI": credentials_arn}));
    }
    if case.with_ca {
        access.push(serde_json::json!({"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca_secret(&client).await?}));
    }
    let listener = var(case.listener);
    let m = mapping(&listener, &topic_name(), serde_json::Value::Array(access));
    let source = SecretsManagerSource::from_client(client);
    let start = (case.sentence)(&listener, &credentials_arn);
    let secrets: Vec<&str> = case.secrets.iter().map(String::as_str).collect();
    expect_authn(&m, &source, &start, &secrets).await
}

fn wrong_secret() -> String {
    format!("wrong-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn wrong_password_is_an_authn_error_naming_user_and_secret() -> TestResult {
    let wrong = wrong_secret();
    diagnose(FailingConnection {
        listener: "RELAY_TEST_SCRAM_TLS",
        credentials: Some((
            "SASL_SCRAM_512_AUTH",
            serde_json::json!({"username": var("RELAY_TEST_SCRAM_USER"), "password": wrong}),
        )),
        with_ca: true,
        sentence: |listener, arn| {
            format!(
                "SASL authentication failed: broker {listener} rejected user {:?} with SCRAM-SHA-512; check \"username\" and \"password\" in secret {arn:?}",
                var("RELAY_TEST_SCRAM_USER")
            )
        },
        secrets: vec![wrong],
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn untrusted_server_certificate_is_an_authn_error_asking_for_the_root_ca() -> TestResult {
    let error = diagnose(FailingConnection {
        listener: "RELAY_TEST_SCRAM_TLS",
        credentials: Some(("SASL_SCRAM_256_AUTH", scram_credentials())),
        with_ca: false,
        sentence: |listener, _| {
            format!("Lambda failed to authenticate server: the certificate of broker {listener} is not signed by a publicly trusted CA")
        },
        secrets: vec![],
    })
    .await?;
    assert!(!error.sentence.contains("does not name the host"), "the probe ruled the hostname out: {error}");
    Ok(())
}

#[tokio::test]
async fn hostname_mismatch_is_an_authn_error() -> TestResult {
    diagnose(FailingConnection {
        listener: "RELAY_TEST_TLS_BADHOST",
        credentials: Some(("SASL_SCRAM_256_AUTH", scram_credentials())),
        with_ca: true,
        sentence: |listener, _| {
            format!("Lambda failed to authenticate server: the certificate of broker {listener} does not name the host")
        },
        secrets: vec![],
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn missing_client_certificate_is_an_authn_error_asking_for_one() -> TestResult {
    diagnose(FailingConnection {
        listener: "RELAY_TEST_MTLS",
        credentials: None,
        with_ca: true,
        sentence: |listener, _| {
            format!("Server failed to authenticate Lambda: broker {listener} requires a client certificate (mTLS)")
        },
        secrets: vec![],
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn wrong_private_key_password_is_an_invalid_key_error() -> TestResult {
    let wrong = wrong_secret();
    diagnose(FailingConnection {
        listener: "RELAY_TEST_MTLS",
        credentials: Some((
            "CLIENT_CERTIFICATE_TLS_AUTH",
            serde_json::json!({"certificate": file("client-chain.pem"), "privateKey": file("client-key-pbes2.pem"), "privateKeyPassword": wrong}),
        )),
        with_ca: true,
        sentence: |_, arn| {
            format!("Provided certificate or private key is invalid: check that \"certificate\" in secret {arn:?}")
        },
        secrets: vec![wrong],
    })
    .await?;
    Ok(())
}

async fn mtls_delivers_records_with(key_file: &str, providers: Option<&str>) -> TestResult {
    captured_logs();
    let client = common::moto_secrets_manager().await;
    let (certificate, ca) = (client_certificate_secret(&client, key_file).await?, ca_secret(&client).await?);
    let m = mapping(
        &var("RELAY_TEST_MTLS"),
        &topic_name(),
        serde_json::json!([{"Type": "CLIENT_CERTIFICATE_TLS_AUTH", "URI": certificate}, {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca}]),
    );
    let source = SecretsManagerSource::from_client(client);
    let security = auth::resolve(&m, &source).await?;
    assert_eq!((security.security_protocol(), security.sasl_mechanism()), ("ssl", None));
    assert_eq!(security.public_setting("ssl.providers"), providers);
    let sent = values(3);
    assert_eq!(round_trip(&m, &security, &sent).await?, sent);
    let report = check_with_timeout(&m, &source, CHECK_TIMEOUT).await?;
    assert_eq!(report.topics[0].partitions[0].high_watermark, 3);
    assert_no_secret(&[format!("{security:?}"), format!("{report:?}")], &[]);
    Ok(())
}

#[tokio::test]
async fn mtls_with_pbes2_encrypted_key_delivers_records() -> TestResult {
    mtls_delivers_records_with("client-key-pbes2.pem", None).await
}

#[tokio::test]
async fn mtls_with_pkcs12_3des_encrypted_key_delivers_records() -> TestResult {
    mtls_delivers_records_with("client-key-pbes1.pem", None).await
}

#[tokio::test]
async fn mtls_with_pbes1_des_encrypted_key_delivers_records() -> TestResult {
    mtls_delivers_records_with("client-key-des.pem", Some("default,legacy")).await
}

#[tokio::test]
async fn secret_without_password_is_a_config_error_naming_arn_and_field() -> TestResult {
    captured_logs();
    let client = common::moto_secrets_manager().await;
    let scram = store_secret(
        &client,
        serde_json::json!({"username": var("RELAY_TEST_SCRAM_USER"), "passwd": var("RELAY_TEST_SCRAM_PASSWORD")}),
    )
    .await?;
    let m = mapping(
        &var("RELAY_TEST_SCRAM_TLS"),
        &topic_name(),
        serde_json::json!([{"Type": "SASL_SCRAM_512_AUTH", "URI": scram}]),
    );
    let source = SecretsManagerSource::from_client(client);
    let error = auth::resolve(&m, &source).await.expect_err("a secret without password is refused");
    assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
    assert!(
        error.sentence.starts_with(&format!("secret {scram:?} for SASL_SCRAM_512_AUTH has no \"password\" field")),
        "{error}"
    );
    assert_no_secret(&[error.to_string()], &[]);
    Ok(())
}

#[tokio::test]
async fn unknown_secret_is_a_config_error() -> TestResult {
    captured_logs();
    let client = common::moto_secrets_manager().await;
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:does-not-exist-AbCdEf";
    let m = mapping(
        &var("RELAY_TEST_SCRAM_TLS"),
        &topic_name(),
        serde_json::json!([{"Type": "SASL_SCRAM_512_AUTH", "URI": arn}]),
    );
    let error = auth::resolve(&m, &SecretsManagerSource::from_client(client)).await.expect_err("refused");
    assert_eq!(
        error.to_string(),
        format!("ESM_CONFIG_NOT_VALID: secret {arn:?} does not exist in Secrets Manager (ResourceNotFoundException)")
    );
    Ok(())
}

#[tokio::test]
async fn each_secret_is_read_once_per_source() -> TestResult {
    let client = common::moto_secrets_manager().await;
    let arn = store_secret(&client, serde_json::json!({"username": "first", "password": "p"})).await?;
    let source = SecretsManagerSource::from_client(client.clone());
    use auth::SecretSource;
    let first = source.secret_string(&arn).await?;
    client
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"username": "second", "password": "p"}"#)
        .send()
        .await?;
    assert_eq!(source.secret_string(&arn).await?, first, "the same source serves the first value");
    let fresh = SecretsManagerSource::from_client(client);
    assert!(fresh.secret_string(&arn).await?.contains("second"), "a new source (next run) reads the new value");
    Ok(())
}

#[tokio::test]
async fn check_reports_a_missing_topic() -> TestResult {
    captured_logs();
    let client = common::moto_secrets_manager().await;
    let (scram, ca) = (scram_secret(&client).await?, ca_secret(&client).await?);
    let topic = topic_name();
    let m = mapping(
        &var("RELAY_TEST_SCRAM_TLS"),
        &topic,
        serde_json::json!([{"Type": "SASL_SCRAM_512_AUTH", "URI": scram}, {"Type": "SERVER_ROOT_CA_CERTIFICATE", "URI": ca}]),
    );
    match check_with_timeout(&m, &SecretsManagerSource::from_client(client), CHECK_TIMEOUT).await {
        Err(CheckError::TopicNotFound { topic: missing, .. }) => assert_eq!(missing, topic),
        other => return Err(format!("expected TopicNotFound, got {other:?}").into()),
    }
    Ok(())
}
