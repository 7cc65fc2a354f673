//! The run report and CloudWatch metrics (SPEC section 8).
//!
//! The report's field names are an interface users script against: keep them stable (new fields only).
//!
//! Metrics are CloudWatch Embedded Metric Format (EMF) log lines, so they cost no API calls. They carry
//! AWS's event source mapping metric names, in namespace [`NAMESPACE`], with the dimensions
//! `EventSourceMappingUUID` and `FunctionName`. As in AWS, a mapping's `MetricsConfig` selects groups:
//!
//! | group | metrics (unit) | when |
//! |---|---|---|
//! | always (AWS: without `MetricsConfig`) | `OffsetLag` (Count); the relay adds `TimeLag` (Seconds) | every interval |
//! | `EventCount` | `PolledEventCount`, `FilteredOutEventCount`, `InvokedEventCount`, `FailedInvokeEventCount`, `DroppedEventCount`, `OnFailureDestinationDeliveredEventCount`, `CommittedEventCount` (Count); the relay adds per invocation `InvocationDuration` (Milliseconds), `BatchRecordCount` (Count), `BatchSizeBytes` (Bytes) | every interval, 0 included |
//! | `ErrorCount` | `PollingErrorCount`, `InvokeErrorCount`, `OnFailureDestinationDeliveryErrorCount`, `SchemaRegistryErrorCount`, `CommitErrorCount` (Count) | only when not 0, as AWS |
//! | `KafkaMetrics` | `MaxOffsetLag`, `SumOffsetLag` (Count); the relay adds per partition `PartitionOffsetLag` (Count) and `PartitionTimeLag` (Seconds) with dimensions `Topic` and `Partition` | every interval |
//!
//! **Counts are deltas**: each interval's lines carry what happened since the previous lines of the same
//! run ([`MinuteMetrics`]), so CloudWatch's `Sum` is right across intervals, runs and concurrent workers.
//! Lags are gauges: the value at the end of the interval. A disabled mapping emits nothing, as in AWS.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything one run did, per mapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunReport {
    /// One entry per configured mapping, in configuration order.
    pub mappings: Vec<MappingReport>,
}

/// Event counts of one mapping in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Counts {
    /// Records read from Kafka.
    pub polled: u64,
    /// Records that matched no filter (not sent, committed).
    pub filtered_out: u64,
    /// Invocations of the target.
    pub invocations: u64,
    /// Invocations that failed (function error, timeout, invalid partial response) or were partial.
    pub failed_invocations: u64,
    /// Records the target processed.
    pub delivered: u64,
    /// Records given up with no destination to write them to.
    pub dropped: u64,
    /// Records written to the on-failure destination.
    pub sent_to_destination: u64,
    /// Records whose offsets were committed.
    pub committed: u64,
    /// Records sent in invocations that reached the target (retries count again): `InvokedEventCount`.
    #[serde(default)]
    pub invoked_events: u64,
    /// Records of invocations that failed or answered with `batchItemFailures`, and of invoke calls that
    /// failed: `FailedInvokeEventCount`.
    #[serde(default)]
    pub failed_invoke_events: u64,
    /// Polls and client errors while reading from the cluster: `PollingErrorCount`.
    #[serde(default)]
    pub polling_errors: u64,
    /// Invoke calls that failed before the function ran (throttles, network, 5xx), per batch:
    /// `InvokeErrorCount`.
    #[serde(default)]
    pub invoke_errors: u64,
    /// Failed writes to the on-failure destination: `OnFailureDestinationDeliveryErrorCount`.
    #[serde(default)]
    pub on_failure_destination_delivery_errors: u64,
    /// Schema lookups or decodings that failed: `SchemaRegistryErrorCount`.
    #[serde(default)]
    pub schema_registry_errors: u64,
    /// Failed commits: `CommitErrorCount`.
    #[serde(default)]
    pub commit_errors: u64,
}

/// Offset lag of a mapping: records between the committed offset and the log end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OffsetLag {
    /// Summed over partitions.
    pub sum: i64,
    /// The largest partition's.
    pub max: i64,
}

/// A partition that cannot move past a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Blocked {
    /// The record it is stuck on.
    pub offset: i64,
    /// Why.
    pub reason: String,
}

/// One partition in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PartitionReport {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records read.
    pub polled: u64,
    /// Records the target processed.
    pub delivered: u64,
    /// Records given up (to the destination or dropped).
    pub failed: u64,
    /// The group's committed offset at the end of the run.
    pub committed_offset: Option<i64>,
    /// High watermark minus the committed offset.
    pub lag: Option<i64>,
    /// Set when the partition is stuck on a record.
    pub blocked: Option<Blocked>,
}

