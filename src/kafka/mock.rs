//! An in-process Kafka cluster (librdkafka's mock cluster) for the demo and the fast test tier.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;

/// A mock cluster that lives as long as this value, with a producer to seed it.
pub struct MockKafka {
    producer: BaseProducer,
    bootstrap: String,
}

impl MockKafka {
    /// Starts a mock cluster with `brokers` brokers.
    pub fn start(brokers: u32) -> KafkaResult<Self> {
        let producer: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .set("linger.ms", "5")
            // Room for records near the 6 MB event limit.
            .set("message.max.bytes", "16000000")
            .set("log_level", "3")
            .create()?;
        let cluster = producer.client().mock_cluster().expect("test.mock.num.brokers creates a mock cluster");
        let bootstrap = cluster.bootstrap_servers();
        drop(cluster);
        // SAFETY: the mock cluster belongs to `producer`, which outlives this call. A consumer group's first
        // join otherwise waits 3 s for more members, which makes every test and the demo slow.
        unsafe {
            let raw = rdkafka::bindings::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, 0);
        }
        Ok(Self { producer, bootstrap })
    }

    /// The cluster's bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic. Each mock partition keeps at most 5 MiB: use enough partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> KafkaResult<()> {
        let cluster = self.producer.client().mock_cluster().expect("mock cluster");
        cluster.create_topic(topic, partitions, 1)
    }

    /// Queues one record for `partition` (call [`MockKafka::flush`] to wait for acknowledgements).
    pub fn produce(&self, topic: &str, partition: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> KafkaResult<()> {
        self.produce_at(topic, partition, key, value, None)
    }

    /// Like [`MockKafka::produce`], with an explicit create time (Unix milliseconds).
    pub fn produce_at(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> KafkaResult<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition);
        if let Some(timestamp) = timestamp_ms {
            record = record.timestamp(timestamp);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error),
            }
        }
        Ok(())
    }

    /// Makes the next requests of `api` fail, one per error in `errors` (tests: failed commits).
    pub fn fail_next_requests(&self, api: rdkafka::types::RDKafkaApiKey, errors: &[rdkafka::types::RDKafkaRespErr]) {
        let cluster = self.producer.client().mock_cluster().expect("mock cluster");
        cluster.request_errors(api, errors);
    }

    /// Drops the errors [`MockKafka::fail_next_requests`] queued for `api` and not used yet.
    pub fn clear_request_errors(&self, api: rdkafka::types::RDKafkaApiKey) {
        let cluster = self.producer.client().mock_cluster().expect("mock cluster");
        cluster.clear_request_errors(api);
    }

    /// Takes broker `id` down (`up = false`: connections are closed and refused) or brings it back (tests: a
    /// broker that goes away).
    pub fn set_broker_up(&self, id: i32, up: bool) -> KafkaResult<()> {
        let cluster = self.producer.client().mock_cluster().expect("mock cluster");
        if up {
            cluster.broker_up(id)
        } else {
            cluster.broker_down(id)
        }
    }

    /// Starts recording the requests the cluster receives (see [`MockKafka::requests`]).
    pub fn track_requests(&self) {
        // SAFETY: the mock cluster belongs to the producer, alive as long as `self`.
        unsafe { rdkafka::bindings::rd_kafka_mock_start_request_tracking(self.raw_cluster()) }
    }

    /// How many `api` requests the cluster received since [`MockKafka::track_requests`] (tests: how many
    /// broker round trips a run made).
    pub fn requests(&self, api: rdkafka::types::RDKafkaApiKey) -> usize {
        let mut count = 0usize;
        // SAFETY: the array and its requests are the caller's to destroy, which happens before returning.
        unsafe {
            let requests = rdkafka::bindings::rd_kafka_mock_get_requests(self.raw_cluster(), &mut count);
            if requests.is_null() {
                return 0;
            }
            let matching = (0..count)
                .filter(|i| rdkafka::bindings::rd_kafka_mock_request_api_key(*requests.add(*i)) == api as i16)
                .count();
            rdkafka::bindings::rd_kafka_mock_request_destroy_array(requests, count);
            matching
        }
    }

    fn raw_cluster(&self) -> *mut rdkafka::bindings::rd_kafka_mock_cluster_t {
        // SAFETY: the handle is the producer's, alive as long as `self`.
        unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(self.producer.client().native_ptr()) }
    }

    /// Waits until everything produced is acknowledged.
    pub fn flush(&self) -> KafkaResult<()> {
        self.producer.flush(Timeout::After(Duration::from_secs(30)))
    }
}
