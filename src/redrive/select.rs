//! The pure decisions of a redrive: which records the filters select, which offsets of a range Kafka no
//! longer has, whether a source item may be removed, and how far the failure topic's group may commit.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::kafka::{PartitionKey, Record};

/// `--since`, `--until` (record timestamps, Unix ms, inclusive) and `--partition` (any of them; none = all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Records with an earlier timestamp are skipped.
    pub since_ms: Option<i64>,
    /// Records with a later timestamp are skipped.
    pub until_ms: Option<i64>,
    /// Only these partitions (of any topic); empty selects every partition.
    pub partitions: Vec<i32>,
}

impl Filters {
    /// Whether `record` is to be redriven.
    pub fn selects(&self, record: &Record) -> bool {
        self.since_ms.is_none_or(|since| record.timestamp_ms >= since)
            && self.until_ms.is_none_or(|until| record.timestamp_ms <= until)
            && (self.partitions.is_empty() || self.partitions.contains(&record.key_partition.partition))
    }
}

/// Why offsets a record names cannot be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MissingReason {
    /// Below the partition's log start offset: deleted by retention (or `DeleteRecords`).
    DeletedByRetention,
    /// At or past the partition's log end: the log was truncated or the topic recreated.
    BeyondLogEnd,
    /// Inside the log, yet no record came back at that offset (compaction, transaction markers).
    NotInLog,
}

/// Offsets of one partition a failed batch named that Kafka cannot give back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Missing {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First missing offset.
    pub first_offset: i64,
    /// Last missing offset (inclusive).
    pub last_offset: i64,
    /// Why.
    pub reason: MissingReason,
}

impl Missing {
    /// How many offsets.
    pub fn count(&self) -> usize {
        usize::try_from(self.last_offset - self.first_offset + 1).unwrap_or(0)
    }
}

/// For the offsets `first..=last` of `key` and the partition's watermarks (`low` = log start, `high` = log
/// end): what cannot be read (below `low`, at or past `high`), and the part that can, `from..=to`.
pub fn readable(key: &PartitionKey, first: i64, last: i64, low: i64, high: i64) -> (Vec<Missing>, Option<(i64, i64)>) {
    let missing = |first_offset, last_offset, reason| Missing {
        topic: key.topic.to_string(),
        partition: key.partition,
        first_offset,
        last_offset,
        reason,
    };
    let mut gone = Vec::new();
    if first < low {
        gone.push(missing(first, last.min(low - 1), MissingReason::DeletedByRetention));
    }
    if last >= high {
        gone.push(missing(first.max(high).max(low), last, MissingReason::BeyondLogEnd));
    }
    let (from, to) = (first.max(low), last.min(high - 1));
    (gone, (from <= to).then_some((from, to)))
}

/// The offsets of `from..=to` that no record read back carries (`read` sorted), as ranges.
pub fn gaps(key: &PartitionKey, from: i64, to: i64, read: &[i64]) -> Vec<Missing> {
    let mut out = Vec::new();
    let mut next = from;
    for &offset in read.iter().filter(|o| (from..=to).contains(*o)) {
        if offset > next {
            out.push((next, offset - 1));
        }
        next = next.max(offset + 1);
    }
    if next <= to {
        out.push((next, to));
    }
    out.into_iter()
        .map(|(first_offset, last_offset)| Missing {
            topic: key.topic.to_string(),
            partition: key.partition,
            first_offset,
            last_offset,
            reason: MissingReason::NotInLog,
        })
        .collect()
}

/// How the invocation of one failed batch's selected records went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target took every record (no function error, no `batchItemFailures`).
    Succeeded,
    /// Nothing was left to send (every record missing from Kafka): nothing failed either.
    NothingToSend,
    /// The target failed, was throttled or unreachable, or reported item failures.
    Failed(String),
    /// `--dry-run`: nothing was invoked.
    DryRun,
}

/// Whether a source item (SQS message, S3 object, failure-topic message) may leave its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Delete the message, write the S3 checkpoint, or let the failure topic's group commit past it.
    Remove,
    /// Leave it where it is, for this reason.
    Keep(&'static str),
}

/// **An item leaves its source only after every record it holds was redriven successfully.** A filter that
/// skipped some of its records, a record that names partitions it does not list (`recordsInfo` truncated),
/// a failed or throttled invocation and a dry run all keep it, so nothing is ever lost to a redrive; a later
/// redrive sends the kept item's records again (at least once). Offsets Kafka no longer has do not keep it:
/// they cannot come back, and the summary lists them.
pub fn removal(outcome: &Outcome, skipped_by_filter: usize, incomplete: bool) -> Removal {
    match outcome {
        Outcome::DryRun => Removal::Keep("dry run"),
        Outcome::Failed(_) => Removal::Keep("the invocation failed"),
        _ if skipped_by_filter > 0 => Removal::Keep("some of its records were skipped by a filter"),
        _ if incomplete => Removal::Keep("its recordsInfo was truncated: partitions it does not name are unknown"),
        Outcome::Succeeded | Outcome::NothingToSend => Removal::Remove,
    }
}