/// One mapping in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MappingReport {
    /// The mapping's UUID.
    #[serde(rename = "UUID")]
    pub uuid: String,
    /// The target.
    pub function_name: String,
    /// The consumer group.
    pub consumer_group_id: String,
    /// `Enabled` (it ran), `Disabled` (skipped), `Failed` (could not run).
    pub state: String,
    /// `OK`, `No records processed`, or `PROBLEM: ...` (AWS's wording).
    pub last_processing_result: String,
    /// AWS's error code when the mapping could not run (e.g. `EVENT_SOURCE_AUTHN_ERROR`).
    pub error_code: Option<String>,
    /// Event counts.
    pub counts: Counts,
    /// Lag over all partitions.
    pub offset_lag: OffsetLag,
    /// Per partition, sorted by topic and partition.
    pub partitions: Vec<PartitionReport>,
}

impl MappingReport {
    /// A report for a mapping that did not run.
    pub fn not_run(mapping: &crate::config::Mapping, state: &str, error_code: Option<&str>, result: String) -> Self {
        Self {
            uuid: mapping.uuid(),
            function_name: mapping.function_name.clone(),
            consumer_group_id: mapping.consumer_group_id(),
            state: state.to_string(),
            last_processing_result: result,
            error_code: error_code.map(str::to_string),
            counts: Counts::default(),
            offset_lag: OffsetLag::default(),
            partitions: Vec::new(),
        }
    }
}

impl RunReport {
    /// Whether any mapping reported an error code.
    pub fn has_errors(&self) -> bool {
        self.mappings.iter().any(|m| m.error_code.is_some())
    }

    /// EMF lines for the whole run as one interval (every count is the run's total), with each mapping's
    /// `MetricsConfig` from `config`. For runs that did not emit while they ran.
    pub fn emf_lines(&self, config: &crate::config::RelayConfig, timestamp_ms: i64) -> Vec<String> {
        let mut lines = Vec::new();
        for report in &self.mappings {
            if report.state == "Disabled" {
                continue;
            }
            let groups = config
                .mappings
                .iter()
                .find(|m| m.uuid() == report.uuid)
                .map(MetricGroups::for_mapping)
                .unwrap_or_default();
            let mut metrics = MinuteMetrics::new(&report.uuid, &report.function_name, groups, timestamp_ms);
            let lags: Vec<PartitionLag> = report
                .partitions
                .iter()
                .filter_map(|p| {
                    p.lag.map(|lag| PartitionLag {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset_lag: lag,
                        // A caught-up partition has no waiting record; otherwise the report has no timestamp.
                        next_record_timestamp_ms: None,
                    })
                })
                .collect();
            lines.extend(metrics.flush(timestamp_ms, &report.counts, &lags));
        }
        lines
    }
}

/// The CloudWatch namespace of every metric the relay emits.
pub const NAMESPACE: &str = "KafkaLambdaRelay";

/// Every metric the relay emits, with its unit (the table in the module documentation).
pub const METRIC_UNITS: &[(&str, &str)] = &[
    ("OffsetLag", "Count"),
    ("TimeLag", "Seconds"),
    ("PolledEventCount", "Count"),
    ("FilteredOutEventCount", "Count"),
    ("InvokedEventCount", "Count"),
    ("FailedInvokeEventCount", "Count"),
    ("DroppedEventCount", "Count"),
    ("OnFailureDestinationDeliveredEventCount", "Count"),
    ("CommittedEventCount", "Count"),
    ("InvocationDuration", "Milliseconds"),
    ("BatchRecordCount", "Count"),
    ("BatchSizeBytes", "Bytes"),
    ("PollingErrorCount", "Count"),
    ("InvokeErrorCount", "Count"),
    ("OnFailureDestinationDeliveryErrorCount", "Count"),
    ("SchemaRegistryErrorCount", "Count"),
    ("CommitErrorCount", "Count"),
    ("MaxOffsetLag", "Count"),
    ("SumOffsetLag", "Count"),
    ("PartitionOffsetLag", "Count"),
    ("PartitionTimeLag", "Seconds"),
];

/// A run emits its metrics at least this often (AWS's event source mapping metrics are per minute).
pub const EMIT_INTERVAL: Duration = Duration::from_secs(60);

