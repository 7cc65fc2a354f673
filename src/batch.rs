//! Forming batches from the records buffered per partition (SPEC section 3).
//!
//! A batch closes when it has `BatchSize` records, when the batching window has elapsed since its first
//! record arrived, or when the next record would push the serialized event over 6 MB. A batch takes records
//! only from partitions that are not already in flight, and always a prefix of each partition's queue, so
//! records of one partition are delivered in order and never in two concurrent invocations.
//!
//! Time is a parameter (`now`), so the rules are tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::MAX_PAYLOAD_BYTES;
use crate::event::EventSource;
use crate::kafka::{PartitionKey, Record};

/// Records of one partition waiting to be batched.
#[derive(Debug, Default)]
pub struct PartitionQueue {
    records: VecDeque<(Instant, Record)>,
    /// Encoded bytes buffered (what the records add to an event).
    bytes: usize,
    /// A batch with records of this partition is in flight.
    pub busy: bool,
}

impl PartitionQueue {
    /// Adds a record that arrived at `at`.
    pub fn push(&mut self, at: Instant, record: Record) {
        self.bytes += record.encoded_len();
        self.records.push_back((at, record));
    }

    /// Buffered records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No records buffered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encoded bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops everything buffered (the partition was revoked).
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    fn first_arrival(&self) -> Option<Instant> {
        self.records.front().map(|(at, _)| *at)
    }

    fn first_key(&self) -> Option<&PartitionKey> {
        self.records.front().map(|(_, r)| &r.key_partition)
    }

    fn pop(&mut self) -> Option<Record> {
        let (_, record) = self.records.pop_front()?;
        self.bytes -= record.encoded_len();
        Some(record)
    }
}

/// What [`Batcher::next`] produced.
#[derive(Debug)]
pub enum Formed {
    /// Records to invoke with, grouped by partition, in offset order within each.
    Batch(Vec<Record>),
    /// A single record whose event alone exceeds 6 MB: it cannot be sent (MaximumPayloadSizeExceeded).
    Oversized(Record),
    /// A single record the schema registry could not decode: given up uninvoked with
    /// [`Record::undecodable`]'s condition.
    Undecodable(Record),
}

impl Formed {
    /// The records formed.
    pub fn records(&self) -> &[Record] {
        match self {
            Formed::Batch(records) => records,
            Formed::Oversized(record) | Formed::Undecodable(record) => std::slice::from_ref(record),
        }
    }
}

/// Batching rules of one mapping.
#[derive(Debug, Clone)]
pub struct Batcher {
    /// `BatchSize`.
    pub batch_size: usize,
    /// The batching window.
    pub window: Duration,
    /// Events' shared header, for exact size accounting.
    pub source: EventSource,
    /// The payload cap (6 MB in AWS; smaller in tests).
    pub max_payload: usize,
}

impl Batcher {
    /// The batcher for a mapping.
    pub fn for_mapping(mapping: &crate::config::Mapping) -> Self {
        Self {
            batch_size: mapping.batch_size.clamp(1, 10_000) as usize,
            window: mapping.batching_window(),
            source: EventSource::for_mapping(mapping),
            max_payload: MAX_PAYLOAD_BYTES,
        }
    }

