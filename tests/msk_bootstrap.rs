//! Bootstrap brokers from an MSK cluster ARN, through aws-sdk-kafka against a local double of the MSK control
//! plane (tests/msk_double: moto does not implement `GetBootstrapBrokers`). Every authentication and
//! connectivity picks its own broker string; every failure gives its code and names the MSK error.

mod msk_double;

use aws_credential_types::Credentials;
use kafka_lambda_relay::auth::msk::{bootstrap_brokers, Connectivity, MskAuth, MskEnvironment};
use kafka_lambda_relay::auth::{resolve_with_msk, ErrorCode, SecretError, SecretSource};
use kafka_lambda_relay::config::RelayConfig;
use msk_double::{Cluster, MskControlPlane};

const ARN: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/751d2973-a626-431c-9d4e-d7975eb44dd7-2";
const SERVERLESS_ARN: &str =
    "arn:aws:kafka:us-east-1:123456789012:cluster/serverless/0a1b2c3d-4e5f-6789-abcd-ef0123456789-s1";
const CREATING_ARN: &str =
    "arn:aws:kafka:us-east-1:123456789012:cluster/creating/11111111-2222-3333-4444-555555555555-1";
const SCRAM_ONLY_ARN: &str =
    "arn:aws:kafka:us-east-1:123456789012:cluster/scram/22222222-2222-3333-4444-555555555555-1";
const DENIED_ARN: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/denied/33333333-2222-3333-4444-555555555555-1";
const UNAUTHORIZED_ARN: &str =
    "arn:aws:kafka:us-east-1:123456789012:cluster/unauth/44444444-2222-3333-4444-555555555555-1";
const BROKEN_ARN: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/broken/55555555-2222-3333-4444-555555555555-1";
const MISSING_ARN: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/missing/66666666-2222-3333-4444-555555555555-1";
const SECRET_KEY: &str = "msk-bootstrap-test-secret-never-printed";

fn all_strings() -> serde_json::Value {
    serde_json::json!({
        "bootstrapBrokerString": "b-1.demo.kafka.us-east-1.amazonaws.com:9092",
        "bootstrapBrokerStringTls": "b-1.demo.kafka.us-east-1.amazonaws.com:9094,b-2.demo.kafka.us-east-1.amazonaws.com:9094",
        "bootstrapBrokerStringSaslScram": "b-1.demo.kafka.us-east-1.amazonaws.com:9096",
        "bootstrapBrokerStringSaslIam": "b-1.demo.kafka.us-east-1.amazonaws.com:9098,b-2.demo.kafka.us-east-1.amazonaws.com:9098",
        "bootstrapBrokerStringPublicTls": "b-1-public.demo.kafka.us-east-1.amazonaws.com:9194",
        "bootstrapBrokerStringPublicSaslScram": "b-1-public.demo.kafka.us-east-1.amazonaws.com:9196",
        "bootstrapBrokerStringPublicSaslIam": "b-1-public.demo.kafka.us-east-1.amazonaws.com:9198",
        "bootstrapBrokerStringVpcConnectivityTls": "b-1.vpce.demo.kafka.us-east-1.amazonaws.com:14001",
        "bootstrapBrokerStringVpcConnectivitySaslScram": "b-1.vpce.demo.kafka.us-east-1.amazonaws.com:14002",
        "bootstrapBrokerStringVpcConnectivitySaslIam": "b-1.vpce.demo.kafka.us-east-1.amazonaws.com:14003"
    })
}

async fn control_plane() -> MskControlPlane {
    MskControlPlane::start(vec![
        (ARN.into(), Cluster::active(all_strings())),
        (
            SERVERLESS_ARN.into(),
            Cluster {
                cluster_type: "SERVERLESS",
                ..Cluster::active(serde_json::json!({"bootstrapBrokerStringSaslIam": "boot-abc.c1.kafka-serverless.us-east-1.amazonaws.com:9098"}))
            },
        ),
        (CREATING_ARN.into(), Cluster { state: "CREATING", ..Cluster::active(serde_json::json!({})) }),
        (
            SCRAM_ONLY_ARN.into(),
            Cluster::active(serde_json::json!({"bootstrapBrokerStringSaslScram": "b-1.scram.kafka.us-east-1.amazonaws.com:9096"})),
        ),
        (DENIED_ARN.into(), Cluster { denied: Some((403, "ForbiddenException")), ..Cluster::active(all_strings()) }),
        (UNAUTHORIZED_ARN.into(), Cluster { denied: Some((401, "UnauthorizedException")), ..Cluster::active(all_strings()) }),
        (BROKEN_ARN.into(), Cluster { denied: Some((500, "InternalServerErrorException")), ..Cluster::active(all_strings()) }),
    ])
    .await
}

