//! Delivering one batch, as a pure state machine: [`Delivery::next`] takes what the last step came back
//! with and returns the next [`Step`] (invoke, wait, hand off to the destination, or a [`Notice`] for the
//! ledger). It does no I/O and reads no clock, so every rule is a table test; [`super::job`] carries the
//! steps out.
//!
//! The rules, in the order they apply to the next sub-batch (the decision after each invocation itself is
//! [`outcome::decide`]):
//! 1. records older than `MaximumRecordAgeInSeconds` are given up (`RetryAttemptsExhausted`) without an
//!    invocation, the rest go on;
//! 2. a sub-batch that already used every retry (an earlier run ended before the destination took it) is
//!    given up without another invocation;
//! 3. after the run's invoke cut-off nothing is invoked: what is left is reported [`Notice::Unfinished`],
//!    with its attempts, so the next run continues the count;
//! 4. a failed batch is retried partition by partition: a partition with no later records in this job
//!    gets a job of its own ([`Notice::Continue`]), so one failing partition never holds back another;
//! 5. a destination write is retried (with backoff) until it succeeds or the run stops: **records are
//!    acknowledged only once the destination has them**, so nothing given up is ever committed unwritten.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::destination::{Condition, ResponseContext};
use crate::invoke::InvokeResult;
use crate::kafka::{PartitionKey, Record};
use crate::outcome::{self, Attempts, Next, Settings, Verdict};

/// The mapping's rules for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Partial responses, bisection, retry limit.
    pub settings: Settings,
    /// `MaximumRecordAgeInSeconds`, when not infinite.
    pub max_age: Option<Duration>,
    /// Whether given-up records are written somewhere (else they are dropped).
    pub has_destination: bool,
    /// First and largest wait between failed attempts.
    pub retry_backoff: (Duration, Duration),
    /// First and largest wait after throttles, 5xx, network errors and failed destination writes.
    pub transient_backoff: (Duration, Duration),
}

/// What the outside world looks like when the machine is asked for its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall clock, Unix milliseconds (record ages).
    pub unix_ms: i64,
    /// False once the run stops or passed its invoke cut-off: no invocation may start.
    pub may_invoke: bool,
}

/// How the last step went.
#[derive(Debug)]
pub enum Input {
    /// Begin, or go on after a notice or a wait.
    Go,
    /// A wait was cut short by the run stopping.
    Stopped,
    /// What the invocation of [`Delivery::in_hand`] came back with.
    Invoked(InvokeResult),
    /// Whether the destination took [`Delivery::in_hand`].
    HandedOff(Result<(), HandOffFailure>),
}

/// A destination write that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOffFailure {
    /// AWS's error code, e.g. `AccessDenied`.
    pub code: String,
    /// Whether trying again unchanged may succeed; if not, a person has to fix the destination.
    pub retryable: bool,
}

/// What to do next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Invoke the target with [`Delivery::in_hand`]; answer with [`Input::Invoked`].
    Invoke,
    /// Write [`Delivery::in_hand`] to the destination; answer with [`Input::HandedOff`].
    HandOff {
        /// Why the records are given up.
        condition: Condition,
        /// How often they were invoked.
        attempts: Attempts,
        /// The last invocation's response (`null` for oversized records).
        response: Option<ResponseContext>,
    },
    /// Wait, then answer [`Input::Go`] (or [`Input::Stopped`] if the run stopped meanwhile).
    Wait(Duration),
    /// Tell the ledger; answer [`Input::Go`].
    Notify(Notice),
    /// The job is over: its partitions (but those handed to continuations) are free.
    Finished,
}

/// The `reason` of a [`Notice::Invoked`] whose function answered with a partial batch response.
pub const PARTIAL_BATCH_RESPONSE: &str = "partial batch response";