/// The emission interval: [`EMIT_INTERVAL`], or `RELAY_METRICS_INTERVAL_SECONDS` (for tests).
pub fn emit_interval() -> Duration {
    std::env::var("RELAY_METRICS_INTERVAL_SECONDS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(EMIT_INTERVAL)
}

/// Where a run writes its EMF lines.
#[derive(Debug, Clone, Default)]
pub enum EmfSink {
    /// Not written (the default: `run` without `--metrics`).
    #[default]
    Off,
    /// Standard output: Lambda's log, where CloudWatch extracts them.
    Stdout,
    /// Standard error (`run --metrics`: stdout carries the report).
    Stderr,
    /// Kept in memory (tests).
    Collect(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
}

impl EmfSink {
    /// Writes `lines`, one per line.
    pub fn write(&self, lines: &[String]) {
        use std::io::Write;
        match self {
            EmfSink::Off => {}
            EmfSink::Stdout => {
                let mut out = std::io::stdout().lock();
                for line in lines {
                    let _ = writeln!(out, "{line}");
                }
            }
            EmfSink::Stderr => {
                let mut out = std::io::stderr().lock();
                for line in lines {
                    let _ = writeln!(out, "{line}");
                }
            }
            EmfSink::Collect(kept) => kept.lock().expect("EMF lines lock").extend(lines.iter().cloned()),
        }
    }

    /// Whether lines are written at all.
    pub fn is_on(&self) -> bool {
        !matches!(self, EmfSink::Off)
    }
}

/// EMF allows at most 100 values per metric in one line.
const MAX_VALUES_PER_METRIC: usize = 100;

/// Which groups a mapping emits (`MetricsConfig.Metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricGroups {
    /// `EventCount`.
    pub event_count: bool,
    /// `ErrorCount`.
    pub error_count: bool,
    /// `KafkaMetrics`.
    pub kafka_metrics: bool,
}

impl MetricGroups {
    /// The groups a mapping's `MetricsConfig` selects; none without it.
    pub fn for_mapping(mapping: &crate::config::Mapping) -> Self {
        let groups = mapping.metric_groups();
        Self {
            event_count: groups.contains(&"EventCount"),
            error_count: groups.contains(&"ErrorCount"),
            kafka_metrics: groups.contains(&"KafkaMetrics"),
        }
    }

    /// Every group.
    pub fn all() -> Self {
        Self { event_count: true, error_count: true, kafka_metrics: true }
    }
}

/// One partition's lag at the end of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records between the group's committed offset and the log end.
    pub offset_lag: i64,
    /// Timestamp (Unix ms) of the first record not yet processed, when it has been read; the time lag is
    /// its age. Not needed when `offset_lag` is 0.
    pub next_record_timestamp_ms: Option<i64>,
}

impl PartitionLag {
    /// Seconds since the first unprocessed record was written: 0 when caught up, `None` when unknown.
    pub fn time_lag_seconds(&self, now_ms: i64) -> Option<f64> {
        if self.offset_lag <= 0 {
            return Some(0.0);
        }
        self.next_record_timestamp_ms.map(|ts| (now_ms - ts).max(0) as f64 / 1000.0)
    }
}

/// One invocation's duration and fill.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Invocation {
    duration_ms: f64,
    records: u64,
    bytes: u64,
}

/// A mapping's metrics between two emissions: the engine reports invocations as they end, asks
/// [`MinuteMetrics::due`] as it loops, and calls [`MinuteMetrics::flush`] with its running [`Counts`] and
/// current lags when due and once at the end of the run. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct MinuteMetrics {
    uuid: String,
    function_name: String,
    groups: MetricGroups,
    /// Totals already emitted: the next flush emits the difference.
    emitted: Counts,
    invocations: Vec<Invocation>,
    last_flush_ms: i64,
    interval_ms: i64,
}

impl MinuteMetrics {
    /// Metrics for `mapping`, its interval starting at `now_ms`.
    pub fn for_mapping(mapping: &crate::config::Mapping, now_ms: i64) -> Self {
        Self::new(&mapping.uuid(), &mapping.function_name, MetricGroups::for_mapping(mapping), now_ms)
    }

    /// Metrics for the mapping `uuid` targeting `function_name`.
    pub fn new(uuid: &str, function_name: &str, groups: MetricGroups, now_ms: i64) -> Self {
        Self {
            uuid: uuid.to_string(),
            function_name: function_name.to_string(),
            groups,
            emitted: Counts::default(),
            invocations: Vec::new(),
            last_flush_ms: now_ms,
            interval_ms: EMIT_INTERVAL.as_millis() as i64,
        }
    }

