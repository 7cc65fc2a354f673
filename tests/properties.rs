//! Property tests of every parser: the configuration parser and validator, the function-response and
//! item-identifier parser, the filter-pattern compiler and matcher, and the secret parsers. Each property
//! names the invariant it protects.
//!
//! The fast tier runs each property with a fixed number of cases; set `PROPTEST_CASES` for a longer run
//! (`PROPTEST_CASES=5000 cargo test --test properties`). A failure prints the smallest input found.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kafka_lambda_relay::auth::{ConnectionDiagnostics, SecretError, SecretSource};
use kafka_lambda_relay::config::{
    destination_kind, ConfigError, FilterCriteria, Mapping, RelayConfig, StartingPosition,
};
use kafka_lambda_relay::filter::{Filters, Pattern};
use kafka_lambda_relay::invoke::InvokeResult;
use kafka_lambda_relay::kafka::consumer::{consumer_config, subscribe, RelayContext};
use kafka_lambda_relay::kafka::{PartitionKey, Record, TimestampType};
use kafka_lambda_relay::outcome::{classify, Settings, Verdict};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Value};

/// Cases per property: `PROPTEST_CASES`, else `default` (the fast tier).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default);
    // No regression files written into the source tree: a failure prints its minimal case instead.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// --- generators ------------------------------------------------------------------------------------------

/// Strings that break naive parsers: control characters, NUL, emoji, paths, separators, long runs.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "[a-zA-Z0-9._:/*@=+-]{0,16}",
        Just(String::new()),
        Just("\u{0}".to_string()),
        Just("a\u{0}b:9092".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("target?x=1#y".to_string()),
        Just("\u{1F600}".to_string()),
        Just(" ".to_string()),
        Just("a b".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("x,y:1".to_string()),
        (1usize..400).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map("[a-zA-Z$]{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn function_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[a-zA-Z0-9_-]{1,64}".prop_map(Value::from),
        1 => "[a-z]{1,10}:(v[0-9]|\\$LATEST)".prop_map(Value::from),
        1 => "[a-z]{1,10}".prop_map(|n| Value::from(format!("123456789012:function:{n}"))),
        1 => "[a-z]{1,10}".prop_map(|n| Value::from(format!("arn:aws:lambda:us-east-1:123456789012:function:{n}"))),
        2 => nasty_string().prop_map(Value::from),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-zA-Z0-9._-]{1,20}", 2 => Just("orders".to_string()), 1 => nasty_string()]
}

/// Local addresses only: a validated mapping gets a real consumer, which must not look up names or reach
/// anything but closed local ports.
fn bootstrap_server() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (prop_oneof![Just("127.0.0.1"), Just("localhost")], prop_oneof![Just(1u32), Just(9u32)])
            .prop_map(|(host, port)| Value::from(format!("{host}:{port}"))),
        1 => nasty_string().prop_map(Value::from),
    ]
}

fn secret_arn() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9/_+=.@-]{1,20}".prop_map(|n| format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{n}")),
        1 => nasty_string(),
    ]
}

fn source_access() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just("BASIC_AUTH".to_string()),
        Just("SASL_SCRAM_256_AUTH".to_string()),
        Just("SASL_SCRAM_512_AUTH".to_string()),
        Just("VPC_SUBNET".to_string()),
        Just("VPC_SECURITY_GROUP".to_string()),
        nasty_string(),
    ];
    (kind, secret_arn()).prop_map(|(kind, arn)| {
        let uri = match kind.as_str() {
            "VPC_SUBNET" => "subnet:subnet-0a1b2c".to_string(),
            "VPC_SECURITY_GROUP" => "security_group:sg-0a1b2c".to_string(),
            _ => arn,
        };
        json!({"Type": kind, "URI": uri})
    })
}

fn destination() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from("")),
        "[a-zA-Z0-9_-]{1,20}".prop_map(|q| Value::from(format!("arn:aws:sqs:us-east-1:123456789012:{q}"))),
        "[a-zA-Z0-9_-]{1,20}".prop_map(|t| Value::from(format!("arn:aws:sns:eu-west-1:123456789012:{t}"))),
        "[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]".prop_map(|b| Value::from(format!("arn:aws:s3:::{b}"))),
        "[a-zA-Z0-9._-]{1,30}".prop_map(|t| Value::from(format!("kafka://{t}"))),
        nasty_string().prop_map(Value::from),
    ]
}