/// What the ledger learns from a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The target processed these records.
    Delivered(Vec<(PartitionKey, i64)>),
    /// These records were given up: written to the destination, or dropped when there is none.
    GivenUp {
        /// The records.
        records: Vec<(PartitionKey, i64)>,
        /// Written (true) or dropped (false).
        to_destination: bool,
    },
    /// One invocation reached the function (`failed`: function error, timeout or partial response).
    Invoked {
        /// Whether it failed.
        failed: bool,
        /// Why, when it failed.
        reason: Option<String>,
    },
    /// An invocation did not reach the function (throttle, 5xx, network): backing off, not an attempt.
    NotAttempted {
        /// Why.
        reason: String,
    },
    /// A partition cannot move past `offset` for now.
    Blocked {
        /// The partition.
        key: PartitionKey,
        /// The record it waits on.
        offset: i64,
        /// Why, and what would unblock it.
        reason: String,
    },
    /// Retry these records (one partition's) in a job of their own after `delay`; the partition stays
    /// busy meanwhile.
    Continue {
        /// The records.
        records: Vec<Record>,
        /// Their attempts.
        attempts: Attempts,
        /// The backoff before the retry.
        delay: Duration,
        /// The last invocation's response.
        response: Option<ResponseContext>,
    },
    /// The run stopped first: per partition, the first record not done and the failed attempts it carries.
    Unfinished {
        /// (partition, first offset not done, failed attempts).
        first: Vec<(PartitionKey, i64, u32)>,
        /// The last invocation's response, kept for a later give-up.
        response: Option<ResponseContext>,
    },
}

/// Records being given up, until the destination has them.
#[derive(Debug)]
struct HandOff {
    records: Vec<Record>,
    condition: Condition,
    attempts: Attempts,
}

/// One batch on its way: the sub-batches still to deliver and what is in hand.
#[derive(Debug)]
pub struct Delivery {
    policy: Policy,
    /// Sub-batches still to deliver; the last is next. Halves are pushed later-first so order holds.
    stack: Vec<(Vec<Record>, Attempts)>,
    /// The sub-batch being invoked.
    invoking: Option<(Vec<Record>, Attempts)>,
    /// Records being given up.
    handing_off: Option<HandOff>,
    /// Wait before the first invocation (a continuation's backoff).
    delay: Option<Duration>,
    last_response: Option<ResponseContext>,
    /// Throttles / 5xx / network errors in a row (backoff exponent).
    transient_failures: u32,
    /// Failed destination writes in a row (backoff exponent).
    destination_failures: u32,
    stopping: bool,
    /// Partitions this job holds (busy in the ledger) and has not handed to a continuation.
    held: Vec<PartitionKey>,
    out: VecDeque<Notice>,
    finished: bool,
}

impl Delivery {
    /// A batch to invoke, carrying `attempts` (from an earlier run or job) and the last response seen.
    pub fn new(records: Vec<Record>, attempts: Attempts, last_response: Option<ResponseContext>, policy: Policy) -> Self {
        let held = partitions_of(&records);
        Self {
            policy,
            stack: vec![(records, attempts)],
            invoking: None,
            handing_off: None,
            delay: None,
            last_response,
            transient_failures: 0,
            destination_failures: 0,
            stopping: false,
            held,
            out: VecDeque::new(),
            finished: false,
        }
    }

    /// A retry handed over by another job: waits `delay` first.
    pub fn continuation(
        records: Vec<Record>,
        attempts: Attempts,
        last_response: Option<ResponseContext>,
        delay: Duration,
        policy: Policy,
    ) -> Self {
        let mut delivery = Self::new(records, attempts, last_response, policy);
        delivery.delay = (!delay.is_zero()).then_some(delay);
        delivery
    }

    /// A record whose event alone exceeds 6 MB: straight to the destination (`MaximumPayloadSizeExceeded`).
    pub fn oversized(record: Record, policy: Policy) -> Self {
        Self::uninvoked(record, Condition::MaximumPayloadSizeExceeded, policy)
    }

    /// A record given up without an invocation (too large, or undecodable through the schema registry):
    /// straight to the destination with `condition`, or dropped when there is none.
    pub fn uninvoked(record: Record, condition: Condition, policy: Policy) -> Self {
        let mut delivery = Self::new(Vec::new(), Attempts::default(), None, policy);
        delivery.stack.clear();
        delivery.held = vec![record.key_partition.clone()];
        delivery.handing_off = Some(HandOff { records: vec![record], condition, attempts: Attempts::default() });
        delivery
    }

    /// The records the current [`Step::Invoke`] or [`Step::HandOff`] is about.
    pub fn in_hand(&self) -> &[Record] {
        if let Some(handing) = &self.handing_off {
            return &handing.records;
        }
        self.invoking.as_ref().map_or(&[], |(records, _)| records.as_slice())
    }