/// The offset the redrive group may commit on one failure-topic partition: past the longest run of removable
/// messages from the first one read, never past one that is kept (`done`: offset → removable, every message
/// read). `None` when the first message read is kept (nothing to commit).
pub fn commit_position(done: &BTreeMap<i64, bool>) -> Option<i64> {
    let mut position = None;
    for (&offset, &removable) in done {
        if !removable {
            break;
        }
        position = Some(offset + 1);
    }
    position
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::TimestampType;

    fn record(partition: i32, timestamp_ms: i64) -> Record {
        Record::new(PartitionKey::new("t", partition), 0, timestamp_ms, TimestampType::CreateTime, None, None, vec![])
    }

    #[test]
    fn filters_select_by_inclusive_time_range_and_partition() {
        let all = Filters::default();
        assert!(all.selects(&record(3, -1)));
        let window = Filters { since_ms: Some(100), until_ms: Some(200), partitions: vec![] };
        assert!(!window.selects(&record(0, 99)));
        assert!(window.selects(&record(0, 100)));
        assert!(window.selects(&record(0, 200)));
        assert!(!window.selects(&record(0, 201)));
        let partitions = Filters { partitions: vec![1, 3], ..Filters::default() };
        assert!(partitions.selects(&record(3, 0)));
        assert!(!partitions.selects(&record(2, 0)));
    }

    #[test]
    fn offsets_below_the_log_start_are_deleted_by_retention_and_past_the_end_beyond_it() {
        let key = PartitionKey::new("t", 2);
        // Whole range readable.
        assert_eq!(readable(&key, 5, 9, 0, 10), (vec![], Some((5, 9))));
        // Retention removed 5..=6.
        let (missing, rest) = readable(&key, 5, 9, 7, 10);
        assert_eq!(rest, Some((7, 9)));
        assert_eq!(missing.len(), 1);
        assert_eq!(
            (missing[0].first_offset, missing[0].last_offset, missing[0].reason),
            (5, 6, MissingReason::DeletedByRetention)
        );
        assert_eq!(missing[0].count(), 2);
        // Everything deleted.
        let (missing, rest) = readable(&key, 5, 9, 20, 30);
        assert_eq!(rest, None);
        assert_eq!((missing[0].first_offset, missing[0].last_offset), (5, 9));
        // Log ends at 8: 8..=9 beyond it.
        let (missing, rest) = readable(&key, 5, 9, 0, 8);
        assert_eq!(rest, Some((5, 7)));
        assert_eq!(
            (missing[0].first_offset, missing[0].last_offset, missing[0].reason),
            (8, 9, MissingReason::BeyondLogEnd)
        );
        // Empty log: nothing readable, nothing counted twice.
        let (missing, rest) = readable(&key, 5, 9, 12, 12);
        assert_eq!(rest, None);
        assert_eq!(missing.iter().map(Missing::count).sum::<usize>(), 5, "{missing:?}");
    }

    #[test]
    fn gaps_name_every_offset_without_a_record() {
        let key = PartitionKey::new("t", 0);
        assert_eq!(gaps(&key, 0, 4, &[0, 1, 2, 3, 4]), vec![]);
        let found: Vec<(i64, i64)> =
            gaps(&key, 0, 9, &[2, 3, 7]).iter().map(|m| (m.first_offset, m.last_offset)).collect();
        assert_eq!(found, vec![(0, 1), (4, 6), (8, 9)]);
        assert_eq!(gaps(&key, 3, 3, &[]).len(), 1);
    }

    #[test]
    fn an_item_is_removed_only_when_all_its_records_were_redriven() {
        assert_eq!(removal(&Outcome::Succeeded, 0, false), Removal::Remove);
        assert_eq!(removal(&Outcome::NothingToSend, 0, false), Removal::Remove);
        assert!(matches!(removal(&Outcome::Failed("boom".into()), 0, false), Removal::Keep(_)));
        assert!(matches!(removal(&Outcome::DryRun, 0, false), Removal::Keep(_)));
        assert!(matches!(removal(&Outcome::Succeeded, 1, false), Removal::Keep(_)), "partly filtered");
        assert!(matches!(removal(&Outcome::Succeeded, 0, true), Removal::Keep(_)), "truncated recordsInfo");
    }

    #[test]
    fn the_failure_topic_group_never_commits_past_a_kept_message() {
        let done = |items: &[(i64, bool)]| items.iter().copied().collect::<BTreeMap<i64, bool>>();
        assert_eq!(commit_position(&done(&[])), None);
        assert_eq!(commit_position(&done(&[(4, true), (5, true), (7, true)])), Some(8));
        assert_eq!(commit_position(&done(&[(4, true), (5, false), (6, true)])), Some(5));
        assert_eq!(commit_position(&done(&[(4, false), (5, true)])), None);
    }
}