    /// The same, flushing every `interval` instead of [`EMIT_INTERVAL`] (tests: short runs, many intervals).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval_ms = (interval.as_millis() as i64).max(1);
        self
    }

    /// Records one invocation that reached the target: how long it took and how full its batch was.
    pub fn observe_invocation(&mut self, duration: Duration, records: usize, bytes: usize) {
        self.invocations.push(Invocation {
            duration_ms: (duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            records: records as u64,
            bytes: bytes as u64,
        });
    }

    /// Whether the interval ([`EMIT_INTERVAL`] unless set otherwise) has passed since the last flush.
    pub fn due(&self, now_ms: i64) -> bool {
        now_ms - self.last_flush_ms >= self.interval_ms
    }

    /// The EMF lines for the interval ending at `now_ms`, given the run's counts so far and the lags now;
    /// starts the next interval. Counts are emitted as the difference from the last flush.
    pub fn flush(&mut self, now_ms: i64, counts: &Counts, lags: &[PartitionLag]) -> Vec<String> {
        let delta = counts.since(&self.emitted);
        self.emitted = self.emitted.max_each(counts);
        self.last_flush_ms = now_ms;
        let invocations = std::mem::take(&mut self.invocations);

        let mut lines = Vec::new();
        let mut main = EmfLine::new(now_ms, &self.uuid, &self.function_name);
        let sum: i64 = lags.iter().map(|l| l.offset_lag.max(0)).sum();
        let max: i64 = lags.iter().map(|l| l.offset_lag.max(0)).max().unwrap_or(0);
        let time_lags: Vec<f64> = lags.iter().filter_map(|l| l.time_lag_seconds(now_ms)).collect();
        if !lags.is_empty() {
            main.put("OffsetLag", "Count", sum.into());
        }
        if !time_lags.is_empty() {
            main.put("TimeLag", "Seconds", time_lags.iter().copied().fold(0.0, f64::max).into());
        }
        if self.groups.event_count {
            for (name, value) in delta.event_counts() {
                main.put(name, "Count", value.into());
            }
        }
        if self.groups.error_count {
            for (name, value) in delta.error_counts() {
                // AWS emits error counts only when an error happened.
                if value > 0 {
                    main.put(name, "Count", value.into());
                }
            }
        }
        if self.groups.kafka_metrics && !lags.is_empty() {
            main.put("MaxOffsetLag", "Count", max.into());
            main.put("SumOffsetLag", "Count", sum.into());
        }
        let mut chunks = invocations.chunks(MAX_VALUES_PER_METRIC);
        if self.groups.event_count {
            if let Some(first) = chunks.next() {
                main.put_invocations(first);
            }
        }
        lines.extend(main.finish());
        if self.groups.event_count {
            for chunk in chunks {
                let mut line = EmfLine::new(now_ms, &self.uuid, &self.function_name);
                line.put_invocations(chunk);
                lines.extend(line.finish());
            }
        }
        if self.groups.kafka_metrics {
            for lag in lags {
                let mut line = EmfLine::new(now_ms, &self.uuid, &self.function_name);
                line.dimension("Topic", &lag.topic);
                line.dimension("Partition", &lag.partition.to_string());
                line.put("PartitionOffsetLag", "Count", lag.offset_lag.max(0).into());
                if let Some(seconds) = lag.time_lag_seconds(now_ms) {
                    line.put("PartitionTimeLag", "Seconds", seconds.into());
                }
                lines.extend(line.finish());
            }
        }
        lines
    }
}

impl Counts {
    /// `self - earlier`, field by field, never below 0.
    fn since(&self, earlier: &Counts) -> Counts {
        let mut out = Counts::default();
        for ((slot, now), before) in out.fields_mut().into_iter().zip(self.fields()).zip(earlier.fields()) {
            *slot = now.saturating_sub(before);
        }
        out
    }

    /// The larger of each field.
    fn max_each(&self, other: &Counts) -> Counts {
        let mut out = Counts::default();
        for ((slot, a), b) in out.fields_mut().into_iter().zip(self.fields()).zip(other.fields()) {
            *slot = a.max(b);
        }
        out
    }

    fn fields(&self) -> [u64; 15] {
        [
            self.polled,
            self.filtered_out,
            self.invocations,
            self.failed_invocations,
            self.delivered,
            self.dropped,
            self.sent_to_destination,
            self.committed,
            self.invoked_events,
            self.failed_invoke_events,
            self.polling_errors,
            self.invoke_errors,
            self.on_failure_destination_delivery_errors,
            self.schema_registry_errors,
            self.commit_errors,
        ]
    }

    fn fields_mut(&mut self) -> [&mut u64; 15] {
        [
            &mut self.polled,
            &mut self.filtered_out,
            &mut self.invocations,
            &mut self.failed_invocations,
            &mut self.delivered,
            &mut self.dropped,
            &mut self.sent_to_destination,
            &mut self.committed,
            &mut self.invoked_events,
            &mut self.failed_invoke_events,
            &mut self.polling_errors,
            &mut self.invoke_errors,
            &mut self.on_failure_destination_delivery_errors,
            &mut self.schema_registry_errors,
            &mut self.commit_errors,
        ]
    }