    /// Partitions this job still holds; free them when it is [`Step::Finished`].
    pub fn held(&self) -> &[PartitionKey] {
        &self.held
    }

    /// The next step, given how the last one went.
    pub fn next(&mut self, input: Input, now: Now) -> Step {
        self.absorb(input);
        if let Some(notice) = self.out.pop_front() {
            return Step::Notify(notice);
        }
        self.advance(now)
    }

    fn absorb(&mut self, input: Input) {
        match input {
            Input::Go => {}
            Input::Stopped => self.stopping = true,
            Input::Invoked(result) => self.invoked(result),
            Input::HandedOff(Ok(())) => {
                let handed = self.handing_off.take().expect("a hand-off was in progress");
                self.destination_failures = 0;
                self.out.push_back(Notice::GivenUp { records: ids(&handed.records), to_destination: true });
            }
            Input::HandedOff(Err(failure)) => {
                let handing = self.handing_off.as_ref().expect("a hand-off was in progress");
                let first = &handing.records[0];
                let mut reason = format!(
                    "the on-failure destination refused the write ({}); nothing is committed until it succeeds",
                    failure.code
                );
                if !failure.retryable {
                    reason.push_str(": fix the destination, its permissions or its key; the relay keeps trying");
                }
                self.out.push_back(Notice::Blocked { key: first.key_partition.clone(), offset: first.offset, reason });
                let wait = outcome::backoff(self.destination_failures, self.policy.transient_backoff.0, self.policy.transient_backoff.1);
                self.destination_failures = self.destination_failures.saturating_add(1);
                self.delay = Some(wait);
            }
        }
    }

    /// Carries out [`outcome::decide`] for the sub-batch that was invoked.
    fn invoked(&mut self, result: InvokeResult) {
        let (records, attempts) = self.invoking.take().expect("an invocation was in progress");
        let settings = &self.policy.settings;
        let verdict = outcome::classify(&result, &records, settings);
        let decision = outcome::decide(&records, &verdict, attempts, settings);
        match &verdict {
            Verdict::NotAttempted { reason } => self.out.push_back(Notice::NotAttempted { reason: reason.clone() }),
            Verdict::FunctionError { reason, response } => {
                self.last_response = response.clone();
                self.out.push_back(Notice::Invoked { failed: true, reason: Some(reason.clone()) });
            }
            Verdict::Partial(_) => {
                self.out.push_back(Notice::Invoked { failed: true, reason: Some(PARTIAL_BATCH_RESPONSE.into()) })
            }
            Verdict::Success => self.out.push_back(Notice::Invoked { failed: false, reason: None }),
        }
        if !matches!(verdict, Verdict::FunctionError { .. }) {
            if let Some(response) = outcome::response_context(&result) {
                self.last_response = Some(response);
            }
        }
        if !decision.delivered.is_empty() {
            self.out.push_back(Notice::Delivered(ids(&pick(&records, &decision.delivered))));
        }
        if !matches!(decision.next, Next::BackOff) {
            self.transient_failures = 0;
        }
        match decision.next {
            Next::Done => {}
            Next::BackOff => {
                let (first, max) = self.policy.transient_backoff;
                self.delay = Some(outcome::backoff(self.transient_failures, first, max));
                self.transient_failures = self.transient_failures.saturating_add(1);
                self.stack.push((records, attempts));
            }
            Next::Retry { records: retry, attempts } => self.retry(pick(&records, &retry), attempts),
            Next::Split { first, second, attempts } => {
                self.stack.push((pick(&records, &second), attempts));
                self.stack.push((pick(&records, &first), attempts));
            }
            Next::GiveUp { records: given, condition, attempts } => {
                self.handing_off = Some(HandOff { records: pick(&records, &given), condition, attempts });
            }
        }
    }