fn filter_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"value": {"status": ["PAID"]}}"#.to_string()),
        Just(r#"{"key": [{"prefix": "a"}], "partition": [{"numeric": [">=", 0]}]}"#.to_string()),
        any_json().prop_map(|v| v.to_string()),
        nasty_string(),
    ]
}

/// A mapping as JSON: mostly plausible values, with bad ones mixed into every field.
fn mapping_json() -> impl Strategy<Value = Value> {
    let names = (
        function_name(),
        vec(topic(), 0..4),
        vec(bootstrap_server(), 0..3),
        prop_oneof![
            Just(json!("LATEST")),
            Just(json!("TRIM_HORIZON")),
            Just(json!("AT_TIMESTAMP")),
            Just(Value::Null),
            Just(json!("BOGUS"))
        ],
        proptest::option::of(prop_oneof![Just(json!(1_700_000_000)), Just(json!(-5)), Just(json!(1.5))]),
        proptest::option::of(prop_oneof![
            "[a-zA-Z0-9._-]{1,30}".prop_map(Value::from),
            nasty_string().prop_map(Value::from)
        ]),
        proptest::option::of(prop_oneof![
            Just(Value::from(uuid::Uuid::new_v4().to_string())),
            nasty_string().prop_map(Value::from)
        ]),
    );
    let settings = (
        proptest::option::of(prop_oneof![1i64..=10_000, any::<i64>()]),
        proptest::option::of(prop_oneof![0i64..=300, any::<i64>()]),
        vec(source_access(), 0..3),
        proptest::option::of(destination()),
        proptest::option::of(vec(filter_pattern(), 0..7)),
        proptest::option::of(prop_oneof![Just(json!(["ReportBatchItemFailures"])), Just(json!(["Partial"]))]),
        proptest::option::of(prop_oneof![-1i64..=10_000, any::<i64>()]),
        proptest::option::of(prop_oneof![Just(-1i64), 60i64..=604_800, any::<i64>()]),
        any::<bool>(),
    );
    (names, settings).prop_map(
        |(
            (function, topics, servers, position, timestamp, group, uuid),
            (batch, window, access, destination, filters, responses, retries, age, bisect),
        )| {
            let mut m = json!({
                "FunctionName": function,
                "Topics": topics,
                "StartingPosition": position,
                "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": servers}},
                "SourceAccessConfigurations": access,
                "BisectBatchOnFunctionError": bisect,
            });
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m[k] = v;
                }
            };
            set("StartingPositionTimestamp", timestamp);
            set("SelfManagedKafkaEventSourceConfig", group.map(|g| json!({"ConsumerGroupId": g})));
            set("UUID", uuid);
            set("BatchSize", batch.map(Value::from));
            set("MaximumBatchingWindowInSeconds", window.map(Value::from));
            set("DestinationConfig", destination.map(|d| json!({"OnFailure": {"Destination": d}})));
            set(
                "FilterCriteria",
                filters.map(|f| json!({"Filters": f.into_iter().map(|p| json!({"Pattern": p})).collect::<Vec<_>>()})),
            );
            set("FunctionResponseTypes", responses);
            set("MaximumRetryAttempts", retries.map(Value::from));
            set("MaximumRecordAgeInSeconds", age.map(Value::from));
            m
        },
    )
}

/// A valid mapping with one field set to any value.
fn randomly_spoiled_mapping() -> impl Strategy<Value = Value> {
    let fields = proptest::sample::select(vec![
        "UUID",
        "FunctionName",
        "Topics",
        "SelfManagedEventSource",
        "SelfManagedKafkaEventSourceConfig",
        "BatchSize",
        "StartingPosition",
        "FilterCriteria",
        "DestinationConfig",
        "SourceAccessConfigurations",
        "EventSourceArn",
    ]);
    let value = prop_oneof![
        nasty_string().prop_map(Value::from),
        vec(nasty_string(), 0..3).prop_map(|v| json!(v)),
        nasty_string().prop_map(|s| json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [s]}})),
        nasty_string().prop_map(|s| json!({"ConsumerGroupId": s})),
        nasty_string().prop_map(|s| json!({"Filters": [{"Pattern": s}]})),
        nasty_string().prop_map(|s| json!({"OnFailure": {"Destination": s}})),
        nasty_string().prop_map(|s| json!([{"Type": "BASIC_AUTH", "URI": s}])),
        any_json(),
    ];
    ((0usize..1000).prop_flat_map(valid_mapping), fields, value).prop_map(|(mut m, field, value)| {
        m[field] = value;
        m
    })
}

