//! Whether a run has caught up, checked a slice of partitions at a time.
//!
//! Rule enforced in [`IdleCheck::step`]: **a run is caught up only when one whole pass over its assigned
//! partitions found every one at its log end, and no record was taken and no partition assigned or revoked
//! since the pass began.** A partition's position is librdkafka's (past control records) or, before anything
//! was fetched, the offset the relay would commit; its log end is the high watermark of the last fetch or of
//! the last chunked lookup; a partition with neither position nor log bounds is looked up once the pass is
//! over.
//!
//! Why slices: reading a partition's position and watermarks makes librdkafka find the topic by name in a
//! list, so one pass over 20,000 partitions of 5,000 topics took the loop seconds, and a run that checked for
//! idleness near its deadline ended seconds past it (issue 13). A step reads at most [`SLICE`] partitions at a
//! time and stops after its time budget; the loop serves everything else in between.

use std::time::{Duration, Instant};

use crate::kafka::PartitionKey;

/// Partitions read in one call (one librdkafka position lookup covers a slice).
pub(super) const SLICE: usize = 256;

/// What librdkafka (or the last log-bounds lookup) knows of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seen {
    /// librdkafka's position: the next offset it hands out.
    pub position: Option<i64>,
    /// The log start offset.
    pub low: Option<i64>,
    /// The log end offset (high watermark).
    pub high: Option<i64>,
}

/// What a pass must not see change: the records taken and the group's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Epoch {
    /// Records taken from the consumer so far.
    pub polled: u64,
    /// When the group last assigned or revoked partitions of this consumer.
    pub group_change: Instant,
}

/// What one step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// A partition has records left: not caught up (the next step starts a new pass).
    Behind,
    /// The pass goes on at the next step.
    Checking,
    /// The pass is over but these partitions' log bounds are unknown (with `true`: the log start is needed
    /// too, as nothing was fetched or committed): look them up, then pass again.
    LookUp(Vec<(PartitionKey, bool)>),
    /// Every partition at its log end, nothing taken and no assignment change during the pass.
    CaughtUp,
}

/// A pass over the assigned partitions, resumed step by step.
#[derive(Debug, Default)]
pub(super) struct IdleCheck {
    /// The last partition checked; the next step starts after it.
    after: Option<PartitionKey>,
    /// The epoch the pass began in.
    began: Option<Epoch>,
    /// Partitions of this pass with neither a position nor log bounds known.
    unknown: Vec<(PartitionKey, bool)>,
}