    /// AWS's `EventCount` group, by metric name.
    pub fn event_counts(&self) -> [(&'static str, u64); 7] {
        [
            ("PolledEventCount", self.polled),
            ("FilteredOutEventCount", self.filtered_out),
            ("InvokedEventCount", self.invoked_events),
            ("FailedInvokeEventCount", self.failed_invoke_events),
            ("DroppedEventCount", self.dropped),
            ("OnFailureDestinationDeliveredEventCount", self.sent_to_destination),
            ("CommittedEventCount", self.committed),
        ]
    }

    /// AWS's `ErrorCount` group, by metric name.
    pub fn error_counts(&self) -> [(&'static str, u64); 5] {
        [
            ("PollingErrorCount", self.polling_errors),
            ("InvokeErrorCount", self.invoke_errors),
            ("OnFailureDestinationDeliveryErrorCount", self.on_failure_destination_delivery_errors),
            ("SchemaRegistryErrorCount", self.schema_registry_errors),
            ("CommitErrorCount", self.commit_errors),
        ]
    }
}

/// One EMF document: dimensions, then metrics with their units and values.
struct EmfLine {
    root: serde_json::Map<String, serde_json::Value>,
    dimensions: Vec<String>,
    metrics: Vec<serde_json::Value>,
    timestamp_ms: i64,
}

impl EmfLine {
    fn new(timestamp_ms: i64, uuid: &str, function_name: &str) -> Self {
        let mut line = Self { root: serde_json::Map::new(), dimensions: Vec::new(), metrics: Vec::new(), timestamp_ms };
        line.dimension("EventSourceMappingUUID", uuid);
        line.dimension("FunctionName", function_name);
        line
    }

    fn dimension(&mut self, name: &str, value: &str) {
        self.dimensions.push(name.to_string());
        self.root.insert(name.to_string(), value.into());
    }

    fn put(&mut self, name: &str, unit: &str, value: serde_json::Value) {
        debug_assert!(METRIC_UNITS.contains(&(name, unit)), "{name} ({unit}) is not in METRIC_UNITS");
        self.metrics.push(serde_json::json!({"Name": name, "Unit": unit}));
        self.root.insert(name.to_string(), value);
    }

    /// Per-invocation values as EMF arrays (CloudWatch keeps each value for percentiles).
    fn put_invocations(&mut self, invocations: &[Invocation]) {
        if invocations.is_empty() {
            return;
        }
        self.put("InvocationDuration", "Milliseconds", invocations.iter().map(|i| i.duration_ms).collect());
        self.put("BatchRecordCount", "Count", invocations.iter().map(|i| i.records).collect());
        self.put("BatchSizeBytes", "Bytes", invocations.iter().map(|i| i.bytes).collect());
    }

    /// The JSON line, or nothing when no metric was put.
    fn finish(mut self) -> Option<String> {
        if self.metrics.is_empty() {
            return None;
        }
        self.root.insert(
            "_aws".to_string(),
            serde_json::json!({
                "Timestamp": self.timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [self.dimensions],
                    "Metrics": self.metrics,
                }]
            }),
        );
        Some(serde_json::Value::Object(self.root).to_string())
    }
}

/// Where each partition's records were written in time, sampled, so the age of the first unprocessed
/// record (the time lag) is known without keeping every record's timestamp.
///
/// The engine calls [`TimeLagTracker::fetched`] for each polled record; it keeps one (offset, timestamp)
/// sample per [`TimeLagTracker::GAP_MS`] of record time per partition, and forgets samples below the
/// committed offset. The time lag of a partition whose next unprocessed record is at offset `c` is taken
/// from the last sample at or before `c`: never younger than the truth, at most `GAP_MS` older.
#[derive(Debug, Clone, Default)]
pub struct TimeLagTracker {
    samples: std::collections::BTreeMap<crate::kafka::PartitionKey, std::collections::VecDeque<(i64, i64)>>,
}

impl TimeLagTracker {
    /// Record time between two samples of a partition.
    pub const GAP_MS: i64 = 1_000;
    /// Samples kept per partition (about an hour of records at one sample a second).
    pub const MAX_SAMPLES: usize = 4_096;

    /// Notes a polled record.
    pub fn fetched(&mut self, key: &crate::kafka::PartitionKey, offset: i64, timestamp_ms: i64) {
        let samples = match self.samples.get_mut(key) {
            Some(samples) => samples,
            None => self.samples.entry(key.clone()).or_default(),
        };
        match samples.back() {
            Some(&(last_offset, last_ts)) if offset <= last_offset || timestamp_ms - last_ts < Self::GAP_MS => {}
            _ => {
                if samples.len() == Self::MAX_SAMPLES {
                    samples.pop_front();
                }
                samples.push_back((offset, timestamp_ms));
            }
        }
    }