fn config_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => vec(prop_oneof![(0usize..1000).prop_flat_map(valid_mapping), randomly_spoiled_mapping()], 1..3)
            .prop_map(|m| json!({"Mappings": m})),
        4 => vec(mapping_json(), 0..4).prop_map(|m| json!({"Mappings": m})),
        1 => any_json(),
        1 => any_json().prop_map(|v| json!({"Mappings": [v]})),
    ]
}

// --- what `run` does with a configuration before it consumes ---------------------------------------------

/// Every secret holds a user and a password, so SASL mappings resolve.
struct Credentials;

#[async_trait::async_trait]
impl SecretSource for Credentials {
    async fn secret_string(&self, _arn: &str) -> Result<String, SecretError> {
        Ok(json!({"username": "relay", "password": "pw"}).to_string())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
    })
}

/// The checks `run` makes on a mapping after `validate` and before consuming (src/relay `run_mapping`):
/// the filters compile, the destination ARN names a supported service, the secrets resolve into librdkafka
/// settings, and the consumer is created and subscribed.
fn run_accepts(mapping: &Mapping) -> Result<(), String> {
    if !mapping.enabled {
        return Ok(());
    }
    Filters::new(mapping.filter_criteria.as_ref()).map_err(|e| format!("filters: {e}"))?;
    if let Some(arn) = mapping.destination() {
        destination_kind(arn).ok_or_else(|| format!("destination {arn:?}"))?;
    }
    runtime().block_on(async {
        let security =
            kafka_lambda_relay::auth::resolve(mapping, &Credentials).await.map_err(|e| format!("auth: {e}"))?;
        let position = mapping.starting_position.unwrap_or(StartingPosition::Latest);
        let mut config = consumer_config(
            &mapping.bootstrap_servers().join(","),
            &mapping.consumer_group_id(),
            position,
            Duration::from_secs(10),
        );
        security.apply(&mut config);
        let diagnostics = Arc::new(ConnectionDiagnostics::new(&security, mapping));
        if let Some(destination) = mapping.destination().filter(|d| d.starts_with("kafka://")) {
            // As src/relay `kafka_sink`: a producer on the consumer's connection settings.
            let mut connection = rdkafka::ClientConfig::new();
            connection.set("bootstrap.servers", mapping.bootstrap_servers().join(","));
            security.apply(&mut connection);
            let context = kafka_lambda_relay::auth::DiagnosingContext::new(diagnostics.clone());
            let source = kafka_lambda_relay::event::EventSource::for_mapping(mapping);
            kafka_lambda_relay::destination::kafka::KafkaDestination::new(destination, &connection, context, source, Duration::from_secs(10))
                .map_err(|e| format!("kafka destination: {e}"))?;
        }
        let context = RelayContext::new(position, None, diagnostics);
        subscribe(&config, context, &mapping.topics).map(drop).map_err(|e| format!("consumer: {e}"))
    })
}

/// Validates `value` as a configuration; when `validate` accepts it, every mapping must pass
/// [`run_accepts`]. Returns whether it was accepted.
fn validate_and_run_agree(value: &Value) -> Result<bool, TestCaseError> {
    let config: RelayConfig = match serde_json::from_value(value.clone()) {
        Ok(config) => config,
        Err(error) => {
            // A parse error quotes at most what serde quotes; it never panics.
            prop_assert!(!error.to_string().is_empty());
            return Ok(false);
        }
    };
    match config.validate() {
        Ok(()) => {
            for mapping in &config.mappings {
                if let Err(why) = run_accepts(mapping) {
                    return Err(TestCaseError::fail(format!("validate accepted what run refuses: {why}\n{value}")));
                }
            }
            Ok(true)
        }
        Err(ConfigError::Invalid(violations)) => {
            prop_assert!(!violations.is_empty());
            for v in &violations {
                // Bad values are quoted short: a violation never grows with the input.
                prop_assert!(v.to_string().len() <= 1024, "a {}-byte violation: {}", v.to_string().len(), v);
            }
            Ok(false)
        }
        Err(other) => Err(TestCaseError::fail(format!("unexpected error {other}"))),
    }
}