    /// A failed sub-batch is retried after a backoff; partitions with no later records in this job are
    /// handed to jobs of their own so other partitions do not wait for them.
    fn retry(&mut self, retry: Vec<Record>, attempts: Attempts) {
        if self.policy.settings.retry_limit.is_none() && !self.policy.has_destination {
            let first = &retry[0];
            self.out.push_back(Notice::Blocked {
                key: first.key_partition.clone(),
                offset: first.offset,
                reason: format!(
                    "the target keeps failing ({} attempts) and MaximumRetryAttempts is -1 with no on-failure destination: set a retry limit or a destination, or fix the function",
                    attempts.failed
                ),
            });
        }
        let (first, max) = self.policy.retry_backoff;
        let wait = outcome::backoff(attempts.failed.saturating_sub(1), first, max);
        let by_partition = split_by_partition(retry);
        let single = by_partition.len() == 1 && self.stack.is_empty();
        let mut stay = Vec::new();
        for records in by_partition {
            let key = records[0].key_partition.clone();
            let later_records_here = self.stack.iter().any(|(pending, _)| pending.iter().any(|r| r.key_partition == key));
            if single || later_records_here {
                // Retried here, before this partition's later records: order holds.
                stay.push(records);
            } else {
                self.held.retain(|k| *k != key);
                let response = self.last_response.clone();
                self.out.push_back(Notice::Continue { records, attempts, delay: wait, response });
            }
        }
        if !stay.is_empty() {
            self.stack.extend(stay.into_iter().rev().map(|records| (records, attempts)));
            self.delay = Some(wait);
        }
    }

    /// Decides the next action from what is left.
    fn advance(&mut self, now: Now) -> Step {
        loop {
            if self.finished {
                return Step::Finished;
            }
            if self.stopping {
                return self.stop();
            }
            if let Some(handing) = &self.handing_off {
                if self.delay.is_none() {
                    if !self.policy.has_destination {
                        let dropped = self.handing_off.take().expect("checked");
                        return Step::Notify(Notice::GivenUp { records: ids(&dropped.records), to_destination: false });
                    }
                    let response = if handing.condition.uninvoked() { None } else { self.last_response.clone() };
                    return Step::HandOff { condition: handing.condition, attempts: handing.attempts, response };
                }
            }
            if let Some(delay) = self.delay.take() {
                return Step::Wait(delay);
            }
            let Some((records, attempts)) = self.stack.pop() else {
                self.finished = true;
                return Step::Finished;
            };
            let expired = outcome::expired(&records, now.unix_ms, self.policy.max_age);
            if !expired.is_empty() {
                let (old, rest): (Vec<_>, Vec<_>) =
                    records.into_iter().enumerate().partition(|(i, _)| expired.contains(i));
                let rest: Vec<Record> = rest.into_iter().map(|(_, r)| r).collect();
                if !rest.is_empty() {
                    self.stack.push((rest, attempts));
                }
                let records = old.into_iter().map(|(_, r)| r).collect();
                self.handing_off = Some(HandOff { records, condition: Condition::RetryAttemptsExhausted, attempts });
                continue;
            }
            if outcome::exhausted(attempts, &self.policy.settings) {
                self.handing_off = Some(HandOff { records, condition: Condition::RetryAttemptsExhausted, attempts });
                continue;
            }
            if !now.may_invoke {
                self.stack.push((records, attempts));
                self.stopping = true;
                continue;
            }
            self.invoking = Some((records, attempts));
            return Step::Invoke;
        }
    }

    /// The run stopped: report what is left (once) and finish.
    fn stop(&mut self) -> Step {
        self.finished = true;
        let mut left: Vec<(Vec<Record>, Attempts)> = std::mem::take(&mut self.stack);
        if let Some(handing) = self.handing_off.take() {
            left.push((handing.records, handing.attempts));
        }
        if let Some(invoking) = self.invoking.take() {
            left.push(invoking);
        }
        let first = unfinished(&left);
        if first.is_empty() {
            return Step::Finished;
        }
        Step::Notify(Notice::Unfinished { first, response: self.last_response.clone() })
    }
}

/// The partitions of `records`, in order of first appearance.
pub fn partitions_of(records: &[Record]) -> Vec<PartitionKey> {
    let mut keys: Vec<PartitionKey> = Vec::new();
    for record in records {
        if keys.last() != Some(&record.key_partition) && !keys.contains(&record.key_partition) {
            keys.push(record.key_partition.clone());
        }
    }
    keys
}

/// Splits records into one group per partition, keeping their order.
fn split_by_partition(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut groups: Vec<Vec<Record>> = Vec::new();
    for record in records {
        match groups.iter_mut().find(|g| g[0].key_partition == record.key_partition) {
            Some(group) => group.push(record),
            None => groups.push(vec![record]),
        }
    }
    groups
}

