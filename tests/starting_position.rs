//! A LATEST or AT_TIMESTAMP starting position is resolved by the relay, retried when the lookup fails, and a
//! partition whose start cannot be resolved is never consumed (issue 13: a failed `ListOffsets` used to fall
//! back to librdkafka's reset policy, which starts at the log end and, as the start was never committed,
//! skipped what was produced before the next run).
//!
//! The broker double is librdkafka's mock cluster with errors pushed onto its `ListOffsets` handler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_lambda_relay::auth::{ConnectionDiagnostics, KafkaSecurity};
use kafka_lambda_relay::config::{Mapping, StartingPosition};
use kafka_lambda_relay::kafka::consumer::{
    consumer_config, subscribe, AssignedPartition, GroupEvent, RelayConsumer, RelayContext, StartLookup,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const PARTITIONS: i32 = 2;

/// A one-broker mock cluster with a topic of [`PARTITIONS`] partitions, and a producer on it.
struct Cluster {
    producer: BaseProducer,
    topic: String,
}

impl Cluster {
    fn start() -> TestResult<Self> {
        let producer: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("linger.ms", "1")
            .set("log_level", "3")
            .create()?;
        // SAFETY: the mock cluster belongs to `producer`, alive for this call. A group's first join would
        // otherwise wait 3 s for more members.
        unsafe {
            let raw = rdkafka::bindings::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, 0);
        }
        let topic = format!("start-{}", uuid::Uuid::new_v4().simple());
        producer.client().mock_cluster().ok_or("a mock cluster")?.create_topic(&topic, PARTITIONS, 1)?;
        Ok(Self { producer, topic })
    }

    fn bootstrap(&self) -> TestResult<String> {
        Ok(self.producer.client().mock_cluster().ok_or("a mock cluster")?.bootstrap_servers())
    }

    /// Produces `count` records to every partition and waits for them.
    fn produce(&self, count: usize) -> TestResult {
        for partition in 0..PARTITIONS {
            for i in 0..count {
                let value = format!("p{partition}-{i}");
                self.producer
                    .send(BaseRecord::<(), str>::to(&self.topic).partition(partition).payload(&value))
                    .map_err(|(e, _)| e)?;
            }
        }
        self.producer.flush(Duration::from_secs(10))?;
        Ok(())
    }

    /// The next `count` ListOffsets requests fail with a non-retriable broker error.
    fn fail_list_offsets(&self, count: usize) -> TestResult {
        let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; count];
        self.producer
            .client()
            .mock_cluster()
            .ok_or("a mock cluster")?
            .request_errors(RDKafkaApiKey::ListOffsets, &errors);
        Ok(())
    }

    fn clear_errors(&self) -> TestResult {
        self.producer.client().mock_cluster().ok_or("a mock cluster")?.clear_request_errors(RDKafkaApiKey::ListOffsets);
        Ok(())
    }

    fn consumer(&self, group: &str, position: StartingPosition, lookup: StartLookup) -> TestResult<RelayConsumer> {
        let bootstrap = self.bootstrap()?;
        let mapping: Mapping = serde_json::from_value(serde_json::json!({
            "FunctionName": "target",
            "Topics": [self.topic],
            "StartingPosition": "LATEST",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}},
            "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
        }))?;
        let diagnostics = Arc::new(ConnectionDiagnostics::new(&KafkaSecurity::plaintext(), &mapping));
        let context = RelayContext::new(position, None, diagnostics).with_start_lookup(lookup);
        let config = consumer_config(&bootstrap, group, position, Duration::from_secs(6));
        Ok(subscribe(&config, context, std::slice::from_ref(&self.topic))?)
    }
}

/// Polls `consumer` for `period`, returning the partitions assigned and the (partition, offset) of every
/// record received.
async fn poll(consumer: &RelayConsumer, period: Duration) -> (Vec<AssignedPartition>, Vec<(i32, i64)>) {
    let until = Instant::now() + period;
    let (mut assigned, mut received) = (Vec::new(), Vec::new());
    while Instant::now() < until {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            received.push((message.partition(), message.offset()));
        }
        for event in consumer.context().take_events() {
            if let GroupEvent::Assigned(partitions) = event {
                assigned.extend(partitions);
            }
        }
    }
    (assigned, received)
}