proptest! {
    #![proptest_config(cases(64))]

    /// Invariant: `validate` is the whole truth. Whatever JSON it accepts, `run` accepts too (no
    /// `ESM_CONFIG_NOT_VALID` after a passing `validate`); nothing panics; violations stay short.
    #[test]
    fn validate_and_run_agree_on_any_configuration(value in config_json()) {
        validate_and_run_agree(&value)?;
    }
}

/// Invariant: as above, over a fixed corpus of 240 generated configurations (half built from values AWS
/// accepts, half with one field spoiled), so the agreement is checked on the same inputs on every run. At
/// least 100 are accepted and at least 100 refused, so neither half of the check is vacuous.
#[test]
fn validate_and_run_agree_on_a_corpus_of_generated_configurations() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let mut runner =
        TestRunner::new_with_rng(ProptestConfig::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[13; 32]));
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..240 {
        let value = if i % 2 == 0 {
            valid_mapping(i).prop_map(|m| json!({"Mappings": [m]})).new_tree(&mut runner).expect("a value").current()
        } else {
            spoiled_mapping(i).prop_map(|m| json!({"Mappings": [m]})).new_tree(&mut runner).expect("a value").current()
        };
        match validate_and_run_agree(&value) {
            Ok(true) => accepted += 1,
            Ok(false) => refused += 1,
            Err(error) => panic!("configuration {i}: {error}"),
        }
        if i % 2 == 0 {
            assert!(
                RelayConfig::parse_valid(&value.to_string()).is_ok(),
                "configuration {i} uses only values AWS accepts: {value}"
            );
        }
    }
    assert!(accepted >= 100 && refused >= 100, "accepted {accepted}, refused {refused}");
}

/// A mapping built only from values AWS's API and Kafka accept.
fn valid_mapping(seed: usize) -> impl Strategy<Value = Value> {
    (
        "[a-zA-Z0-9_-]{1,64}",
        proptest::sample::subsequence(vec!["orders", "payments", "a.b_c-d", "T1", "x"], 1..4),
        prop_oneof![Just("LATEST"), Just("TRIM_HORIZON")],
        1i64..=10_000,
        proptest::option::of(0i64..=300),
        proptest::option::of(prop_oneof![
            Just("arn:aws:sqs:us-east-1:123456789012:dlq"),
            Just("arn:aws:sns:us-east-1:123456789012:alerts.fifo"),
            Just("arn:aws:s3:::relay-failures"),
            Just("")
        ]),
        proptest::option::of(prop_oneof![Just("BASIC_AUTH"), Just("SASL_SCRAM_256_AUTH"), Just("SASL_SCRAM_512_AUTH")]),
        "[a-zA-Z0-9._:@=+/*-]{1,40}",
    )
        .prop_map(move |(function, topics, position, batch, window, destination, sasl, group)| {
            let mut m = json!({
                "UUID": uuid::Uuid::from_u128(seed as u128 + 1).to_string(),
                "FunctionName": function,
                "Topics": topics,
                "StartingPosition": position,
                "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1:9", "localhost:1"]}},
                "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
                "BatchSize": batch,
                "FilterCriteria": {"Filters": [{"Pattern": r#"{"value": {"n": [{"numeric": [">", 0]}]}}"#}]},
            });
            if let Some(window) = window {
                m["MaximumBatchingWindowInSeconds"] = json!(window);
            }
            if let Some(destination) = destination {
                m["DestinationConfig"] = json!({"OnFailure": {"Destination": destination}});
            }
            if let Some(kind) = sasl {
                m["SourceAccessConfigurations"] =
                    json!([{"Type": kind, "URI": "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-AbCdEf"}]);
            }
            m
        })
}

