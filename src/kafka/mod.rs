//! Kafka: records, the consumer that joins a mapping's group, and an in-process mock cluster.

pub mod consumer;
pub mod mock;
mod record;

pub use record::{PartitionKey, Record, SchemaMetadata, TimestampType};
