//! kafka-lambda-relay: what AWS Lambda's Kafka event source mapping does, in your own account, with retry
//! limits, partial batch responses, bisection and failure destinations for every mapping.
//!
//! # Layout
//!
//! Modules in the order a record flows through them:
//!
//! - [`config`]: the mappings (Lambda `CreateEventSourceMapping` field names), defaults, `validate()`.
//! - [`auth`]: `SourceAccessConfigurations` and Secrets Manager → librdkafka TLS/SASL settings.
//! - [`kafka`]: records, the consumer joining a mapping's group, starting positions, commits, lag.
//! - [`filter`]: `FilterCriteria` patterns; records matching none are skipped and committed.
//! - [`event`]: the exact event AWS sends, with exact size accounting for the 6 MB cap.
//! - [`invoke`]: the Lambda Invoke seam, its aws-sdk-lambda client and an in-process Invoke API server.
//! - [`destination`]: invocation records for given-up batches, written to SQS, SNS or S3.
pub mod auth;
pub mod config;
pub mod destination;
pub mod event;
pub mod filter;
pub mod invoke;
pub mod kafka;
pub mod batch;
pub mod commit;
pub mod outcome;
pub mod metrics;
pub mod relay;