/// A valid mapping with one field replaced by a bad value of the kinds fuzzing found.
fn spoiled_mapping(seed: usize) -> impl Strategy<Value = Value> {
    let spoilers: Vec<(&str, Value)> = vec![
        ("Topics", json!(["orders", "orders"])),
        ("Topics", json!(["a b"])),
        ("Topics", json!([])),
        ("FunctionName", json!("../../etc/passwd")),
        ("FunctionName", json!("target?x=1#y")),
        ("FunctionName", json!("f\u{1F600}")),
        ("UUID", json!("x".repeat(4096))),
        ("SelfManagedEventSource", json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b\u{0}:9092"]}})),
        ("SelfManagedEventSource", json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1"]}})),
        ("SelfManagedKafkaEventSourceConfig", json!({"ConsumerGroupId": "a b"})),
        ("FilterCriteria", json!({"Filters": [{"Pattern": "y".repeat(5000)}]})),
        ("DestinationConfig", json!({"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:1:q"}})),
        ("SourceAccessConfigurations", json!([{"Type": "BASIC_AUTH", "URI": "kafka/credentials"}])),
        ("BatchSize", json!(0)),
    ];
    (valid_mapping(seed), proptest::sample::select(spoilers)).prop_map(|(mut m, (field, value))| {
        m[field] = value;
        m
    })
}

// --- the function response and item identifiers ---------------------------------------------------------

fn record(topic: &str, partition: i32, offset: i64) -> Record {
    Record::new(
        PartitionKey::new(topic, partition),
        offset,
        0,
        TimestampType::CreateTime,
        None,
        Some(b"v".to_vec()),
        vec![],
    )
}

/// A batch: distinct (topic, partition, offset) records over two topics and three partitions.
fn batch() -> impl Strategy<Value = Vec<Record>> {
    btree_map((0usize..2, 0i32..3), vec(0i64..1_000_000, 1..5), 1..6).prop_map(|parts| {
        let mut records = Vec::new();
        for ((topic, partition), offsets) in parts {
            let offsets: BTreeSet<i64> = offsets.into_iter().collect();
            for offset in offsets {
                records.push(record(["orders", "payments"][topic], partition, offset));
            }
        }
        records
    })
}

const PARTIAL: Settings = Settings { reports_batch_item_failures: true, bisect: false, retry_limit: None };

fn completed(payload: Vec<u8>) -> InvokeResult {
    InvokeResult::Completed { status_code: 200, function_error: None, executed_version: None, payload }
}

/// One identifier in the shapes functions send: the offset as a number or a string, extra fields around.
fn identifier(record: &Record, offset_as_string: bool, extra: bool) -> Value {
    let offset = if offset_as_string { json!(record.offset.to_string()) } else { json!(record.offset) };
    let mut id = json!({"partition": record.key_partition.to_string(), "offset": offset});
    if extra {
        id["note"] = json!("ignored");
    }
    json!({"itemIdentifier": id})
}

proptest! {
    #![proptest_config(cases(128))]

    /// Invariant: never skip a reported record. A partial response naming records of the batch checkpoints
    /// exactly the named partitions, each at the lowest offset named for it, whatever the order and shape of
    /// the identifiers; records before the checkpoint count as delivered, none at or after it does.
    #[test]
    fn partial_responses_checkpoint_each_named_partition_at_its_lowest_named_offset(
        records in batch(),
        picks in vec((any::<prop::sample::Index>(), any::<bool>(), any::<bool>()), 1..8),
    ) {
        let named: Vec<(&Record, bool, bool)> = picks.iter().map(|(i, s, e)| (i.get(&records), *s, *e)).collect();
        let body = json!({"batchItemFailures": named.iter().map(|(r, s, e)| identifier(r, *s, *e)).collect::<Vec<_>>()});
        let mut expected: BTreeMap<PartitionKey, i64> = BTreeMap::new();
        for (r, _, _) in &named {
            let entry = expected.entry(r.key_partition.clone()).or_insert(r.offset);
            *entry = (*entry).min(r.offset);
        }
        let verdict = classify(&completed(body.to_string().into_bytes()), &records, &PARTIAL);
        prop_assert_eq!(verdict, Verdict::Partial(expected));
    }

    /// Invariant: an identifier that names no record of the batch fails the whole batch (retried as a
    /// function error), never a success that would commit past it.
    #[test]
    fn an_identifier_outside_the_batch_fails_the_whole_batch(
        records in batch(),
        stray_offset in 1_000_000i64..2_000_000,
        stray_partition in prop_oneof!["[a-z]{1,5}-[0-9]", Just("orders".to_string()), Just("orders-x".to_string()), nasty_string()],
    ) {
        let mut failures = vec![identifier(&records[0], false, false)];
        failures.push(json!({"itemIdentifier": {"partition": stray_partition, "offset": stray_offset}}));
        let body = json!({"batchItemFailures": failures});
        let verdict = classify(&completed(body.to_string().into_bytes()), &records, &PARTIAL);
        prop_assert!(matches!(verdict, Verdict::FunctionError { .. }), "{:?}", verdict);
    }

    /// Invariant: any body is read without a panic; a body whose `batchItemFailures` lists anything is never
    /// a success; the reason given for a refused body stays short, whatever its size.
    #[test]
    fn any_response_body_is_read_safely(records in batch(), body in prop_oneof![
        any_json().prop_map(|v| v.to_string().into_bytes()),
        any_json().prop_map(|v| json!({"batchItemFailures": v}).to_string().into_bytes()),
        vec(any_json(), 1..4).prop_map(|v| json!({"batchItemFailures": v}).to_string().into_bytes()),
        vec(any::<u8>(), 0..64),
    ]) {
        let verdict = classify(&completed(body.clone()), &records, &PARTIAL);
        let lists_failures = serde_json::from_slice::<Value>(&body).ok()
            .and_then(|v| v.get("batchItemFailures").and_then(Value::as_array).map(|a| !a.is_empty()))
            .unwrap_or(false);
        if lists_failures {
            prop_assert!(verdict != Verdict::Success, "{}", String::from_utf8_lossy(&body));
        }
        if let Verdict::FunctionError { reason, .. } = &verdict {
            prop_assert!(reason.len() <= 512, "a {}-byte reason", reason.len());
        }
    }
}

/// Invariant: bodies up to Lambda's 6 MB response limit are parsed exactly, and a huge malformed value is
/// refused with a short reason.
#[test]
fn six_megabyte_responses_are_parsed_and_refused_with_short_reasons() {
    let records: Vec<Record> = (0..10_000).map(|i| record("orders", (i % 4) as i32, i / 4)).collect();
    // Identifiers until the body nears 6 MB, cycling over records 8.. of the batch.
    let mut failures: Vec<String> = Vec::new();
    let mut size = 0;
    while size < 6 * 1024 * 1024 - 1024 {
        let r = &records[8 + failures.len() % (records.len() - 8)];
        let id = identifier(r, failures.len().is_multiple_of(2), true).to_string();
        size += id.len() + 1;
        failures.push(id);
    }
    let body = format!("{{\"batchItemFailures\":[{}]}}", failures.join(","));
    assert!(body.len() <= 6 * 1024 * 1024);
    let verdict = classify(&completed(body.into_bytes()), &records, &PARTIAL);
    // Records 8..: per partition p the lowest named offset is that of record 8 + p.
    let expected: BTreeMap<PartitionKey, i64> = (0..4).map(|p| (PartitionKey::new("orders", p), 2)).collect();
    assert_eq!(verdict, Verdict::Partial(expected));

    let huge = "z".repeat(6 * 1024 * 1024 - 64);
    for body in [
        json!({"batchItemFailures": huge}),
        json!({"batchItemFailures": [{"itemIdentifier": {"partition": huge, "offset": 1}}]}),
        json!({"batchItemFailures": [{"itemIdentifier": {"partition": huge}}]}),
    ] {
        match classify(&completed(body.to_string().into_bytes()), &records, &PARTIAL) {
            Verdict::FunctionError { reason, .. } => assert!(reason.len() <= 512, "a {}-byte reason", reason.len()),
            other => panic!("a malformed response must fail the batch, got {other:?}"),
        }
    }
}

// --- filter patterns --------------------------------------------------------------------------------------

fn value_record(value: &Value) -> Record {
    Record::new(
        PartitionKey::new("t", 0),
        7,
        1_700_000_000_000,
        TimestampType::CreateTime,
        Some(b"k".to_vec()),
        Some(value.to_string().into_bytes()),
        vec![],
    )
}

fn matches(pattern: &Value, record: &Record) -> bool {
    let criteria = serde_json::from_value(json!({"Filters": [{"Pattern": pattern.to_string()}]})).expect("criteria");
    Filters::new(Some(&criteria)).expect("a valid pattern").matches(record)
}

proptest! {
    #![proptest_config(cases(256))]

    /// Invariant: compiling any text is an answer, never a panic; an error never repeats more than the
    /// pattern's own size.
    #[test]
    fn any_pattern_text_compiles_or_is_refused(text in prop_oneof![nasty_string(), any_json().prop_map(|v| v.to_string()),
        any_json().prop_map(|v| json!({"value": v}).to_string())]) {
        if let Err(error) = Pattern::parse(&text) {
            prop_assert!(error.to_string().len() <= text.len() + 512);
        }
    }

    /// Invariant: a compiled pattern matches any record (any bytes for key, value and headers) without a
    /// panic.
    #[test]
    fn any_record_is_matched_safely(
        pattern in any_json().prop_map(|v| json!({"value": v}).to_string()),
        key in proptest::option::of(vec(any::<u8>(), 0..32)),
        value in proptest::option::of(prop_oneof![vec(any::<u8>(), 0..32), any_json().prop_map(|v| v.to_string().into_bytes())]),
        headers in vec(("[a-z]{1,3}", vec(any::<u8>(), 0..8)), 0..3),
    ) {
        let criteria: FilterCriteria = serde_json::from_value(json!({"Filters": [{"Pattern": pattern}]})).expect("criteria");
        if let Ok(filters) = Filters::new(Some(&criteria)) {
            let record = Record::new(PartitionKey::new("t", 1), 5, 0, TimestampType::LogAppendTime, key, value, headers);
            let _ = filters.matches(&record);
        }
    }

    /// Invariant: an exact value and `anything-but` of it are complements on a present string field, so no
    /// record is both delivered and filtered out, or neither.
    #[test]
    fn exact_and_anything_but_are_complements(wanted in "[ab]{0,3}", actual in "[ab]{0,3}") {
        let record = value_record(&json!({"s": actual}));
        let exact = matches(&json!({"value": {"s": [wanted]}}), &record);
        let but = matches(&json!({"value": {"s": [{"anything-but": wanted}]}}), &record);
        prop_assert_eq!(exact, wanted == actual);
        prop_assert_eq!(but, wanted != actual);
    }

    /// Invariant: `prefix` and `suffix` match exactly the strings that start or end with the argument.
    #[test]
    fn prefix_and_suffix_match_as_str_does(affix in "[ab]{1,3}", actual in "[ab]{0,5}") {
        let record = value_record(&json!({"s": actual}));
        prop_assert_eq!(matches(&json!({"value": {"s": [{"prefix": affix}]}}), &record), actual.starts_with(&affix));
        prop_assert_eq!(matches(&json!({"value": {"s": [{"suffix": affix}]}}), &record), actual.ends_with(&affix));
    }

    /// Invariant: a `numeric` range matches exactly the numbers inside it.
    #[test]
    fn numeric_ranges_match_the_numbers_inside(low in -1000i64..1000, width in 1i64..1000, n in -3000i64..3000) {
        let high = low + width;
        let record = value_record(&json!({"n": n}));
        let pattern = json!({"value": {"n": [{"numeric": [">=", low, "<", high]}]}});
        prop_assert_eq!(matches(&pattern, &record), low <= n && n < high);
    }

    /// Invariant: `$or` is the union of its alternatives, and several patterns are OR-ed.
    #[test]
    fn or_is_the_union_of_its_alternatives(a in "[ab]{1,2}", b in "[ab]{1,2}", actual in "[ab]{1,2}") {
        let record = value_record(&json!({"s": actual}));
        let either = matches(&json!({"$or": [{"value": {"s": [a]}}, {"value": {"s": [b]}}]}), &record);
        prop_assert_eq!(either, actual == a || actual == b);
        let criteria = serde_json::from_value(json!({"Filters": [
            {"Pattern": json!({"value": {"s": [a]}}).to_string()},
            {"Pattern": json!({"value": {"s": [b]}}).to_string()}
        ]})).expect("criteria");
        prop_assert_eq!(Filters::new(Some(&criteria)).expect("valid").matches(&record), actual == a || actual == b);
    }
}

// --- secrets ----------------------------------------------------------------------------------------------

/// One secret for every ARN.
struct OneSecret(String);

#[async_trait::async_trait]
impl SecretSource for OneSecret {
    async fn secret_string(&self, _arn: &str) -> Result<String, SecretError> {
        Ok(self.0.clone())
    }
}

const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-AbCdEf";

fn secured_mapping(kind: &str) -> Mapping {
    serde_json::from_value(json!({
        "FunctionName": "target",
        "Topics": ["orders"],
        "StartingPosition": "TRIM_HORIZON",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b-1.example:9096"]}},
        "SourceAccessConfigurations": [{"Type": kind, "URI": ARN}]
    }))
    .expect("mapping")
}

/// Resolves `secret` for a mapping of type `kind`: the public text of the outcome (the error sentence, or
/// the settings' `Debug`).
fn resolve_text(kind: &str, secret: String) -> String {
    let mapping = secured_mapping(kind);
    runtime().block_on(async {
        match kafka_lambda_relay::auth::resolve(&mapping, &OneSecret(secret)).await {
            Ok(security) => format!("{security:?}"),
            Err(error) => error.to_string(),
        }
    })
}

/// A password no fixed text contains.
fn planted() -> impl Strategy<Value = String> {
    "[A-Z]{3}[0-9]{3}[a-z]{3}\\PC{0,8}".prop_map(|s| format!("Zq{s}"))
}

proptest! {
    #![proptest_config(cases(128))]

    /// Invariant: SASL secrets (SCRAM, PLAIN) of any shape are read or refused without a panic, and the
    /// password never appears in an error or in the settings' `Debug`.
    #[test]
    fn sasl_secrets_never_reveal_the_password(
        kind in prop_oneof![Just("BASIC_AUTH"), Just("SASL_SCRAM_256_AUTH"), Just("SASL_SCRAM_512_AUTH")],
        password in planted(),
        username in nasty_string(),
        shape in 0usize..5,
        noise in any_json(),
    ) {
        let secret = match shape {
            0 => json!({"username": username, "password": password}).to_string(),
            1 => json!({"username": username, "password": [password]}).to_string(),
            2 => json!({"user": username, "pass": password, "x": noise}).to_string(),
            3 => format!("{{\"username\": \"u\", \"password\": {password}}}"),
            _ => format!("{password} {noise}"),
        };
        let text = resolve_text(kind, secret);
        prop_assert!(!text.contains(&password), "{}", text);
    }

    /// Invariant: client-certificate secrets with any bytes in the PEM blocks (PKCS#8, encrypted or not,
    /// truncated, not base64) are read or refused without a panic, and the key never appears in the output.
    #[test]
    fn certificate_secrets_with_any_bytes_never_panic_or_reveal_the_key(
        label in prop_oneof![
            Just("PRIVATE KEY".to_string()),
            Just("ENCRYPTED PRIVATE KEY".to_string()),
            Just("RSA PRIVATE KEY".to_string()),
            Just("CERTIFICATE".to_string()),
            "[A-Z ]{0,12}"
        ],
        der in vec(any::<u8>(), 0..300),
        raw in prop_oneof![Just(false), Just(true)],
        cut in any::<prop::sample::Index>(),
        password in proptest::option::of(planted()),
    ) {
        use base64::Engine as _;
        let body = if raw { String::from_utf8_lossy(&der).into_owned() } else { base64::engine::general_purpose::STANDARD.encode(&der) };
        let mut key = format!("-----BEGIN {label}-----\nZqKEY{body}\n-----END {label}-----\n");
        if !key.is_empty() && cut.index(4) == 0 {
            let at = cut.index(key.len());
            key = key.char_indices().take_while(|(i, _)| *i < at).map(|(_, c)| c).collect();
        }
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n";
        let mut secret = json!({"certificate": certificate, "privateKey": key});
        if let Some(password) = &password {
            secret["privateKeyPassword"] = json!(password);
        }
        let text = resolve_text("CLIENT_CERTIFICATE_TLS_AUTH", secret.to_string());
        prop_assert!(!text.contains("ZqKEY"), "{}", text);
        if let Some(password) = password {
            prop_assert!(!text.contains(&password), "{}", text);
        }
    }
}