    /// The timestamp to measure the time lag from, for a partition whose first unprocessed record is at
    /// `next_offset`; forgets older samples. `None` when no sample is at or before it.
    pub fn next_record_timestamp(&mut self, key: &crate::kafka::PartitionKey, next_offset: i64) -> Option<i64> {
        let samples = self.samples.get_mut(key)?;
        while samples.len() > 1 && samples[1].0 <= next_offset {
            samples.pop_front();
        }
        samples.front().filter(|(offset, _)| *offset <= next_offset).map(|(_, ts)| *ts)
    }

    /// Forgets a partition (revoked).
    pub fn forget(&mut self, key: &crate::kafka::PartitionKey) {
        self.samples.remove(key);
    }
}

/// Lag remaining for a progress line: the sum over partitions of (high watermark − position), each at least
/// 0, from `(position, high watermark)` pairs; `None` when no partition has both (nothing known yet). A
/// partition without a position (nothing fetched, no committed offset) counts from 0, as its lag in the report.
pub fn lag_remaining(partitions: impl IntoIterator<Item = (Option<i64>, Option<i64>)>) -> Option<i64> {
    partitions.into_iter().fold(None, |sum, (position, high)| match high {
        Some(high) => Some(sum.unwrap_or(0) + (high - position.unwrap_or(0)).max(0)),
        None => sum,
    })
}

/// A progress line for a terminal: records per second since the last line, and what is left.
#[derive(Debug, Clone, Default)]
pub struct ProgressMeter {
    last: Option<(i64, u64)>,
}