    /// When the oldest buffered record of an idle partition reaches its window, if any is waiting.
    pub fn next_deadline<'q>(&self, queues: impl IntoIterator<Item = &'q PartitionQueue>) -> Option<Instant> {
        queues.into_iter().filter(|q| !q.busy).filter_map(PartitionQueue::first_arrival).min().map(|first| first + self.window)
    }

    /// Takes the next batch if one is due at `now` (or `flush` asks for whatever is buffered).
    pub fn next<'q>(&self, queues: impl IntoIterator<Item = &'q mut PartitionQueue>, now: Instant, flush: bool) -> Option<Formed> {
        let mut ready: Vec<&mut PartitionQueue> = queues.into_iter().filter(|q| !q.busy && !q.is_empty()).collect();
        let (count, bytes) = ready.iter().fold((0usize, 0usize), |(c, b), q| (c + q.len(), b + q.bytes()));
        if count == 0 {
            return None;
        }
        let window_elapsed = self.next_deadline(ready.iter().map(|q| &**q)).is_some_and(|deadline| now >= deadline);
        if !(flush || window_elapsed || count >= self.batch_size || bytes >= self.max_payload) {
            return None;
        }

        // Oldest partitions first, so a busy topic cannot starve a quiet one.
        ready.sort_by(|a, b| (a.first_arrival(), a.first_key()).cmp(&(b.first_arrival(), b.first_key())));

        let mut sizer = self.source.sizer();
        let mut batch = Vec::new();
        'partitions: for queue in ready {
            while let Some((_, record)) = queue.records.front() {
                if batch.len() == self.batch_size {
                    break 'partitions;
                }
                if record.undecodable().is_some() {
                    // Given up on its own, after the records before it, never invoked.
                    if batch.is_empty() {
                        return Some(Formed::Undecodable(queue.pop().expect("front exists")));
                    }
                    break 'partitions;
                }
                if sizer.with(record) > self.max_payload {
                    if batch.is_empty() {
                        let record = queue.pop().expect("front exists");
                        return Some(Formed::Oversized(record));
                    }
                    break 'partitions;
                }
                sizer.add(record);
                batch.push(queue.pop().expect("front exists"));
            }
        }
        Some(Formed::Batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use crate::kafka::TimestampType;

    fn batcher(batch_size: usize, window_ms: u64, max_payload: usize) -> Batcher {
        Batcher {
            batch_size,
            window: Duration::from_millis(window_ms),
            source: EventSource { event_source: "SelfManagedKafka".into(), event_source_arn: None, bootstrap_servers: "b:9092".into() },
            max_payload,
        }
    }

    fn record(partition: i32, offset: i64, value_len: usize) -> Record {
        Record::new(PartitionKey::new("t", partition), offset, 0, TimestampType::CreateTime, None, Some(vec![b'v'; value_len]), Vec::new())
    }

    fn offsets(formed: Option<Formed>) -> Vec<(i32, i64)> {
        match formed {
            Some(Formed::Batch(records)) => records.iter().map(|r| (r.key_partition.partition, r.offset)).collect(),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn batch_size_closes_a_batch_before_the_window() {
        let b = batcher(3, 10_000, MAX_PAYLOAD_BYTES);
        let now = Instant::now();
        let mut queues = BTreeMap::new();
        for o in 0..2 {
            queues.entry(PartitionKey::new("t", 0)).or_insert_with(PartitionQueue::default).push(now, record(0, o, 1));
        }
        assert!(b.next(queues.values_mut(), now, false).is_none(), "2 < BatchSize and window open");
        for o in 2..5 {
            queues.get_mut(&PartitionKey::new("t", 0)).unwrap().push(now, record(0, o, 1));
        }
        assert_eq!(offsets(b.next(queues.values_mut(), now, false)), vec![(0, 0), (0, 1), (0, 2)]);
        assert!(b.next(queues.values_mut(), now, false).is_none(), "2 left, window open");
    }

    #[test]
    fn undecodable_records_are_set_apart_in_partition_order() {
        let b = batcher(10, 0, MAX_PAYLOAD_BYTES);
        let now = Instant::now();
        let mut queues = BTreeMap::new();
        let q = queues.entry(PartitionKey::new("t", 0)).or_insert_with(PartitionQueue::default);
        q.push(now, record(0, 0, 1));
        q.push(now, record(0, 1, 1).into_undecodable(crate::destination::Condition::SchemaNotFound));
        q.push(now, record(0, 2, 1));
        assert_eq!(offsets(b.next(queues.values_mut(), now, false)), vec![(0, 0)], "the batch closes before it");
        match b.next(queues.values_mut(), now, false) {
            Some(Formed::Undecodable(r)) => {
                assert_eq!((r.offset, r.undecodable()), (1, Some(crate::destination::Condition::SchemaNotFound)))
            }
            other => panic!("expected the undecodable record alone, got {other:?}"),
        }
        assert_eq!(offsets(b.next(queues.values_mut(), now, false)), vec![(0, 2)]);
    }

    #[test]
    fn window_closes_a_batch_from_the_first_record() {
        let b = batcher(100, 500, MAX_PAYLOAD_BYTES);
        let start = Instant::now();
        let mut queues = BTreeMap::new();
        queues.entry(PartitionKey::new("t", 0)).or_insert_with(PartitionQueue::default).push(start, record(0, 0, 1));
        queues.get_mut(&PartitionKey::new("t", 0)).unwrap().push(start + Duration::from_millis(400), record(0, 1, 1));
        assert_eq!(b.next_deadline(queues.values()), Some(start + Duration::from_millis(500)));
        assert!(b.next(queues.values_mut(), start + Duration::from_millis(499), false).is_none());
        assert_eq!(offsets(b.next(queues.values_mut(), start + Duration::from_millis(500), false)), vec![(0, 0), (0, 1)]);
    }

    #[test]
    fn payload_cap_closes_a_batch_and_lone_oversized_records_are_set_apart() {
        let source_overhead = batcher(1, 0, 0).source.sizer().bytes();
        let one = record(0, 0, 100).encoded_len() + 10;
        // Room for exactly two records of partition 0 in one event.
        let cap = source_overhead + 2 * one;
        let b = batcher(100, 0, cap);
        let now = Instant::now();
        let mut queues = BTreeMap::new();
        let q = queues.entry(PartitionKey::new("t", 0)).or_insert_with(PartitionQueue::default);
        for o in 0..3 {
            q.push(now, record(0, o, 100));
        }
        q.push(now, record(0, 3, cap));
        let first = offsets(b.next(queues.values_mut(), now, false));
        assert_eq!(first, vec![(0, 0), (0, 1)]);
        let batch_bytes = b.source.encode(&[record(0, 0, 100), record(0, 1, 100)]).len();
        assert!(batch_bytes <= cap);
        assert_eq!(offsets(b.next(queues.values_mut(), now, false)), vec![(0, 2)], "record 3 would not fit with 2");
        match b.next(queues.values_mut(), now, false) {
            Some(Formed::Oversized(r)) => assert_eq!(r.offset, 3),
            other => panic!("expected oversized, got {other:?}"),
        }
    }

    #[test]
    fn busy_partitions_are_skipped_and_partitions_stay_in_order() {
        let b = batcher(10, 0, MAX_PAYLOAD_BYTES);
        let now = Instant::now();
        let mut queues = BTreeMap::new();
        for p in 0..3 {
            let q = queues.entry(PartitionKey::new("t", p)).or_insert_with(PartitionQueue::default);
            for o in 0..2 {
                q.push(now + Duration::from_millis(p as u64), record(p, o, 1));
            }
        }
        queues.get_mut(&PartitionKey::new("t", 1)).unwrap().busy = true;
        assert_eq!(offsets(b.next(queues.values_mut(), now + Duration::from_millis(5), false)), vec![(0, 0), (0, 1), (2, 0), (2, 1)]);
        assert_eq!(queues[&PartitionKey::new("t", 1)].len(), 2);
        assert!(b.next(queues.values_mut(), now + Duration::from_secs(5), false).is_none(), "only a busy partition has records");
    }
}
