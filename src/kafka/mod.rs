//! Kafka: records, the consumer that joins a mapping's group, and an in-process mock cluster.

mod record;

pub use record::{PartitionKey, Record, TimestampType};