async fn environment(endpoint: &str) -> MskEnvironment {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("AKIDMSKTEST", SECRET_KEY, None, None, "test"))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    MskEnvironment::new(config)
}

#[tokio::test]
async fn every_authentication_and_connectivity_picks_its_broker_string() {
    let double = control_plane().await;
    let client = environment(&double.url).await.kafka_client("us-east-1");
    let expected = [
        (
            MskAuth::Iam,
            Connectivity::Private,
            "b-1.demo.kafka.us-east-1.amazonaws.com:9098,b-2.demo.kafka.us-east-1.amazonaws.com:9098",
        ),
        (MskAuth::SaslScram, Connectivity::Private, "b-1.demo.kafka.us-east-1.amazonaws.com:9096"),
        (
            MskAuth::Tls,
            Connectivity::Private,
            "b-1.demo.kafka.us-east-1.amazonaws.com:9094,b-2.demo.kafka.us-east-1.amazonaws.com:9094",
        ),
        (MskAuth::Iam, Connectivity::Public, "b-1-public.demo.kafka.us-east-1.amazonaws.com:9198"),
        (MskAuth::SaslScram, Connectivity::Public, "b-1-public.demo.kafka.us-east-1.amazonaws.com:9196"),
        (MskAuth::Tls, Connectivity::Public, "b-1-public.demo.kafka.us-east-1.amazonaws.com:9194"),
        (MskAuth::Iam, Connectivity::MultiVpc, "b-1.vpce.demo.kafka.us-east-1.amazonaws.com:14003"),
        (MskAuth::SaslScram, Connectivity::MultiVpc, "b-1.vpce.demo.kafka.us-east-1.amazonaws.com:14002"),
        (MskAuth::Tls, Connectivity::MultiVpc, "b-1.vpce.demo.kafka.us-east-1.amazonaws.com:14001"),
    ];
    for (auth, connectivity, brokers) in expected {
        let found = bootstrap_brokers(&client, ARN, auth, connectivity).await;
        assert_eq!(found.as_deref(), Ok(brokers), "{auth:?} over {connectivity:?}");
    }
    // One GetBootstrapBrokers per lookup, nothing else on the success path.
    assert_eq!(double.calls(), vec![format!("GetBootstrapBrokers {ARN}"); 9]);
}

#[tokio::test]
async fn msk_serverless_works_with_iam_and_refuses_scram_naming_iam_only() {
    let double = control_plane().await;
    let client = environment(&double.url).await.kafka_client("us-east-1");
    assert_eq!(
        bootstrap_brokers(&client, SERVERLESS_ARN, MskAuth::Iam, Connectivity::Private).await.as_deref(),
        Ok("boot-abc.c1.kafka-serverless.us-east-1.amazonaws.com:9098")
    );
    let error =
        bootstrap_brokers(&client, SERVERLESS_ARN, MskAuth::SaslScram, Connectivity::Private).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
    assert!(error.sentence.contains("is MSK Serverless, which supports IAM authentication only"), "{error}");
    assert!(double.calls().contains(&format!("DescribeClusterV2 {SERVERLESS_ARN}")));
}

