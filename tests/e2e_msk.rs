#![cfg(feature = "e2e")]
//! MSK IAM authentication end to end: SASL_SSL + OAUTHBEARER through librdkafka, reaching a broker.
//!
//! The broker side is a test double started here (and stopped when the test ends, also on failure):
//! - `scripts/msk/iam-broker.py`: a TLS Kafka-protocol proxy standing in for an MSK IAM listener. It answers
//!   SaslHandshake/SaslAuthenticate itself, checks the OAUTHBEARER token with its own SigV4 implementation
//!   against the expected access key and secret (as MSK does), logs each authentication (never the token)
//!   and then pipes the connection to
//! - tansu (plaintext, SQLite), advertising the proxy's port so every connection goes through the proxy;
//! - tests/msk_double: the MSK control plane (`GetBootstrapBrokers`), which moto does not implement.
//!
//! The PKI comes from scripts/auth/gen-certs.sh; the relay trusts its CA through `SSL_CERT_FILE` (OpenSSL's
//! default trust store, which librdkafka uses when a mapping has no SERVER_ROOT_CA_CERTIFICATE, as for MSK's
//! publicly trusted certificates). Credentials are the dummy ones scripts/test.sh exports.
//!
//! One test, in steps, because the process-wide MSK environment (endpoint and credentials) and
//! `SSL_CERT_FILE` are global.

mod msk_double;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::auth::msk::{set_initial_token, MskEnvironment, MskIamAuth};
use kafka_lambda_relay::auth::{
    check_resolved, resolve_with_msk, CheckError, ConnectionDiagnostics, DiagnosingContext, ErrorCode, SecretError,
    SecretSource,
};
use kafka_lambda_relay::config::RelayConfig;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{echo_success, local_sdk_config, LocalLambda};
use kafka_lambda_relay::relay::{RunOptions, Services};
use msk_double::{Cluster, MskControlPlane};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientConfig;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const ARN: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/relay-e2e/9f8e7d6c-5b4a-3210-fedc-ba9876543210-3";
const REGION: &str = "us-east-1";
const DENIED_ACCESS_KEY: &str = "AKIDDENIEDCONNECT";

/// Processes this test started, stopped (by PID) when dropped.
struct Started(Vec<(&'static str, Child)>);

impl Drop for Started {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, started: &mut Started) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        for (name, child) in &mut started.0 {
            if let Some(status) = child.try_wait()? {
                return Err(format!("{name} exited with {status}").into());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on 127.0.0.1:{port}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("RELAY_VENV").map(PathBuf::from).unwrap_or_else(|| root.join(".venv")).join("bin/python")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run through scripts/test.sh, which exports dummy AWS credentials")
    })
}

/// PKI, tansu and the IAM broker double; returns (processes, work dir, broker address).
fn start_broker() -> Result<(Started, PathBuf, String), Box<dyn std::error::Error + Send + Sync>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("relay-msk-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let pki = Command::new("bash")
        .arg(root.join("scripts/auth/gen-certs.sh"))
        .arg(&dir)
        .env("CLIENT_KEY_PASSWORD", uuid::Uuid::new_v4().simple().to_string())
        .output()?;
    if !pki.status.success() {
        return Err(format!("gen-certs.sh failed: {}", String::from_utf8_lossy(&pki.stderr)).into());
    }
    let (tansu_port, proxy_port) = (free_port(), free_port());
    let mut started = Started(Vec::new());
    let tansu = Command::new("tansu")
        .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{tansu_port}")])
        .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{proxy_port}")])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(&dir)
        .stdout(std::fs::File::create(dir.join("tansu.log"))?)
        .stderr(std::fs::File::create(dir.join("tansu.err"))?)
        .spawn()
        .map_err(|e| format!("cannot start tansu (scripts/setup.sh installs it): {e}"))?;
    started.0.push(("tansu", tansu));
    let proxy = Command::new(python())
        .arg(root.join("scripts/msk/iam-broker.py"))
        .args(["--port", &proxy_port.to_string(), "--upstream", &format!("127.0.0.1:{tansu_port}")])
        .args(["--cert", &dir.join("server.pem").to_string_lossy(), "--key", &dir.join("server.key").to_string_lossy()])
        .args(["--region", REGION, "--access-key", &env("AWS_ACCESS_KEY_ID"), "--deny-access-key", DENIED_ACCESS_KEY])
        .args(["--log", &dir.join("auth.jsonl").to_string_lossy()])
        .env("IAM_BROKER_SECRET_KEY", env("AWS_SECRET_ACCESS_KEY"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("iam-broker.err"))?)
        .spawn()?;
    started.0.push(("iam-broker.py", proxy));
    wait_port(tansu_port, &mut started)?;
    wait_port(proxy_port, &mut started)?;
    Ok((started, dir, format!("127.0.0.1:{proxy_port}")))
}

fn auth_log(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("auth.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

/// A producer/admin context signing with the relay's own token source.
struct TokenContext(Arc<MskIamAuth>);

impl ClientContext for TokenContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.0.oauth_token()
    }
}

impl ProducerContext for TokenContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

fn mapping_of(config: &RelayConfig) -> &kafka_lambda_relay::config::Mapping {
    &config.mappings[0]
}

fn good_credentials() -> Credentials {
    Credentials::new(env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"), None, None, "test")
}

/// Everything `tracing` printed in this test binary (the relay's logs and librdkafka's, redacted or not).
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

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// No secret key, session token or MSK token (every token starts with base64url of "https://kafka") in the
/// captured logs or in `outputs`.
fn assert_no_secret(outputs: &[String], secrets: &[&str]) {
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    for value in secrets.iter().copied().chain(["aHR0cHM6Ly9rYWZrYS", "X-Amz-Signature="]) {
        for output in outputs.iter().chain(std::iter::once(&logs)) {
            assert!(!output.contains(value), "{value:?} appears in output: {output}");
        }
    }
}

struct NoSecrets;

#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        Err(SecretError::NotFound { arn: arn.into(), code: "ResourceNotFoundException".into() })
    }
}

