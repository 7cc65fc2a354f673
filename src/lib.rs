//! kafka-lambda-relay: what AWS Lambda's Kafka event source mapping does, in your own account, with retry
//! limits, partial batch responses, bisection and failure destinations for every mapping.
//!
//! # Layout
//!
//! Modules in the order a record flows through them:
//!
//! - [`error`]: the error codes a mapping's run reports (AWS's, and the relay's own in the same style).
//! - [`config`]: the mappings (Lambda `CreateEventSourceMapping` field names), defaults, `validate()`.
//! - [`auth`]: `SourceAccessConfigurations` and Secrets Manager → librdkafka TLS/SASL settings; Amazon MSK
//!   bootstrap brokers from the cluster ARN and IAM (OAUTHBEARER) tokens in [`auth::msk`].
//! - [`kafka`]: records, the consumer joining a mapping's group (starting positions, commits), and an
//!   in-process mock cluster.
//! - [`schema`]: `SchemaRegistryConfig`: Avro / Protobuf / JSON Schema records decoded through Glue or a
//!   Confluent-compatible registry, before filtering; undecodable records are given up uninvoked.
//! - [`filter`]: `FilterCriteria` patterns; records matching none are skipped and committed.
//! - [`batch`]: per-partition queues → batches (BatchSize, batching window, 6 MB cap).
//! - [`event`]: the exact event AWS sends, with exact size accounting for the 6 MB cap.
//! - [`invoke`]: the Lambda Invoke seam, its aws-sdk-lambda client and an in-process Invoke API server.
//! - [`outcome`]: the pure decision after an invocation: **where retries, bisection and give-ups are
//!   decided**.
//! - [`destination`]: invocation records for given-up batches, written to SQS, SNS or S3, or one message per
//!   record to a Kafka topic ([`destination::kafka`]); the opt-in large-record offload to S3
//!   ([`destination::offload`]).
//! - [`redrive`]: `kafka-lambda-relay redrive`: records an on-failure destination holds (SQS, SNS→SQS, S3, a
//!   Kafka failure topic) rebuilt into AWS's event and sent to a function again; removed only after success.
//! - [`commit`]: which offset may be committed per partition, and retry state kept in commit metadata.
//! - [`metrics`]: the run report and CloudWatch Embedded Metric Format lines (AWS's metric names, per
//!   minute, as deltas).
//! - [`relay`]: the engine that carries the decisions out: a thin driver per mapping, a per-partition
//!   ledger (what may be committed, what is paused), each batch's delivery as a pure state machine
//!   interpreted by an async job, and the caught-up check done a slice of partitions at a time.
//! - [`app`], [`handler`], [`demo`]: running all mappings, the Lambda entry point, the embedded demo.
//! - [`scale`]: how many workers (AWS's pollers) a mapping's run starts, from its lag and measured rate.
//! - [`logging`], [`status`]: log format, levels and the span per mapping; `status`, the groups' state read
//!   without consuming.
pub mod error;
pub mod config;
pub mod auth;
pub mod kafka;
pub mod schema;
pub mod filter;
pub mod batch;
pub mod event;
pub mod invoke;
pub mod outcome;
pub mod destination;
pub mod redrive;
pub mod commit;
pub mod metrics;
pub mod relay;
pub mod app;
pub mod scale;
pub mod handler;
pub mod demo;
pub mod logging;
pub mod status;