impl IdleCheck {
    /// Checks partitions for at most `budget`, starting after the last one checked. `partitions_after(key)`
    /// lists the assigned partitions after `key` (all of them for `None`) in order, each with the offset the
    /// relay would commit; `read` says what librdkafka knows of a slice of them, in the slice's order.
    pub fn step<'a, I>(
        &mut self,
        partitions_after: impl FnOnce(Option<PartitionKey>) -> I,
        epoch: Epoch,
        budget: Duration,
        mut read: impl FnMut(&[(&'a PartitionKey, Option<i64>)]) -> Vec<Seen>,
    ) -> Verdict
    where
        I: Iterator<Item = (&'a PartitionKey, Option<i64>)>,
    {
        if self.began != Some(epoch) {
            // A record taken or a partition assigned or revoked since the pass began: what it saw may be stale.
            *self = Self { began: Some(epoch), ..Self::default() };
        }
        let started = Instant::now();
        let mut partitions = partitions_after(self.after.take()).peekable();
        loop {
            let slice: Vec<(&PartitionKey, Option<i64>)> = partitions.by_ref().take(SLICE).collect();
            let Some((last, _)) = slice.last() else { break };
            let seen = read(&slice);
            for ((key, committable), seen) in slice.iter().zip(seen) {
                let at = seen.position.or(*committable);
                // A partition with nothing fetched and nothing committed is caught up only when it is empty.
                match (at, seen.low, seen.high) {
                    (Some(at), _, Some(high)) if at < high => return self.behind(),
                    (None, Some(low), Some(high)) if low < high => return self.behind(),
                    (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {}
                    _ => self.unknown.push(((*key).clone(), at.is_none())),
                }
            }
            self.after = Some((*last).clone());
            if partitions.peek().is_some() && started.elapsed() >= budget {
                return Verdict::Checking;
            }
        }
        let unknown = std::mem::take(&mut self.unknown);
        *self = Self::default();
        if unknown.is_empty() {
            Verdict::CaughtUp
        } else {
            Verdict::LookUp(unknown)
        }
    }

    /// Starts the next step on a new pass.
    pub fn restart(&mut self) {
        *self = Self::default();
    }

    fn behind(&mut self) -> Verdict {
        self.restart();
        Verdict::Behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Partitions `t-0` ... `t-(n-1)`, each committable at 10.
    fn partitions(n: i32) -> BTreeMap<PartitionKey, Option<i64>> {
        (0..n).map(|p| (PartitionKey::new("t", p), Some(10))).collect()
    }

    fn after<'a>(map: &'a BTreeMap<PartitionKey, Option<i64>>) -> impl FnOnce(Option<PartitionKey>) -> std::vec::IntoIter<(&'a PartitionKey, Option<i64>)> + 'a {
        move |key| {
            let from = match key {
                Some(key) => std::ops::Bound::Excluded(key),
                None => std::ops::Bound::Unbounded,
            };
            map.range((from, std::ops::Bound::Unbounded)).map(|(k, v)| (k, *v)).collect::<Vec<_>>().into_iter()
        }
    }

    fn epoch(polled: u64, at: Instant) -> Epoch {
        Epoch { polled, group_change: at }
    }

    const AT_END: Seen = Seen { position: Some(10), low: Some(0), high: Some(10) };

    fn at_end(slice: &[(&PartitionKey, Option<i64>)]) -> Vec<Seen> {
        vec![AT_END; slice.len()]
    }

    #[test]
    fn a_pass_over_partitions_all_at_their_log_end_is_caught_up() {
        let map = partitions(3);
        let mut check = IdleCheck::default();
        assert_eq!(check.step(after(&map), epoch(0, Instant::now()), Duration::from_secs(1), at_end), Verdict::CaughtUp);
    }

    #[test]
    fn one_partition_behind_is_not_caught_up_and_the_next_pass_starts_over() {
        let map = partitions(3);
        let mut check = IdleCheck::default();
        let behind = |slice: &[(&PartitionKey, Option<i64>)]| -> Vec<Seen> {
            slice.iter().map(|(k, _)| Seen { position: Some(10), low: Some(0), high: Some(if k.partition == 1 { 11 } else { 10 }) }).collect()
        };
        let now = Instant::now();
        assert_eq!(check.step(after(&map), epoch(0, now), Duration::from_secs(1), behind), Verdict::Behind);
        // Nothing fetched yet, but the committed offset at the log end counts too (position unknown).
        let committed_at_end = |slice: &[(&PartitionKey, Option<i64>)]| -> Vec<Seen> {
            slice.iter().map(|_| Seen { position: None, low: Some(0), high: Some(10) }).collect()
        };
        assert_eq!(check.step(after(&map), epoch(0, now), Duration::from_secs(1), committed_at_end), Verdict::CaughtUp);
    }

    #[test]
    fn a_pass_spans_steps_and_a_record_taken_meanwhile_starts_it_over() {
        let map = partitions(3 * SLICE as i32);
        let mut check = IdleCheck::default();
        let now = Instant::now();
        let reads = std::cell::Cell::new(0);
        let counting = |slice: &[(&PartitionKey, Option<i64>)]| {
            reads.set(reads.get() + slice.len());
            at_end(slice)
        };
        // A zero budget: one slice per step; the step that checks the last slice ends the pass.
        assert_eq!(check.step(after(&map), epoch(5, now), Duration::ZERO, &counting), Verdict::Checking);
        assert_eq!(check.step(after(&map), epoch(5, now), Duration::ZERO, &counting), Verdict::Checking);
        // A record arrived: the two slices seen no longer count.
        assert_eq!(check.step(after(&map), epoch(6, now), Duration::ZERO, &counting), Verdict::Checking);
        assert_eq!(check.step(after(&map), epoch(6, now), Duration::ZERO, &counting), Verdict::Checking);
        assert_eq!(check.step(after(&map), epoch(6, now), Duration::ZERO, &counting), Verdict::CaughtUp);
        assert_eq!(reads.get(), 5 * SLICE, "two slices, then a whole new pass of three");
        // An assignment change starts a pass over too.
        assert_eq!(check.step(after(&map), epoch(6, now), Duration::ZERO, &counting), Verdict::Checking);
        let later = now + Duration::from_millis(1);
        assert_eq!(check.step(after(&map), epoch(6, later), Duration::ZERO, &counting), Verdict::Checking);
        assert_eq!(check.step(after(&map), epoch(6, later), Duration::ZERO, &counting), Verdict::Checking);
        assert_eq!(check.step(after(&map), epoch(6, later), Duration::ZERO, &counting), Verdict::CaughtUp);
        assert_eq!(reads.get(), 9 * SLICE);
    }

    #[test]
    fn partitions_without_known_bounds_are_looked_up_at_the_end_of_the_pass() {
        let mut map = partitions(2);
        map.insert(PartitionKey::new("u", 0), None);
        let mut check = IdleCheck::default();
        let unknown_u = |slice: &[(&PartitionKey, Option<i64>)]| -> Vec<Seen> {
            slice
                .iter()
                .map(|(k, _)| if &*k.topic == "u" { Seen::default() } else { AT_END })
                .collect()
        };
        let verdict = check.step(after(&map), epoch(0, Instant::now()), Duration::from_secs(1), unknown_u);
        assert_eq!(verdict, Verdict::LookUp(vec![(PartitionKey::new("u", 0), true)]), "nothing committed: its log start is needed too");
        // Never fetched or committed but empty (log start = log end): caught up.
        let empty = |slice: &[(&PartitionKey, Option<i64>)]| -> Vec<Seen> {
            slice.iter().map(|(k, _)| if &*k.topic == "u" { Seen { position: None, low: Some(4), high: Some(4) } } else { AT_END }).collect()
        };
        assert_eq!(check.step(after(&map), epoch(0, Instant::now()), Duration::from_secs(1), empty), Verdict::CaughtUp);
    }
}
