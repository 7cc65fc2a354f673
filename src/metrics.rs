//! The run report and CloudWatch metrics (SPEC section 8).
//!
//! The report's field names are an interface users script against: keep them stable. Metrics are
//! CloudWatch Embedded Metric Format log lines, so they cost no API calls.

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

    /// CloudWatch Embedded Metric Format lines: one per mapping, one per partition (lag).
    pub fn emf_lines(&self, timestamp_ms: i64) -> Vec<String> {
        let mut lines = Vec::new();
        for m in &self.mappings {
            if m.state == "Disabled" {
                continue;
            }
            let names = [
                ("OffsetLag", m.offset_lag.sum),
                ("MaxOffsetLag", m.offset_lag.max),
                ("PolledEventCount", m.counts.polled as i64),
                ("FilteredOutEventCount", m.counts.filtered_out as i64),
                ("InvokedEventCount", m.counts.invocations as i64),
                ("FailedInvokeEventCount", m.counts.failed_invocations as i64),
                ("DeliveredEventCount", m.counts.delivered as i64),
                ("DroppedEventCount", m.counts.dropped as i64),
                ("OnFailureDestinationDeliveredEventCount", m.counts.sent_to_destination as i64),
                ("CommittedEventCount", m.counts.committed as i64),
            ];
            let mut line = serde_json::json!({
                "_aws": {
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": "KafkaLambdaRelay",
                        "Dimensions": [["MappingUUID"]],
                        "Metrics": names.iter().map(|(n, _)| serde_json::json!({"Name": n, "Unit": "Count"})).collect::<Vec<_>>(),
                    }]
                },
                "MappingUUID": m.uuid,
                "FunctionName": m.function_name,
            });
            for (name, value) in names {
                line[name] = value.into();
            }
            lines.push(line.to_string());
            for p in &m.partitions {
                let Some(lag) = p.lag else { continue };
                lines.push(
                    serde_json::json!({
                        "_aws": {
                            "Timestamp": timestamp_ms,
                            "CloudWatchMetrics": [{
                                "Namespace": "KafkaLambdaRelay",
                                "Dimensions": [["MappingUUID", "Partition"]],
                                "Metrics": [{"Name": "PartitionOffsetLag", "Unit": "Count"}],
                            }]
                        },
                        "MappingUUID": m.uuid,
                        "Partition": format!("{}-{}", p.topic, p.partition),
                        "PartitionOffsetLag": lag,
                    })
                    .to_string(),
                );
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
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
        let back: RunReport = serde_json::from_value(value).unwrap();
        assert_eq!(back, report);

        let lines = report.emf_lines(1000);
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["OffsetLag"], 2);
        assert_eq!(first["PolledEventCount"], 3);
        assert_eq!(first["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0], "MappingUUID");
        let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["Partition"], "t-0");
        assert_eq!(second["PartitionOffsetLag"], 2);
    }
}