impl ProgressMeter {
    /// The line for `counts` at `now_ms`, with the lag left when known.
    pub fn line(&mut self, uuid: &str, now_ms: i64, counts: &Counts, lag: Option<i64>) -> String {
        let done = counts.delivered + counts.filtered_out + counts.dropped + counts.sent_to_destination;
        let rate = match self.last {
            Some((at, before)) if now_ms > at => (done.saturating_sub(before)) as f64 * 1000.0 / (now_ms - at) as f64,
            _ => 0.0,
        };
        self.last = Some((now_ms, done));
        let lag = lag.map(|l| format!(", lag remaining {l} records")).unwrap_or_default();
        format!(
            "[{uuid}] {done} records done ({:.0}/s), {} polled, {} invocations ({} failed){lag}",
            rate, counts.polled, counts.invocations, counts.failed_invocations
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn report_uses_stable_field_names() {
        let report = RunReport {
            mappings: vec![MappingReport {
                uuid: "u".into(),
                function_name: "f".into(),
                consumer_group_id: "g".into(),
                state: "Enabled".into(),
                last_processing_result: "OK".into(),
                error_code: None,
                counts: Counts { polled: 3, delivered: 3, committed: 3, invocations: 1, ..Counts::default() },
                offset_lag: OffsetLag { sum: 2, max: 2 },
                partitions: vec![PartitionReport {
                    topic: "t".into(),
                    partition: 0,
                    polled: 3,
                    delivered: 3,
                    failed: 0,
                    committed_offset: Some(3),
                    lag: Some(2),
                    blocked: None,
                }],
            }],
        };
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["Mappings"][0]["UUID"], "u");
        assert_eq!(value["Mappings"][0]["Counts"]["Polled"], 3);
        assert_eq!(value["Mappings"][0]["OffsetLag"]["Max"], 2);
        assert_eq!(value["Mappings"][0]["Partitions"][0]["CommittedOffset"], 3);
        assert_eq!(value["Mappings"][0]["LastProcessingResult"], "OK");
        let back: RunReport = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, report);

        assert_eq!(value["Mappings"][0]["Counts"]["CommitErrors"], 0, "new counts are additive");
        let old: Counts = serde_json::from_value(serde_json::json!({
            "Polled": 1, "FilteredOut": 0, "Invocations": 1, "FailedInvocations": 0, "Delivered": 1,
            "Dropped": 0, "SentToDestination": 0, "Committed": 1
        }))
        .unwrap();
        assert_eq!(old.polled, 1, "a report written before the error counts still reads");

        let config = crate::config::RelayConfig::from_json(
            r#"{"Mappings": [{"UUID": "u", "FunctionName": "f", "Topics": ["t"], "StartingPosition": "LATEST",
                "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["h:9092"]}},
                "MetricsConfig": {"Metrics": ["EventCount", "KafkaMetrics"]}}]}"#,
        )
        .unwrap();
        let lines: Vec<serde_json::Value> =
            report.emf_lines(&config, 1000).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["OffsetLag"], 2);
        assert_eq!(lines[0]["PolledEventCount"], 3);
        assert_eq!(lines[0]["CommittedEventCount"], 3);
        assert_eq!(lines[0]["EventSourceMappingUUID"], "u");
        assert_eq!(lines[1]["Partition"], "0");
        assert_eq!(lines[1]["PartitionOffsetLag"], 2);
    }

    fn metric_names(line: &serde_json::Value) -> Vec<(String, String)> {
        line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["Name"].as_str().unwrap().to_string(), m["Unit"].as_str().unwrap().to_string()))
            .collect()
    }

    fn parse(lines: Vec<String>) -> Vec<serde_json::Value> {
        lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn lag(partition: i32, offset_lag: i64, next_record_timestamp_ms: Option<i64>) -> PartitionLag {
        PartitionLag { topic: "orders".into(), partition, offset_lag, next_record_timestamp_ms }
    }

    #[test]
    fn without_metrics_config_only_offset_lag_and_time_lag_are_emitted() {
        let mut metrics = MinuteMetrics::new("u", "f", MetricGroups::default(), 0);
        let counts = Counts { polled: 5, invoked_events: 5, commit_errors: 1, ..Counts::default() };
        metrics.observe_invocation(Duration::from_millis(20), 5, 500);
        let lines = parse(metrics.flush(60_000, &counts, &[lag(0, 3, Some(50_000)), lag(1, 0, None)]));
        assert_eq!(lines.len(), 1);
        assert_eq!(metric_names(&lines[0]), vec![("OffsetLag".into(), "Count".into()), ("TimeLag".into(), "Seconds".into())]);
        assert_eq!(lines[0]["OffsetLag"], 3);
        assert_eq!(lines[0]["TimeLag"], 10.0, "the oldest unprocessed record was written 10 s before the flush");
        assert_eq!(
            lines[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["EventSourceMappingUUID", "FunctionName"]])
        );
        assert_eq!(lines[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"], "KafkaLambdaRelay");
        assert_eq!(lines[0]["_aws"]["Timestamp"], 60_000);
        assert_eq!(lines[0]["FunctionName"], "f");
    }

    #[test]
    fn each_group_adds_aws_names_with_units() {
        let mut metrics = MinuteMetrics::new("u", "f", MetricGroups::all(), 0);
        let counts = Counts {
            polled: 10,
            filtered_out: 1,
            invoked_events: 12,
            failed_invoke_events: 3,
            dropped: 2,
            sent_to_destination: 1,
            committed: 9,
            invoke_errors: 1,
            commit_errors: 2,
            ..Counts::default()
        };
        metrics.observe_invocation(Duration::from_micros(12_500), 9, 900);
        metrics.observe_invocation(Duration::from_millis(30), 3, 300);
        let lines = parse(metrics.flush(1_000, &counts, &[lag(0, 4, Some(-1_000)), lag(1, 2, None)]));
        let names: Vec<String> = metric_names(&lines[0]).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![
                "OffsetLag",
                "TimeLag",
                "PolledEventCount",
                "FilteredOutEventCount",
                "InvokedEventCount",
                "FailedInvokeEventCount",
                "DroppedEventCount",
                "OnFailureDestinationDeliveredEventCount",
                "CommittedEventCount",
                "InvokeErrorCount",
                "CommitErrorCount",
                "MaxOffsetLag",
                "SumOffsetLag",
                "InvocationDuration",
                "BatchRecordCount",
                "BatchSizeBytes",
            ],
            "error counts that are 0 are left out, as AWS does"
        );
        let units: BTreeMap<String, String> = metric_names(&lines[0]).into_iter().collect();
        assert_eq!(units["InvocationDuration"], "Milliseconds");
        assert_eq!(units["BatchSizeBytes"], "Bytes");
        assert_eq!(units["PolledEventCount"], "Count");
        assert_eq!(lines[0]["InvocationDuration"], serde_json::json!([12.5, 30.0]));
        assert_eq!(lines[0]["BatchRecordCount"], serde_json::json!([9, 3]));
        assert_eq!(lines[0]["InvokedEventCount"], 12);
        assert_eq!(lines[0]["MaxOffsetLag"], 4);
        assert_eq!(lines[0]["SumOffsetLag"], 6);
        assert_eq!(lines[0]["TimeLag"], 2.0);

        assert_eq!(lines.len(), 3, "one line per partition");
        assert_eq!(
            lines[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["EventSourceMappingUUID", "FunctionName", "Topic", "Partition"]])
        );
        assert_eq!((lines[1]["Topic"].as_str(), lines[1]["Partition"].as_str()), (Some("orders"), Some("0")));
        assert_eq!(lines[1]["PartitionOffsetLag"], 4);
        assert_eq!(lines[1]["PartitionTimeLag"], 2.0);
        assert_eq!(lines[2]["PartitionOffsetLag"], 2);
        assert!(lines[2].get("PartitionTimeLag").is_none(), "unknown time lag is left out, not reported as 0");
    }

    #[test]
    fn counts_are_emitted_as_deltas_that_add_up_to_the_totals() {
        let groups = MetricGroups { event_count: true, error_count: true, kafka_metrics: false };
        let mut metrics = MinuteMetrics::new("u", "f", groups, 0);
        let mut counts = Counts::default();
        assert!(!metrics.due(59_999));
        assert!(metrics.due(60_000));
        assert!(MinuteMetrics::new("u", "f", groups, 0).with_interval(Duration::from_secs(1)).due(1_000));
        let mut polled = Vec::new();
        let mut polling_errors = Vec::new();
        for (minute, (new_records, errors)) in [(100u64, 0u64), (0, 2), (40, 1)].into_iter().enumerate() {
            counts.polled += new_records;
            counts.committed += new_records;
            counts.polling_errors += errors;
            let now = (minute as i64 + 1) * 60_000;
            let lines = parse(metrics.flush(now, &counts, &[]));
            assert!(!metrics.due(now + 59_999));
            polled.push(lines[0]["PolledEventCount"].as_u64().unwrap());
            polling_errors.push(lines[0].get("PollingErrorCount").and_then(|v| v.as_u64()));
        }
        assert_eq!(polled, vec![100, 0, 40], "each minute carries only its own records; 0 when nothing was polled");
        assert_eq!(polling_errors, vec![None, Some(2), Some(1)]);
        assert_eq!(polled.iter().sum::<u64>(), counts.polled);
    }

    #[test]
    fn more_than_100_invocations_spill_into_extra_lines() {
        let groups = MetricGroups { event_count: true, ..MetricGroups::default() };
        let mut metrics = MinuteMetrics::new("u", "f", groups, 0);
        for i in 0..250 {
            metrics.observe_invocation(Duration::from_millis(i), 1, 10);
        }
        let lines = parse(metrics.flush(60_000, &Counts::default(), &[]));
        let sizes: Vec<usize> = lines.iter().map(|l| l["BatchRecordCount"].as_array().unwrap().len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        assert!(lines[1].get("PolledEventCount").is_none(), "counts appear once per interval");
        assert!(parse(metrics.flush(120_000, &Counts::default(), &[]))[0].get("BatchRecordCount").is_none());
    }

    #[test]
    fn time_lag_is_measured_from_the_last_sample_at_or_before_the_next_unprocessed_record() {
        let mut tracker = TimeLagTracker::default();
        let (p0, p1) = (crate::kafka::PartitionKey::new("t", 0), crate::kafka::PartitionKey::new("t", 1));
        // Records 0..100 written 100 ms apart: samples at offsets 0, 10, 20, ... (one per second).
        for offset in 0..100 {
            tracker.fetched(&p0, offset, 1_000_000 + offset * 100);
        }
        assert_eq!(tracker.next_record_timestamp(&p0, 0), Some(1_000_000));
        assert_eq!(tracker.next_record_timestamp(&p0, 35), Some(1_003_000), "sample at 30: at most 1 s older than record 35");
        assert_eq!(tracker.next_record_timestamp(&p0, 0), None, "samples before the committed offset are forgotten");
        assert_eq!(tracker.next_record_timestamp(&p0, 99), Some(1_009_000));
        assert_eq!(tracker.next_record_timestamp(&p1, 5), None, "a partition never polled has no time lag");
        tracker.forget(&p0);
        assert_eq!(tracker.next_record_timestamp(&p0, 99), None);
        let lag = PartitionLag { topic: "t".into(), partition: 0, offset_lag: 3, next_record_timestamp_ms: Some(1_003_000) };
        assert_eq!(lag.time_lag_seconds(1_010_500), Some(7.5));
    }

    #[test]
    fn lag_remaining_sums_watermark_minus_position_over_known_partitions() {
        assert_eq!(lag_remaining([]), None, "no partition: nothing to show");
        assert_eq!(lag_remaining([(Some(5), None)]), None, "no watermark fetched yet");
        assert_eq!(lag_remaining([(Some(40), Some(100)), (Some(7), Some(10)), (Some(3), None)]), Some(63));
        assert_eq!(lag_remaining([(None, Some(12))]), Some(12), "no position yet: the whole partition is left");
        let stale = [(Some(12), Some(10)), (Some(0), Some(4))];
        assert_eq!(lag_remaining(stale), Some(4), "a position past a stale watermark counts 0");
    }

    #[test]
    fn progress_shows_rate_and_records_left() {
        let mut meter = ProgressMeter::default();
        let first = meter.line("u", 0, &Counts { delivered: 100, polled: 100, ..Counts::default() }, Some(900));
        assert_eq!(first, "[u] 100 records done (0/s), 100 polled, 0 invocations (0 failed), lag remaining 900 records");
        let second = meter.line("u", 2_000, &Counts { delivered: 300, polled: 400, invocations: 3, ..Counts::default() }, None);
        assert_eq!(second, "[u] 300 records done (100/s), 400 polled, 3 invocations (0 failed)");
    }
}
