//! Which offset may be committed, per partition, and the retry state kept with it.
//!
//! The rule, enforced here and nowhere else: **an offset is committed only after every earlier record of
//! its partition was delivered, filtered out, or handed to the failure destination.** The tracker keeps the
//! fetched records of a partition in fetch order (Kafka offsets can have gaps: compaction, transaction
//! markers) and only ever offers "first record not yet done", or "last record + 1" when all are done.
//!
//! Retry state survives scheduled runs in the committed offset's metadata (no extra database): when a run
//! ends while a record is being retried, the commit at that record's offset carries
//! `{"relay":1,"offset":N,"attempts":K}`, and the next run that is assigned the partition continues from K.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Acknowledgement state of one partition's fetched records.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Fetched, not yet committable records: (offset, done), in fetch order.
    pending: VecDeque<(i64, bool)>,
    /// The offset a commit would write now: the first record not done, or the last done + 1.
    committable: Option<i64>,
}

impl OffsetTracker {
    /// A tracker for a partition whose group position is `committed` (if known).
    pub fn new(committed: Option<i64>) -> Self {
        Self { pending: VecDeque::new(), committable: committed }
    }

    /// Registers a fetched record. Records must be registered in fetch order.
    pub fn fetched(&mut self, offset: i64) {
        if let Some(&(last, _)) = self.pending.back() {
            debug_assert!(offset > last, "records are registered in offset order");
        }
        if self.pending.is_empty() {
            self.committable = Some(offset);
        }
        self.pending.push_back((offset, false));
    }

    /// Marks `offset` done (delivered, filtered out, or durably handed to the destination).
    pub fn done(&mut self, offset: i64) {
        if let Ok(index) = self.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            self.pending[index].1 = true;
        }
        while let Some(&(offset, true)) = self.pending.front() {
            self.pending.pop_front();
            self.committable = Some(offset + 1);
        }
        if let Some(&(first, false)) = self.pending.front() {
            self.committable = Some(first);
        }
    }

    /// The offset to commit: every record before it is done.
    pub fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// Records done but not committable yet (an earlier record is outstanding).
    pub fn done_pending(&self) -> usize {
        self.pending.iter().filter(|(_, done)| *done).count()
    }

    /// Records fetched and not yet done.
    pub fn outstanding(&self) -> usize {
        self.pending.iter().filter(|(_, done)| !done).count()
    }
}

/// Retry state stored in the committed offset's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryState {
    /// Marks metadata written by the relay (other tools may write their own).
    pub relay: u32,
    /// The record the attempts belong to (the committed offset when written).
    pub offset: i64,
    /// Failed attempts of the batch that starts at `offset`.
    pub attempts: u32,
    /// The last invocation's response, for the failure record's `responseContext` when a later run gives
    /// the batch up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<crate::destination::ResponseContext>,
}

impl RetryState {
    /// State for `attempts` failed attempts of the record at `offset`.
    pub fn new(offset: i64, attempts: u32) -> Self {
        Self { relay: 1, offset, attempts, response: None }
    }

    /// The same state, remembering the last invocation's response.
    pub fn with_response(self, response: Option<crate::destination::ResponseContext>) -> Self {
        Self { response, ..self }
    }

    /// The metadata string to commit.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("retry state serializes")
    }

    /// Reads metadata written by [`RetryState::encode`]; anything else is ignored.
    pub fn decode(metadata: &str) -> Option<Self> {
        serde_json::from_str::<Self>(metadata).ok().filter(|s| s.relay == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut t = OffsetTracker::new(Some(10));
        assert_eq!(t.committable(), Some(10));
        for o in [10, 11, 12, 15, 16] {
            t.fetched(o);
        }
        assert_eq!(t.committable(), Some(10));
        t.done(11);
        assert_eq!(t.committable(), Some(10), "record 10 is not done");
        t.done(10);
        assert_eq!(t.committable(), Some(12));
        t.done(15);
        t.done(16);
        assert_eq!(t.committable(), Some(12), "12 is still outstanding");
        assert_eq!(t.outstanding(), 1);
        t.done(12);
        // The gap 13-14 (compaction) does not block: 16 + 1.
        assert_eq!(t.committable(), Some(17));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn nothing_fetched_keeps_the_group_position() {
        let t = OffsetTracker::new(None);
        assert_eq!(t.committable(), None);
        let mut t = OffsetTracker::new(Some(4));
        t.done(99);
        assert_eq!(t.committable(), Some(4));
    }

    #[test]
    fn retry_state_round_trips_and_ignores_foreign_metadata() {
        let state = RetryState::new(42, 3);
        assert_eq!(RetryState::decode(&state.encode()), Some(state.clone()));
        let with_response = state.with_response(Some(crate::destination::ResponseContext {
            status_code: 200,
            executed_version: "$LATEST".into(),
            function_error: Some("Unhandled".into()),
        }));
        assert_eq!(RetryState::decode(&with_response.encode()), Some(with_response));
        assert_eq!(RetryState::decode(""), None);
        assert_eq!(RetryState::decode("some other tool"), None);
        assert_eq!(RetryState::decode(r#"{"relay":2,"offset":1,"attempts":1}"#), None);
    }
}