#[tokio::test]
async fn each_failure_gives_its_code_and_the_msk_error() {
    let double = control_plane().await;
    let client = environment(&double.url).await.kafka_client("us-east-1");
    let cases: [(&str, MskAuth, Connectivity, ErrorCode, &[&str]); 6] = [
        (
            MISSING_ARN,
            MskAuth::Iam,
            Connectivity::Private,
            ErrorCode::EsmConfigNotValid,
            &["does not exist", "NotFoundException"],
        ),
        (
            CREATING_ARN,
            MskAuth::Iam,
            Connectivity::Private,
            ErrorCode::EsmConfigNotValid,
            &[
                "is CREATING, not ACTIVE",
                "BadRequestException",
                "You can't get bootstrap broker nodes for a cluster in CREATING state.",
            ],
        ),
        (
            DENIED_ARN,
            MskAuth::Iam,
            Connectivity::Private,
            ErrorCode::EsmConfigNotValid,
            &[
                "may not read MSK cluster",
                "ForbiddenException",
                "allow kafka:GetBootstrapBrokers and kafka:DescribeClusterV2",
            ],
        ),
        (
            UNAUTHORIZED_ARN,
            MskAuth::Iam,
            Connectivity::Private,
            ErrorCode::EsmConfigNotValid,
            &["UnauthorizedException", "may not read"],
        ),
        (
            BROKEN_ARN,
            MskAuth::Iam,
            Connectivity::Private,
            ErrorCode::EsmConfigNotValid,
            &["InternalServerErrorException"],
        ),
        (
            SCRAM_ONLY_ARN,
            MskAuth::Iam,
            Connectivity::Private,
            ErrorCode::EsmConfigNotValid,
            &["has no BootstrapBrokerStringSaslIam", "turn on IAM authentication on the cluster"],
        ),
    ];
    for (arn, auth, connectivity, code, needles) in &cases {
        let error = bootstrap_brokers(&client, arn, *auth, *connectivity).await.unwrap_err();
        assert_eq!(error.code, *code, "{arn}: {error}");
        assert!(error.sentence.contains(arn), "{error}");
        for needle in *needles {
            assert!(error.sentence.contains(needle), "{arn}: missing {needle:?} in {error}");
        }
        assert!(!error.sentence.contains(SECRET_KEY), "{error}");
    }
    // Public strings only when asked: a cluster with only private IAM brokers says which connectivity it has.
    let private_only = MskControlPlane::start(vec![(
        ARN.into(),
        Cluster::active(serde_json::json!({"bootstrapBrokerStringSaslIam": "b-1:9098"})),
    )])
    .await;
    let client = environment(&private_only.url).await.kafka_client("us-east-1");
    let error = bootstrap_brokers(&client, ARN, MskAuth::Iam, Connectivity::Public).await.unwrap_err();
    assert!(error.sentence.contains("has no BootstrapBrokerStringPublicSaslIam"), "{error}");
    assert!(error.sentence.contains("the cluster offers IAM over MskConnectivity PRIVATE"), "{error}");
}

#[tokio::test]
async fn an_unreachable_control_plane_says_what_route_is_missing() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = environment(&format!("http://127.0.0.1:{port}")).await.kafka_client("us-east-1");
    let error = bootstrap_brokers(&client, ARN, MskAuth::Iam, Connectivity::Private).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::EsmConfigNotValid);
    assert!(error.sentence.contains("cannot reach the MSK control plane"), "{error}");
    assert!(error.sentence.contains("VPC interface endpoint"), "{error}");
}

struct NoSecrets;

#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        Err(SecretError::NotFound { arn: arn.into(), code: "ResourceNotFoundException".into() })
    }
}