/// Polls until the group assigned partitions (at most 15 s), then `settle` more.
async fn join(consumer: &RelayConsumer, settle: Duration) -> (Vec<AssignedPartition>, Vec<(i32, i64)>) {
    let until = Instant::now() + Duration::from_secs(15);
    let (mut assigned, mut received) = (Vec::new(), Vec::new());
    while assigned.is_empty() && Instant::now() < until {
        let (a, r) = poll(consumer, Duration::from_millis(200)).await;
        assigned.extend(a);
        received.extend(r);
    }
    let (a, r) = poll(consumer, settle).await;
    assigned.extend(a);
    received.extend(r);
    (assigned, received)
}

fn quick_lookup() -> StartLookup {
    StartLookup { attempts: 3, initial_backoff: Duration::from_millis(50), budget: Duration::from_secs(5) }
}

fn unique_group() -> String {
    format!("group-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_latest_partition_whose_start_cannot_be_resolved_is_never_consumed() -> TestResult {
    let cluster = Cluster::start()?;
    cluster.produce(3)?;
    // More failures than the lookup's tries: ListOffsets never succeeds while the consumer joins.
    cluster.fail_list_offsets(1000)?;
    let consumer = cluster.consumer(&unique_group(), StartingPosition::Latest, quick_lookup())?;
    let (assigned, received) = join(&consumer, Duration::from_millis(500)).await;

    assert_eq!(assigned.len(), PARTITIONS as usize, "{assigned:?}");
    for partition in &assigned {
        assert_eq!(partition.start, None, "{partition:?}");
        let reason = partition.unresolved_start.as_deref().ok_or("the partition is reported unresolved")?;
        assert!(reason.starts_with("LIST_OFFSETS_FAILED: the starting offset lookup failed 3 time(s):"), "{reason}");
    }
    // The broker recovers. A consumer that fell back to librdkafka's reset policy now starts at the log end
    // and consumes what follows; the records produced before (and the start) would be lost to the group.
    cluster.clear_errors()?;
    cluster.produce(2)?;
    let (_, later) = poll(&consumer, Duration::from_secs(2)).await;
    cluster.produce(1)?;
    let (_, last) = poll(&consumer, Duration::from_secs(2)).await;
    assert_eq!([received, later, last].concat(), vec![], "nothing of an unresolved partition is consumed");
    assert_eq!(consumer.assignment()?.count(), 0, "unresolved partitions are not in the assignment");
    Ok(())
}

#[tokio::test]
async fn a_failed_start_lookup_is_retried_and_then_starts_at_the_log_end() -> TestResult {
    let cluster = Cluster::start()?;
    cluster.produce(3)?;
    // Two failures, then answers: the third try resolves every partition.
    cluster.fail_list_offsets(2)?;
    let consumer = cluster.consumer(&unique_group(), StartingPosition::Latest, quick_lookup())?;
    let (assigned, received) = join(&consumer, Duration::from_millis(300)).await;
    cluster.clear_errors()?;

    let mut starts: Vec<(i32, Option<i64>, Option<String>)> =
        assigned.iter().map(|a| (a.key.partition, a.start, a.unresolved_start.clone())).collect();
    starts.sort();
    assert_eq!(starts, vec![(0, Some(3), None), (1, Some(3), None)]);
    assert_eq!(received, vec![]);
    // Consumption starts at the resolved offset: exactly the records produced after it.
    cluster.produce(2)?;
    let (_, mut later) = poll(&consumer, Duration::from_secs(3)).await;
    later.sort();
    assert_eq!(later, vec![(0, 3), (0, 4), (1, 3), (1, 4)]);
    Ok(())
}

#[tokio::test]
async fn trim_horizon_needs_no_lookup_and_reads_from_the_oldest_record() -> TestResult {
    let cluster = Cluster::start()?;
    cluster.produce(2)?;
    cluster.fail_list_offsets(1000)?;
    let consumer = cluster.consumer(&unique_group(), StartingPosition::TrimHorizon, quick_lookup())?;
    let (assigned, received) = join(&consumer, Duration::from_millis(200)).await;
    assert_eq!(assigned.len(), PARTITIONS as usize);
    assert!(assigned.iter().all(|a| a.unresolved_start.is_none() && a.start.is_none()), "{assigned:?}");
    // librdkafka's own reset to the oldest record uses ListOffsets too: it resumes once the broker answers.
    cluster.clear_errors()?;
    let (_, later) = poll(&consumer, Duration::from_secs(4)).await;
    let mut received = [received, later].concat();
    received.sort();
    assert_eq!(received, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    Ok(())
}