fn ids(records: &[Record]) -> Vec<(PartitionKey, i64)> {
    records.iter().map(|r| (r.key_partition.clone(), r.offset)).collect()
}

fn pick(records: &[Record], indices: &[usize]) -> Vec<Record> {
    indices.iter().map(|&i| records[i].clone()).collect()
}

/// The first record per partition of what is left, with the attempts it carries.
fn unfinished(left: &[(Vec<Record>, Attempts)]) -> Vec<(PartitionKey, i64, u32)> {
    let mut first: BTreeMap<PartitionKey, (i64, u32)> = BTreeMap::new();
    for (records, attempts) in left {
        for r in records {
            let entry = first.entry(r.key_partition.clone()).or_insert((r.offset, attempts.failed));
            if r.offset < entry.0 {
                *entry = (r.offset, attempts.failed);
            }
        }
    }
    first.into_iter().map(|(k, (o, a))| (k, o, a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::TimestampType;

    const NOW: Now = Now { unix_ms: 1_000_000, may_invoke: true };
    const STOPPING: Now = Now { unix_ms: 1_000_000, may_invoke: false };
    const ZERO: (Duration, Duration) = (Duration::ZERO, Duration::ZERO);

    fn policy(retry_limit: Option<u32>, bisect: bool, partial: bool, has_destination: bool) -> Policy {
        Policy {
            settings: Settings { reports_batch_item_failures: partial, bisect, retry_limit },
            max_age: None,
            has_destination,
            retry_backoff: ZERO,
            transient_backoff: ZERO,
        }
    }

    /// Records (partition, offset) with timestamps `NOW - age_ms`.
    fn records(spec: &[(i32, i64)]) -> Vec<Record> {
        spec.iter()
            .map(|&(p, o)| Record::new(PartitionKey::new("t", p), o, NOW.unix_ms - o * 1000, TimestampType::CreateTime, None, None, Vec::new()))
            .collect()
    }

    fn ok() -> InvokeResult {
        InvokeResult::Completed { status_code: 200, function_error: None, executed_version: None, payload: Vec::new() }
    }

    fn function_error() -> InvokeResult {
        InvokeResult::Completed {
            status_code: 200,
            function_error: Some("Unhandled".into()),
            executed_version: Some("$LATEST".into()),
            payload: Vec::new(),
        }
    }

    fn partial(partition: i32, offset: i64) -> InvokeResult {
        let body = format!(r#"{{"batchItemFailures":[{{"itemIdentifier":{{"partition":"t-{partition}","offset":{offset}}}}}]}}"#);
        InvokeResult::Completed { status_code: 200, function_error: None, executed_version: None, payload: body.into_bytes() }
    }

    fn in_hand(d: &Delivery) -> Vec<(i32, i64)> {
        d.in_hand().iter().map(|r| (r.key_partition.partition, r.offset)).collect()
    }

    /// Drives the machine: `script` answers each `Invoke` in turn; notices and waits are answered with `Go`,
    /// hand-offs with success. Returns every step (invocations shown with the records in hand).
    fn drive(d: &mut Delivery, script: Vec<InvokeResult>) -> Vec<String> {
        let mut script = script.into_iter();
        let mut trace = Vec::new();
        let mut input = Input::Go;
        for _ in 0..200 {
            match d.next(input, NOW) {
                Step::Invoke => {
                    trace.push(format!("invoke {:?}", in_hand(d)));
                    input = Input::Invoked(script.next().expect("the script covers every invocation"));
                }
                Step::HandOff { condition, attempts, .. } => {
                    trace.push(format!("hand off {:?} {} after {}", in_hand(d), condition.as_str(), attempts.invoked));
                    input = Input::HandedOff(Ok(()));
                }
                Step::Wait(_) => {
                    trace.push("wait".into());
                    input = Input::Go;
                }
                Step::Notify(notice) => {
                    trace.push(describe(&notice));
                    input = Input::Go;
                }
                Step::Finished => {
                    trace.push("finished".into());
                    return trace;
                }
            }
        }
        panic!("no end: {trace:?}");
    }

    fn describe(notice: &Notice) -> String {
        let offsets = |ids: &[(PartitionKey, i64)]| ids.iter().map(|(k, o)| (k.partition, *o)).collect::<Vec<_>>();
        match notice {
            Notice::Delivered(ids) => format!("delivered {:?}", offsets(ids)),
            Notice::GivenUp { records, to_destination } => format!("given up {:?} {}", offsets(records), if *to_destination { "written" } else { "dropped" }),
            Notice::Invoked { failed, .. } => format!("invoked failed={failed}"),
            Notice::NotAttempted { .. } => "not attempted".into(),
            Notice::Blocked { key, offset, .. } => format!("blocked {}@{offset}", key.partition),
            Notice::Continue { records, attempts, .. } => {
                format!("continue {:?} failed={}", records.iter().map(|r| (r.key_partition.partition, r.offset)).collect::<Vec<_>>(), attempts.failed)
            }
            Notice::Unfinished { first, .. } => {
                format!("unfinished {:?}", first.iter().map(|(k, o, a)| (k.partition, *o, *a)).collect::<Vec<_>>())
            }
        }
    }

    #[test]
    fn a_successful_batch_is_delivered_in_one_invocation() {
        let mut d = Delivery::new(records(&[(0, 1), (0, 2)]), Attempts::default(), None, policy(None, false, false, false));
        assert_eq!(drive(&mut d, vec![ok()]), ["invoke [(0, 1), (0, 2)]", "invoked failed=false", "delivered [(0, 1), (0, 2)]", "finished"]);
    }

    #[test]
    fn retries_stop_at_the_limit_and_records_go_to_the_destination() {
        let mut d = Delivery::new(records(&[(0, 1)]), Attempts::default(), None, policy(Some(1), false, false, true));
        assert_eq!(
            drive(&mut d, vec![function_error(), function_error()]),
            [
                "invoke [(0, 1)]",
                "invoked failed=true",
                "wait",
                "invoke [(0, 1)]",
                "invoked failed=true",
                "hand off [(0, 1)] RetryAttemptsExhausted after 2",
                "given up [(0, 1)] written",
                "finished"
            ]
        );
    }

    #[test]
    fn without_a_destination_given_up_records_are_dropped_not_written() {
        let mut d = Delivery::new(records(&[(0, 1)]), Attempts::default(), None, policy(Some(0), false, false, false));
        assert_eq!(
            drive(&mut d, vec![function_error()]),
            ["invoke [(0, 1)]", "invoked failed=true", "given up [(0, 1)] dropped", "finished"]
        );
    }

    #[test]
    fn bisection_splits_without_using_an_attempt_and_keeps_order() {
        let mut d = Delivery::new(records(&[(0, 1), (0, 2), (0, 3), (0, 4)]), Attempts::default(), None, policy(Some(0), true, false, true));
        assert_eq!(
            drive(&mut d, vec![function_error(), ok(), function_error(), ok(), function_error()]),
            [
                "invoke [(0, 1), (0, 2), (0, 3), (0, 4)]",
                "invoked failed=true",
                "invoke [(0, 1), (0, 2)]",
                "invoked failed=false",
                "delivered [(0, 1), (0, 2)]",
                "invoke [(0, 3), (0, 4)]",
                "invoked failed=true",
                "invoke [(0, 3)]",
                "invoked failed=false",
                "delivered [(0, 3)]",
                "invoke [(0, 4)]",
                "invoked failed=true",
                "hand off [(0, 4)] RetryAttemptsExhausted after 3",
                "given up [(0, 4)] written",
                "finished"
            ]
        );
    }

    #[test]
    fn a_partial_response_acknowledges_records_before_the_checkpoint_and_retries_the_rest() {
        let mut d = Delivery::new(records(&[(0, 1), (0, 2), (0, 3)]), Attempts::default(), None, policy(None, false, true, true));
        assert_eq!(
            drive(&mut d, vec![partial(0, 2), ok()]),
            [
                "invoke [(0, 1), (0, 2), (0, 3)]",
                "invoked failed=true",
                "delivered [(0, 1)]",
                "wait",
                "invoke [(0, 2), (0, 3)]",
                "invoked failed=false",
                "delivered [(0, 2), (0, 3)]",
                "finished"
            ]
        );
    }

    #[test]
    fn a_failed_partition_without_later_records_continues_in_a_job_of_its_own() {
        let mut d = Delivery::new(records(&[(0, 1), (1, 1)]), Attempts::default(), None, policy(None, false, false, true));
        assert_eq!(
            drive(&mut d, vec![function_error()]),
            ["invoke [(0, 1), (1, 1)]", "invoked failed=true", "continue [(0, 1)] failed=1", "continue [(1, 1)] failed=1", "finished"]
        );
        // Both partitions went to continuations: this job holds none of them any more.
        assert!(d.held().is_empty());
    }

    #[test]
    fn a_failed_partition_with_later_records_in_the_job_is_retried_before_them() {
        let mut d = Delivery::new(records(&[(0, 1), (0, 2), (1, 1)]), Attempts::default(), None, policy(None, true, false, true));
        let trace = drive(&mut d, vec![function_error(), function_error(), ok(), ok()]);
        assert_eq!(
            trace,
            [
                "invoke [(0, 1), (0, 2), (1, 1)]",
                "invoked failed=true",
                "invoke [(0, 1)]",
                "invoked failed=true",
                "wait",
                "invoke [(0, 1)]",
                "invoked failed=false",
                "delivered [(0, 1)]",
                "invoke [(0, 2), (1, 1)]",
                "invoked failed=false",
                "delivered [(0, 2), (1, 1)]",
                "finished"
            ]
        );
        assert_eq!(d.held(), [PartitionKey::new("t", 0), PartitionKey::new("t", 1)]);
    }

    #[test]
    fn throttles_back_off_without_counting_as_attempts() {
        let throttled = || InvokeResult::Throttled { message: "slow down".into() };
        let mut d = Delivery::new(records(&[(0, 1)]), Attempts::default(), None, policy(Some(0), false, false, true));
        assert_eq!(
            drive(&mut d, vec![throttled(), throttled(), ok()]),
            [
                "invoke [(0, 1)]",
                "not attempted",
                "wait",
                "invoke [(0, 1)]",
                "not attempted",
                "wait",
                "invoke [(0, 1)]",
                "invoked failed=false",
                "delivered [(0, 1)]",
                "finished"
            ]
        );
    }

    #[test]
    fn infinite_retries_without_a_destination_report_the_partition_blocked() {
        let mut d = Delivery::new(records(&[(3, 7)]), Attempts::default(), None, policy(None, false, false, false));
        let trace = drive(&mut d, vec![function_error(), ok()]);
        assert_eq!(trace[..4], ["invoke [(3, 7)]", "invoked failed=true", "blocked 3@7", "wait"]);
    }

    #[test]
    fn old_records_are_given_up_before_invoking_and_the_rest_is_invoked() {
        let mut p = policy(None, false, false, true);
        p.max_age = Some(Duration::from_secs(2));
        // Offsets double as ages in seconds: 1 and 2 are young enough, 3 is too old.
        let mut d = Delivery::new(records(&[(0, 3), (1, 1), (1, 2)]), Attempts::default(), None, p);
        assert_eq!(
            drive(&mut d, vec![ok()]),
            [
                "hand off [(0, 3)] RetryAttemptsExhausted after 0",
                "given up [(0, 3)] written",
                "invoke [(1, 1), (1, 2)]",
                "invoked failed=false",
                "delivered [(1, 1), (1, 2)]",
                "finished"
            ]
        );
    }

    #[test]
    fn a_batch_that_used_every_retry_in_an_earlier_run_goes_straight_to_the_destination() {
        let carried = Attempts { failed: 3, invoked: 3 };
        let mut d = Delivery::new(records(&[(0, 5)]), carried, None, policy(Some(2), false, false, true));
        assert_eq!(drive(&mut d, vec![]), ["hand off [(0, 5)] RetryAttemptsExhausted after 3", "given up [(0, 5)] written", "finished"]);
    }

    #[test]
    fn oversized_records_are_handed_off_without_a_response_context() {
        let mut d = Delivery::oversized(records(&[(0, 9)]).remove(0), policy(None, false, false, true));
        match d.next(Input::Go, NOW) {
            Step::HandOff { condition, response, .. } => {
                assert_eq!(condition, Condition::MaximumPayloadSizeExceeded);
                assert_eq!(response, None);
            }
            other => panic!("expected a hand-off, got {other:?}"),
        }
        assert_eq!(d.held(), [PartitionKey::new("t", 0)]);
    }

    #[test]
    fn undecodable_records_are_handed_off_uninvoked_with_their_schema_condition_or_dropped() {
        for condition in [Condition::SchemaNotFound, Condition::DeserializationError] {
            let mut d = Delivery::uninvoked(records(&[(0, 4)]).remove(0), condition, policy(None, false, false, true));
            match d.next(Input::Go, NOW) {
                Step::HandOff { condition: handed, response, attempts } => {
                    assert_eq!((handed, response, attempts), (condition, None, Attempts::default()));
                }
                other => panic!("expected a hand-off, got {other:?}"),
            }
        }
        // Without a destination the record is dropped (AWS discards it), never invoked.
        let mut d = Delivery::uninvoked(records(&[(0, 4)]).remove(0), Condition::SchemaNotFound, policy(None, false, false, false));
        assert_eq!(
            d.next(Input::Go, NOW),
            Step::Notify(Notice::GivenUp { records: vec![(PartitionKey::new("t", 0), 4)], to_destination: false })
        );
    }

    #[test]
    fn nothing_is_acknowledged_while_the_destination_refuses_the_write() {
        let mut d = Delivery::new(records(&[(0, 1)]), Attempts::default(), None, policy(Some(0), false, false, true));
        assert_eq!(d.next(Input::Go, NOW), Step::Invoke);
        assert_eq!(d.next(Input::Invoked(function_error()), NOW), Step::Notify(Notice::Invoked { failed: true, reason: Some("function error (Unhandled)".into()) }));
        assert!(matches!(d.next(Input::Go, NOW), Step::HandOff { .. }));
        let refused = Input::HandedOff(Err(HandOffFailure { code: "AccessDenied".into(), retryable: false }));
        match d.next(refused, NOW) {
            Step::Notify(Notice::Blocked { offset: 1, reason, .. }) => {
                assert!(reason.contains("AccessDenied") && reason.contains("fix the destination"), "{reason}")
            }
            other => panic!("expected blocked, got {other:?}"),
        }
        assert!(matches!(d.next(Input::Go, NOW), Step::Wait(_)));
        assert!(matches!(d.next(Input::Go, NOW), Step::HandOff { .. }), "the write is retried");
        // The run stops while the write is refused: the record is unfinished, never given up.
        assert!(matches!(d.next(Input::HandedOff(Err(HandOffFailure { code: "x".into(), retryable: true })), NOW), Step::Notify(Notice::Blocked { .. })));
        assert_eq!(
            d.next(Input::Stopped, NOW),
            Step::Notify(Notice::Unfinished { first: vec![(PartitionKey::new("t", 0), 1, 1)], response: d.last_response.clone() })
        );
        assert_eq!(d.next(Input::Go, NOW), Step::Finished);
    }

    #[test]
    fn after_the_cut_off_nothing_is_invoked_and_attempts_are_kept_for_the_next_run() {
        let mut d = Delivery::new(records(&[(0, 1), (0, 2)]), Attempts::default(), None, policy(None, false, false, true));
        assert_eq!(d.next(Input::Go, NOW), Step::Invoke);
        let _ = d.next(Input::Invoked(function_error()), NOW);
        assert!(matches!(d.next(Input::Go, NOW), Step::Wait(_)));
        match d.next(Input::Go, STOPPING) {
            Step::Notify(Notice::Unfinished { first, response }) => {
                assert_eq!(first, vec![(PartitionKey::new("t", 0), 1, 1)]);
                assert_eq!(response.and_then(|r| r.function_error).as_deref(), Some("Unhandled"));
            }
            other => panic!("expected unfinished, got {other:?}"),
        }
        assert_eq!(d.next(Input::Go, STOPPING), Step::Finished);
    }

    #[test]
    fn a_continuation_waits_its_backoff_first_and_a_stop_during_it_leaves_the_records_unfinished() {
        let mut d = Delivery::continuation(records(&[(2, 4)]), Attempts { failed: 2, invoked: 2 }, None, Duration::from_millis(50), policy(None, false, false, true));
        assert_eq!(d.next(Input::Go, NOW), Step::Wait(Duration::from_millis(50)));
        assert_eq!(d.next(Input::Stopped, NOW), Step::Notify(Notice::Unfinished { first: vec![(PartitionKey::new("t", 2), 4, 2)], response: None }));
    }
}