/// AWS's MSK CLI example (`--event-source-arn <cluster ARN> --topics AWSKafkaTopic --starting-position LATEST`,
/// no SourceAccessConfigurations) validates, and resolving it looks the brokers up and selects IAM.
#[tokio::test]
async fn aws_cli_example_resolves_to_iam_on_the_looked_up_brokers() {
    let double = control_plane().await;
    let config = RelayConfig::parse_valid(
        &serde_json::json!({"Mappings": [{
            "EventSourceArn": ARN,
            "Topics": ["AWSKafkaTopic"],
            "StartingPosition": "LATEST",
            "FunctionName": "my-kafka-function"
        }]})
        .to_string(),
    )
    .expect("validates");
    let mapping = &config.mappings[0];
    let security = resolve_with_msk(mapping, &NoSecrets, &environment(&double.url).await).await.expect("resolves");
    assert_eq!(security.security_protocol(), "sasl_ssl");
    assert_eq!(security.sasl_mechanism(), Some("OAUTHBEARER"));
    assert_eq!(security.public_setting("sasl.mechanism"), Some("OAUTHBEARER"));
    let brokers = "b-1.demo.kafka.us-east-1.amazonaws.com:9098,b-2.demo.kafka.us-east-1.amazonaws.com:9098";
    assert_eq!(security.bootstrap_servers(), Some(brokers));
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", "");
    security.apply(&mut client);
    assert_eq!(client.get("bootstrap.servers"), Some(brokers));
    assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(client.get("ssl.endpoint.identification.algorithm"), Some("https"));
    let iam = security.msk_iam().expect("an IAM token source");
    assert_eq!(iam.region(), "us-east-1");
    let token = iam.token().expect("a token");
    let debug = format!("{security:?}");
    assert!(!debug.contains(&token.token) && !debug.contains(SECRET_KEY), "{debug}");
    assert_eq!(double.calls(), vec![format!("GetBootstrapBrokers {ARN}")], "one lookup per resolve");

    // With endpoints listed, nothing is looked up, and IAM still applies (an MSK mapping without SASL/mTLS).
    let mut listed = mapping.clone();
    listed.self_managed_event_source = Some(kafka_lambda_relay::config::SelfManagedEventSource {
        endpoints: kafka_lambda_relay::config::Endpoints { kafka_bootstrap_servers: vec!["b-9:9098".into()] },
    });
    let security = resolve_with_msk(&listed, &NoSecrets, &environment(&double.url).await).await.expect("resolves");
    assert_eq!(security.bootstrap_servers(), None);
    assert_eq!(security.sasl_mechanism(), Some("OAUTHBEARER"));
    assert_eq!(double.calls().len(), 1);
}

/// Secrets by ARN.
struct Secrets(Vec<(&'static str, serde_json::Value)>);

#[async_trait::async_trait]
impl SecretSource for Secrets {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        self.0
            .iter()
            .find(|(a, _)| *a == arn)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| SecretError::NotFound { arn: arn.into(), code: "ResourceNotFoundException".into() })
    }
}

/// SASL/SCRAM and mTLS MSK mappings get their own broker strings and no IAM token source.
#[tokio::test]
async fn scram_and_mtls_msk_mappings_use_their_strings_and_no_iam() {
    const SCRAM: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:AmazonMSK_relay-AbCdEf";
    const CERT: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:relay-client-AbCdEf";
    let certificate = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
    let secrets = Secrets(vec![
        (SCRAM, serde_json::json!({"username": "relay", "password": "scram-password-never-printed"})),
        (CERT, serde_json::json!({"certificate": certificate, "privateKey": key})),
    ]);
    let double = control_plane().await;
    let environment = environment(&double.url).await;
    for (kind, uri, protocol, mechanism, brokers) in [
        (
            "SASL_SCRAM_512_AUTH",
            SCRAM,
            "sasl_ssl",
            Some("SCRAM-SHA-512"),
            "b-1.demo.kafka.us-east-1.amazonaws.com:9096",
        ),
        (
            "CLIENT_CERTIFICATE_TLS_AUTH",
            CERT,
            "ssl",
            None,
            "b-1.demo.kafka.us-east-1.amazonaws.com:9094,b-2.demo.kafka.us-east-1.amazonaws.com:9094",
        ),
    ] {
        let config = RelayConfig::parse_valid(
            &serde_json::json!({"Mappings": [{
                "EventSourceArn": ARN,
                "Topics": ["orders"],
                "StartingPosition": "TRIM_HORIZON",
                "FunctionName": "f",
                "SourceAccessConfigurations": [{"Type": kind, "URI": uri}]
            }]})
            .to_string(),
        )
        .expect("validates");
        let security = resolve_with_msk(&config.mappings[0], &secrets, &environment).await.expect("resolves");
        assert_eq!(security.security_protocol(), protocol, "{kind}");
        assert_eq!(security.sasl_mechanism(), mechanism, "{kind}");
        assert_eq!(security.bootstrap_servers(), Some(brokers), "{kind}");
        assert!(security.msk_iam().is_none(), "{kind}: no IAM tokens");
    }
}