async fn environment(endpoint: &str, credentials: Credentials) -> MskEnvironment {
    MskEnvironment::new(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(credentials)
            .load()
            .await,
    )
}

/// Creates `topic` and produces `count` records through the IAM listener, with the relay's token source.
async fn seed(broker: &str, topic: &str, count: usize) -> TestResult {
    let credentials = Credentials::new(env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"), None, None, "test");
    let auth = Arc::new(MskIamAuth::start(SharedCredentialsProvider::new(credentials), REGION).await?);
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", broker).set("security.protocol", "sasl_ssl").set("sasl.mechanism", "OAUTHBEARER");
    let admin: AdminClient<TokenContext> = config.create_with_context(TokenContext(auth.clone()))?;
    set_initial_token(admin.inner(), Some(&auth))?;
    for result in admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?
    {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating {topic}: {code}").into()),
        }
    }
    let producer: BaseProducer<TokenContext> = config.create_with_context(TokenContext(auth.clone()))?;
    set_initial_token(producer.client(), Some(&auth))?;
    for i in 0..count {
        let value = format!("msk-{i}");
        producer.send(BaseRecord::<str, str>::to(topic).payload(&value)).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(20))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msk_iam_tokens_reach_the_broker_and_bad_ones_are_named() -> TestResult {
    let _ = captured_logs();
    // Distinctive credentials (with a session token, as in Lambda) so the leak checks mean something; the
    // process-wide MSK environment and the broker double read them.
    let secret_key = format!("msk-e2e-secret-{}", uuid::Uuid::new_v4().simple());
    let session_token = format!("msk-e2e-session-{}", uuid::Uuid::new_v4().simple());
    std::env::set_var("AWS_ACCESS_KEY_ID", "ASIAMSKE2ERELAYTEST");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &secret_key);
    std::env::set_var("AWS_SESSION_TOKEN", &session_token);
    let (_started, dir, broker) = start_broker()?;
    // OpenSSL's default trust store (librdkafka's, without ssl.ca.*) is the test CA.
    std::env::set_var("SSL_CERT_FILE", dir.join("ca.pem"));
    let control_plane = MskControlPlane::start(vec![(
        ARN.into(),
        Cluster::active(serde_json::json!({
            "bootstrapBrokerStringSaslIam": broker,
            "bootstrapBrokerStringSaslScram": "127.0.0.1:9",
            "bootstrapBrokerStringTls": "127.0.0.1:9"
        })),
    )])
    .await;
    // The process-wide MSK environment reads this on first use (as in Lambda, from the environment).
    std::env::set_var("AWS_ENDPOINT_URL_KAFKA", &control_plane.url);

    let topic = format!("AWSKafkaTopic-{}", uuid::Uuid::new_v4().simple());
    seed(&broker, &topic, 0).await?;

    // AWS's MSK CLI example: cluster ARN, topic, LATEST, no SourceAccessConfigurations.
    let config = RelayConfig::parse_valid(
        &serde_json::json!({"Mappings": [{
            "EventSourceArn": ARN,
            "Topics": [topic],
            "StartingPosition": "LATEST",
            "FunctionName": "my-kafka-function",
            "MaximumBatchingWindowInSeconds": 0
        }]})
        .to_string(),
    )?;
    let lambda = LocalLambda::start().await?;
    lambda.register("my-kafka-function", Duration::from_secs(5), echo_success());
    let services = Services {
        invoker: Arc::new(LambdaInvoker::new(&local_sdk_config(&lambda.endpoint()).await)),
        sinks: Arc::new(|arn: &str| {
            Err(kafka_lambda_relay::destination::DestinationError::InvalidArn { arn: arn.to_string() })
        }),
        secrets: Arc::new(NoSecrets),
    };
    let options = || RunOptions {
        until_idle: true,
        max_in_flight: 2,
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        target_timeout: Some(Duration::from_secs(5)),
        ..RunOptions::default()
    };
    // First run: LATEST on an empty topic joins the group and commits the start.
    let first = run_all(&config, &services, &options()).await;
    assert_eq!(first.mappings[0].error_code, None, "{:?}", first.mappings[0]);
    seed(&broker, &topic, 5).await?;
    let second = run_all(&config, &services, &options()).await;
    let report = &second.mappings[0];
    assert_eq!(
        (report.state.as_str(), report.counts.delivered, report.error_code.as_deref()),
        ("Enabled", 5, None),
        "{report:?}"
    );
    let invocations = lambda.invocations("my-kafka-function");
    let mut values = Vec::new();
    for invocation in &invocations {
        let event: serde_json::Value = serde_json::from_slice(&invocation.payload)?;
        assert_eq!(event["eventSource"], "aws:kafka");
        assert_eq!(event["eventSourceArn"], ARN);
        assert_eq!(event["bootstrapServers"], broker.as_str(), "the looked-up brokers");
        for records in event["records"].as_object().expect("records").values() {
            for record in records.as_array().expect("array") {
                use base64::Engine as _;
                let value = base64::engine::general_purpose::STANDARD.decode(record["value"].as_str().unwrap())?;
                values.push(String::from_utf8(value)?);
            }
        }
    }
    values.sort();
    assert_eq!(values, (0..5).map(|i| format!("msk-{i}")).collect::<Vec<_>>());

    // The relay's tokens reached the broker and were accepted there.
    let relay_auths: Vec<serde_json::Value> =
        auth_log(&dir).into_iter().filter(|e| e["user_agent"] == kafka_lambda_relay::auth::msk::USER_AGENT).collect();
    assert!(!relay_auths.is_empty(), "no authentication logged by the broker double");
    for entry in &relay_auths {
        assert_eq!(entry["accepted"], true, "{entry}");
        assert_eq!(entry["access_key"], env("AWS_ACCESS_KEY_ID"));
        assert_eq!(entry["region"], REGION);
        assert_eq!(entry["action"], "kafka-cluster:Connect");
    }
    let report_text = serde_json::to_string(&second)?;
    let mut outputs = vec![serde_json::to_string(&first)?];
    // The first token exists before the first metadata request: a client that asks for metadata before
    // anything polls it (as `run --check` and the rebalance callback's offset lookups do) gets an answer only
    // because the token was set at creation; without it librdkafka waits for a poll that never comes.
    let security =
        resolve_with_msk(mapping_of(&config), &NoSecrets, &environment(&control_plane.url, good_credentials()).await)
            .await?;
    outputs.push(format!("{security:?}"));
    for with_initial_token in [true, false] {
        let diagnostics = Arc::new(ConnectionDiagnostics::new(&security, mapping_of(&config)));
        let mut client = ClientConfig::new();
        // librdkafka's SASL and protocol debug lines go through the diagnosing context into the captured logs.
        client.set("debug", "security,broker,protocol").set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        security.apply(&mut client);
        let consumer: BaseConsumer<DiagnosingContext> =
            client.create_with_context(DiagnosingContext::new(diagnostics.clone()))?;
        if with_initial_token {
            set_initial_token(consumer.client(), diagnostics.msk_iam())?;
        }
        let metadata =
            consumer.fetch_metadata(Some(&topic), Duration::from_secs(if with_initial_token { 20 } else { 3 }));
        assert_eq!(metadata.is_ok(), with_initial_token, "metadata without a poll, initial token {with_initial_token}");
        // Serve the queued log events (librdkafka's debug lines arrive through polls) into the captured logs.
        for _ in 0..10 {
            let _ = consumer.poll(Duration::from_millis(50));
        }
    }

    // A wrong secret: the broker rejects the signature → EVENT_SOURCE_AUTHN_ERROR, without the token.
    let mapping = mapping_of(&config);
    let wrong_secret = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let wrong = environment(
        &control_plane.url,
        Credentials::new(env("AWS_ACCESS_KEY_ID"), wrong_secret.clone(), None, None, "t"),
    )
    .await;
    let security = resolve_with_msk(mapping, &NoSecrets, &wrong).await?;
    outputs.push(format!("{security:?}"));
    let error = match check_resolved(mapping, security, Duration::from_secs(20)).await {
        Err(CheckError::Auth(error)) => error,
        other => panic!("expected an authentication error, got {other:?}"),
    };
    assert_eq!(error.code, ErrorCode::EventSourceAuthnError, "{error}");
    outputs.push(format!("{error} {error:?}"));
    assert!(error.sentence.contains("rejected the MSK IAM token"), "{error}");
    assert!(error.sentence.contains("signature does not match"), "{error}");
    assert!(!error.sentence.contains(&wrong_secret) && !error.sentence.contains("aHR0cHM6Ly9rYWZrYS"), "{error}");
    assert!(auth_log(&dir).iter().any(|e| e["accepted"] == false && e["reason"] == "signature does not match"));

    // Expired credentials: no token is signed with them → EVENT_SOURCE_AUTHN_ERROR before connecting.
    let expired = Credentials::new(
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_SECRET_ACCESS_KEY"),
        Some("session".into()),
        Some(SystemTime::now() - Duration::from_secs(60)),
        "t",
    );
    let security = resolve_with_msk(mapping, &NoSecrets, &environment(&control_plane.url, expired).await).await?;
    outputs.push(format!("{security:?}"));
    let error = match check_resolved(mapping, security, Duration::from_secs(10)).await {
        Err(CheckError::Auth(error)) => error,
        other => panic!("expected an authentication error, got {other:?}"),
    };
    assert_eq!(error.code, ErrorCode::EventSourceAuthnError, "{error}");
    outputs.push(format!("{error} {error:?}"));

    // A role without kafka-cluster:Connect: MSK's "Access denied" → EVENT_SOURCE_AUTHZ_ERROR naming the action.
    let denied = environment(
        &control_plane.url,
        Credentials::new(DENIED_ACCESS_KEY, env("AWS_SECRET_ACCESS_KEY"), None, None, "t"),
    )
    .await;
    let security = resolve_with_msk(mapping, &NoSecrets, &denied).await?;
    outputs.push(format!("{security:?}"));
    let error = match check_resolved(mapping, security, Duration::from_secs(20)).await {
        Err(CheckError::Auth(error)) => error,
        other => panic!("expected an authorization error, got {other:?}"),
    };
    assert_eq!(error.code, ErrorCode::EventSourceAuthzError, "{error}");
    outputs.push(format!("{error} {error:?}"));
    assert!(error.sentence.contains("kafka-cluster:Connect"), "{error}");

    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("OAUTHBEARER"),
        "librdkafka's SASL debug lines were captured: {}",
        logs.lines().filter(|l| l.contains("librdkafka")).take(20).collect::<Vec<_>>().join("\n")
    );
    outputs.push(report_text);
    assert_no_secret(&outputs, &[&secret_key, &session_token, &wrong_secret]);

    // The runs went through auth::resolve (the process-wide environment): one bootstrap lookup per run.
    let lookups = control_plane.calls().iter().filter(|c| c.starts_with("GetBootstrapBrokers")).count();
    assert_eq!(lookups, 2 + 4, "two runs and four explicit resolves");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
