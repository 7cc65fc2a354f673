//! What to do after an invocation: a pure function of (batch, invoke result, attempt state, mapping
//! settings) → next actions (SPEC section 4). The async pipeline in [`crate::relay`] only carries the
//! actions out, so every retry, bisection and give-up rule is tested here, table-driven, without I/O.
//!
//! Records are referred to by their index in the batch; batches hold each partition's records contiguous
//! and in offset order, and every split keeps that order, so acknowledging the records a decision names
//! never skips an earlier record of the same partition.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::destination::{Condition, ResponseContext};
use crate::invoke::InvokeResult;
use crate::kafka::{PartitionKey, Record};

/// The mapping's error-handling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `FunctionResponseTypes` contains `ReportBatchItemFailures`.
    pub reports_batch_item_failures: bool,
    /// `BisectBatchOnFunctionError`.
    pub bisect: bool,
    /// Retries after the first attempt; `None` is infinite (already resolved: -1 with a destination is 10).
    pub retry_limit: Option<u32>,
}

impl Settings {
    /// The settings of `mapping`.
    pub fn for_mapping(mapping: &crate::config::Mapping) -> Self {
        Self {
            reports_batch_item_failures: mapping.reports_batch_item_failures(),
            bisect: mapping.bisect_batch_on_function_error,
            retry_limit: mapping.retry_limit(),
        }
    }
}

/// How one invocation went, as the mapping's rules read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record is done.
    Success,
    /// `batchItemFailures`: per named partition, the lowest reported offset (the checkpoint).
    Partial(BTreeMap<PartitionKey, i64>),
    /// The function failed (error header, invalid partial response, or timeout).
    FunctionError {
        /// Why, for logs and the report.
        reason: String,
        /// What the failure record's `responseContext` says.
        response: Option<ResponseContext>,
    },
    /// Throttled, 5xx, network, or a request Lambda rejected: back off, not an attempt.
    NotAttempted {
        /// Why, for logs and the report.
        reason: String,
    },
}

/// `{"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": 15}}]}`
#[derive(Deserialize)]
struct PartialResponse {
    #[serde(rename = "batchItemFailures")]
    batch_item_failures: Option<Vec<Option<ItemFailure>>>,
}

#[derive(Deserialize)]
struct ItemFailure {
    #[serde(rename = "itemIdentifier")]
    item_identifier: Option<ItemIdentifier>,
}

#[derive(Deserialize)]
struct ItemIdentifier {
    partition: Option<String>,
    offset: Option<serde_json::Value>,
}

/// The `responseContext` a failure record reports for an invocation that reached the function.
pub fn response_context(result: &InvokeResult) -> Option<ResponseContext> {
    match result {
        InvokeResult::Completed { status_code, function_error, executed_version, .. } => Some(ResponseContext {
            status_code: *status_code,
            executed_version: executed_version.clone().unwrap_or_else(|| "$LATEST".into()),
            function_error: function_error.clone(),
        }),
        _ => None,
    }
}

/// Reads an invoke result under the mapping's rules.
pub fn classify(result: &InvokeResult, records: &[Record], settings: &Settings) -> Verdict {
    match result {
        InvokeResult::Completed { function_error, payload, .. } => {
            let response = response_context(result);
            if let Some(kind) = function_error {
                return Verdict::FunctionError { reason: format!("function error ({kind})"), response };
            }
            if !settings.reports_batch_item_failures {
                return Verdict::Success;
            }
            match parse_partial(payload, records) {
                Ok(checkpoints) if checkpoints.is_empty() => Verdict::Success,
                Ok(checkpoints) => Verdict::Partial(checkpoints),
                Err(reason) => Verdict::FunctionError {
                    reason,
                    response: response.map(|r| ResponseContext { function_error: Some("Unhandled".into()), ..r }),
                },
            }
        }
        InvokeResult::TimedOut => Verdict::FunctionError {
            reason: "invoke timed out".into(),
            response: Some(ResponseContext {
                status_code: 200,
                executed_version: "$LATEST".into(),
                function_error: Some("Unhandled".into()),
            }),
        },
        InvokeResult::Throttled { message } => Verdict::NotAttempted { reason: format!("throttled: {message}") },
        InvokeResult::Unavailable { status_code, message } => Verdict::NotAttempted {
            reason: match status_code {
                Some(code) => format!("lambda unavailable ({code}): {message}"),
                None => format!("lambda unreachable: {message}"),
            },
        },
        InvokeResult::Rejected { code, message } => {
            Verdict::NotAttempted { reason: format!("invoke rejected ({code}): {message}") }
        }
    }
}

/// Parses a partial batch response. An empty or null body, or an empty or null list, is success (an
/// empty map). Any malformed identifier, or one naming a record not in the batch, fails the whole batch.
fn parse_partial(payload: &[u8], records: &[Record]) -> Result<BTreeMap<PartitionKey, i64>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "response is not UTF-8".to_string())?;
    if text.trim().is_empty() || text.trim() == "null" {
        return Ok(BTreeMap::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "response is not JSON".to_string())?;
    if !value.is_object() {
        // A function that returns e.g. a string did not use the partial batch response format.
        return Ok(BTreeMap::new());
    }
    let parsed: PartialResponse = serde_json::from_value(value)
        .map_err(|e| format!("batchItemFailures is malformed: {}", crate::config::quote(&e.to_string())))?;
    let mut checkpoints = BTreeMap::new();
    for failure in parsed.batch_item_failures.unwrap_or_default() {
        let identifier = failure
            .and_then(|f| f.item_identifier)
            .ok_or_else(|| "batchItemFailures has an empty or null itemIdentifier".to_string())?;
        let partition = identifier
            .partition
            .ok_or_else(|| "itemIdentifier has no partition".to_string())?;
        let offset = match identifier.offset {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.parse::<i64>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("itemIdentifier for {} has no integer offset", crate::config::quote(&partition)))?;
        let record = records
            .iter()
            .find(|r| r.offset == offset && r.key_partition.to_string() == partition)
            .ok_or_else(|| {
                format!("itemIdentifier {}@{offset} names a record not in the batch", crate::config::quote(&partition))
            })?;
        let entry = checkpoints.entry(record.key_partition.clone()).or_insert(offset);
        *entry = (*entry).min(offset);
    }
    Ok(checkpoints)
}

/// Where a sub-batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempts {
    /// Failed attempts so far (the first invocation included); retries are `failed - 1`.
    pub failed: u32,
    /// Invocations that reached the function, for `approximateInvokeCount`.
    pub invoked: u32,
}

/// What to do next with a sub-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing left.
    Done,
    /// Invoke these records again after backing off.
    Retry {
        /// Indices into the batch.
        records: Vec<usize>,
        /// The attempt state they carry.
        attempts: Attempts,
    },
    /// Invoke `first`, then `second`, each on its own (bisection; no attempt consumed).
    Split {
        /// The earlier half.
        first: Vec<usize>,
        /// The later half.
        second: Vec<usize>,
        /// The attempt state both halves carry.
        attempts: Attempts,
    },
    /// Hand these records to the on-failure destination (or drop them when there is none).
    GiveUp {
        /// Indices into the batch.
        records: Vec<usize>,
        /// Why.
        condition: Condition,
        /// How many times they were invoked.
        attempts: Attempts,
    },
    /// Not an attempt: wait and invoke the same records again.
    BackOff,
}

/// The decision after one invocation of `records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Records that are done (delivered); their offsets may be acknowledged now.
    pub delivered: Vec<usize>,
    /// What happens to the rest.
    pub next: Next,
}

/// Decides what follows `verdict` for a sub-batch of `records` that had `attempts` before this invocation.
pub fn decide(records: &[Record], verdict: &Verdict, attempts: Attempts, settings: &Settings) -> Decision {
    let all: Vec<usize> = (0..records.len()).collect();
    match verdict {
        Verdict::Success => Decision { delivered: all, next: Next::Done },
        Verdict::NotAttempted { .. } => Decision { delivered: Vec::new(), next: Next::BackOff },
        Verdict::Partial(checkpoints) => {
            let (delivered, rest): (Vec<usize>, Vec<usize>) = all.into_iter().partition(|&i| {
                let record = &records[i];
                checkpoints.get(&record.key_partition).is_none_or(|&checkpoint| record.offset < checkpoint)
            });
            let attempts = Attempts { failed: attempts.failed + 1, invoked: attempts.invoked + 1 };
            Decision { delivered, next: retry_or_give_up(rest, attempts, settings) }
        }
        Verdict::FunctionError { .. } => {
            let attempts = Attempts { failed: attempts.failed, invoked: attempts.invoked + 1 };
            if settings.bisect && records.len() > 1 {
                let second = all[records.len() / 2..].to_vec();
                let first = all[..records.len() / 2].to_vec();
                return Decision { delivered: Vec::new(), next: Next::Split { first, second, attempts } };
            }
            let attempts = Attempts { failed: attempts.failed + 1, ..attempts };
            Decision { delivered: Vec::new(), next: retry_or_give_up(all, attempts, settings) }
        }
    }
}

fn retry_or_give_up(records: Vec<usize>, attempts: Attempts, settings: &Settings) -> Next {
    if records.is_empty() {
        return Next::Done;
    }
    // `failed` counts the first attempt too; retries so far are `failed - 1`.
    let retries_used = attempts.failed.saturating_sub(1);
    match settings.retry_limit {
        Some(limit) if retries_used >= limit => {
            Next::GiveUp { records, condition: Condition::RetryAttemptsExhausted, attempts }
        }
        _ => Next::Retry { records, attempts },
    }
}

/// Whether a sub-batch already used every retry (a run that gave up on it ended before the destination
/// acknowledged the write): it goes to the destination again without another invocation.
pub fn exhausted(attempts: Attempts, settings: &Settings) -> bool {
    // `failed` counts the first attempt: retries used are `failed - 1`.
    attempts.failed > 0 && settings.retry_limit.is_some_and(|limit| attempts.failed > limit)
}

/// Indices of records older than `max_age` at `now_ms` (Unix milliseconds): they are given up without
/// being invoked.
pub fn expired(records: &[Record], now_ms: i64, max_age: Option<Duration>) -> Vec<usize> {
    let Some(max_age) = max_age else { return Vec::new() };
    let limit = max_age.as_millis() as i64;
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| now_ms.saturating_sub(r.timestamp_ms) > limit)
        .map(|(i, _)| i)
        .collect()
}

/// Exponential backoff with full jitter, capped: attempt 0 waits up to `initial`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exponential = initial.saturating_mul(1u32 << attempt.min(20));
    let capped = exponential.min(max);
    let millis = capped.as_millis() as u64;
    if millis == 0 {
        return capped;
    }
    // Never less than half, so a retry storm cannot form from many near-zero waits.
    Duration::from_millis(millis / 2 + rand::random_range(0..=millis / 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::TimestampType;

    fn records(spec: &[(i32, i64)]) -> Vec<Record> {
        spec.iter()
            .map(|&(p, o)| {
                Record::new(PartitionKey::new("t", p), o, 1_000 * o, TimestampType::CreateTime, None, None, Vec::new())
            })
            .collect()
    }

    fn completed(body: &str) -> InvokeResult {
        InvokeResult::Completed {
            status_code: 200,
            function_error: None,
            executed_version: Some("$LATEST".into()),
            payload: body.as_bytes().to_vec(),
        }
    }

    const PARTIAL: Settings = Settings { reports_batch_item_failures: true, bisect: false, retry_limit: None };
    const PLAIN: Settings = Settings { reports_batch_item_failures: false, bisect: false, retry_limit: None };

    #[test]
    fn successful_bodies_are_success() {
        let batch = records(&[(0, 5), (0, 6)]);
        for body in ["", "null", "{}", "{\"batchItemFailures\":[]}", "{\"batchItemFailures\":null}", "\"ok\""] {
            assert_eq!(classify(&completed(body), &batch, &PARTIAL), Verdict::Success, "body {body}");
        }
    }

    #[test]
    fn partial_response_lowest_offset_per_partition_is_the_checkpoint() {
        let batch = records(&[(0, 5), (0, 6), (0, 7), (1, 10), (1, 11)]);
        let body = r#"{"batchItemFailures":[
            {"itemIdentifier":{"partition":"t-0","offset":7}},
            {"itemIdentifier":{"partition":"t-0","offset":6}},
            {"itemIdentifier":{"partition":"t-1","offset":"11"}}]}"#;
        let verdict = classify(&completed(body), &batch, &PARTIAL);
        let expected: BTreeMap<PartitionKey, i64> =
            [(PartitionKey::new("t", 0), 6), (PartitionKey::new("t", 1), 11)].into_iter().collect();
        assert_eq!(verdict, Verdict::Partial(expected));
        let decision = decide(&batch, &verdict, Attempts::default(), &PARTIAL);
        assert_eq!(decision.delivered, vec![0, 3]);
        assert_eq!(
            decision.next,
            Next::Retry { records: vec![1, 2, 4], attempts: Attempts { failed: 1, invoked: 1 } }
        );
    }

    #[test]
    fn partitions_not_named_in_a_partial_response_are_done() {
        let batch = records(&[(0, 5), (1, 9)]);
        let verdict = classify(&completed(r#"{"batchItemFailures":[{"itemIdentifier":{"partition":"t-1","offset":9}}]}"#), &batch, &PARTIAL);
        let decision = decide(&batch, &verdict, Attempts::default(), &PARTIAL);
        assert_eq!(decision.delivered, vec![0]);
    }

    #[test]
    fn malformed_identifiers_fail_the_whole_batch() {
        let batch = records(&[(0, 5), (0, 6)]);
        let cases = [
            r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":{}}]}"#,
            r#"{"batchItemFailures":[{}]}"#,
            r#"{"batchItemFailures":[null]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":{"partition":"t-0"}}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":{"partition":"t-0","offset":"x"}}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":{"partition":"t-0","offset":99}}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":{"partition":"t-7","offset":5}}]}"#,
            r#"{"batchItemFailures":"nope"}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"t-0@5"}]}"#,
            "not json",
        ];
        for body in cases {
            let verdict = classify(&completed(body), &batch, &PARTIAL);
            assert!(matches!(verdict, Verdict::FunctionError { .. }), "{body}: {verdict:?}");
            let decision = decide(&batch, &verdict, Attempts::default(), &PARTIAL);
            assert!(decision.delivered.is_empty(), "{body}");
            assert_eq!(decision.next, Next::Retry { records: vec![0, 1], attempts: Attempts { failed: 1, invoked: 1 } });
        }
    }

    #[test]
    fn response_body_is_ignored_without_report_batch_item_failures() {
        let batch = records(&[(0, 5)]);
        let body = r#"{"batchItemFailures":[{"itemIdentifier":{"partition":"t-0","offset":5}}]}"#;
        assert_eq!(classify(&completed(body), &batch, &PLAIN), Verdict::Success);
        assert_eq!(classify(&completed("not json"), &batch, &PLAIN), Verdict::Success);
    }

    #[test]
    fn function_errors_and_timeouts_are_failures_and_throttles_are_not_attempts() {
        let batch = records(&[(0, 1)]);
        let error = InvokeResult::Completed {
            status_code: 200,
            function_error: Some("Unhandled".into()),
            executed_version: None,
            payload: b"{}".to_vec(),
        };
        assert!(matches!(classify(&error, &batch, &PLAIN), Verdict::FunctionError { .. }));
        assert!(matches!(classify(&InvokeResult::TimedOut, &batch, &PLAIN), Verdict::FunctionError { .. }));
        for result in [
            InvokeResult::Throttled { message: "rate".into() },
            InvokeResult::Unavailable { status_code: Some(503), message: "x".into() },
            InvokeResult::Unavailable { status_code: None, message: "refused".into() },
            InvokeResult::Rejected { code: "AccessDeniedException".into(), message: "x".into() },
        ] {
            let verdict = classify(&result, &batch, &PLAIN);
            assert!(matches!(verdict, Verdict::NotAttempted { .. }));
            let decision = decide(&batch, &verdict, Attempts { failed: 3, invoked: 3 }, &Settings { retry_limit: Some(0), ..PLAIN });
            assert_eq!(decision.next, Next::BackOff);
        }
    }

    fn failure() -> Verdict {
        Verdict::FunctionError { reason: "x".into(), response: None }
    }

    #[test]
    fn retry_limits_give_up_after_the_allowed_retries() {
        let batch = records(&[(0, 1), (0, 2)]);
        // (limit, failed attempts before this invocation, expected to give up)
        let table = [(Some(0), 0, true), (Some(2), 0, false), (Some(2), 1, false), (Some(2), 2, true), (None, 500, false)];
        for (limit, failed, gives_up) in table {
            let settings = Settings { retry_limit: limit, ..PLAIN };
            let decision = decide(&batch, &failure(), Attempts { failed, invoked: failed }, &settings);
            let attempts = Attempts { failed: failed + 1, invoked: failed + 1 };
            let expected = if gives_up {
                Next::GiveUp { records: vec![0, 1], condition: Condition::RetryAttemptsExhausted, attempts }
            } else {
                Next::Retry { records: vec![0, 1], attempts }
            };
            assert_eq!(decision.next, expected, "limit {limit:?} failed {failed}");
        }
    }

    #[test]
    fn bisection_splits_without_consuming_attempts_and_single_records_count() {
        let settings = Settings { bisect: true, retry_limit: Some(1), ..PLAIN };
        let batch = records(&[(0, 1), (0, 2), (0, 3), (1, 4), (1, 5)]);
        let decision = decide(&batch, &failure(), Attempts::default(), &settings);
        assert_eq!(
            decision.next,
            Next::Split { first: vec![0, 1], second: vec![2, 3, 4], attempts: Attempts { failed: 0, invoked: 1 } }
        );
        let single = records(&[(0, 3)]);
        let decision = decide(&single, &failure(), Attempts { failed: 0, invoked: 3 }, &settings);
        assert_eq!(decision.next, Next::Retry { records: vec![0], attempts: Attempts { failed: 1, invoked: 4 } });
        let decision = decide(&single, &failure(), Attempts { failed: 1, invoked: 4 }, &settings);
        assert!(matches!(decision.next, Next::GiveUp { .. }));
    }

    #[test]
    fn partial_failure_with_bisect_retries_only_the_rest() {
        let settings = Settings { bisect: true, ..PARTIAL };
        let batch = records(&[(0, 1), (0, 2), (0, 3), (0, 4)]);
        let verdict = classify(&completed(r#"{"batchItemFailures":[{"itemIdentifier":{"partition":"t-0","offset":3}}]}"#), &batch, &settings);
        let decision = decide(&batch, &verdict, Attempts::default(), &settings);
        assert_eq!(decision.delivered, vec![0, 1]);
        assert_eq!(decision.next, Next::Retry { records: vec![2, 3], attempts: Attempts { failed: 1, invoked: 1 } });
    }

    #[test]
    fn batches_that_used_every_retry_are_exhausted_before_invoking() {
        let limit = |l| Settings { retry_limit: l, ..PLAIN };
        assert!(!exhausted(Attempts::default(), &limit(Some(0))), "never invoked");
        assert!(exhausted(Attempts { failed: 1, invoked: 1 }, &limit(Some(0))));
        assert!(!exhausted(Attempts { failed: 2, invoked: 2 }, &limit(Some(3))));
        assert!(exhausted(Attempts { failed: 4, invoked: 4 }, &limit(Some(3))));
        assert!(!exhausted(Attempts { failed: 400, invoked: 400 }, &limit(None)));
    }

    #[test]
    fn old_records_expire() {
        let batch = records(&[(0, 1), (0, 100), (0, 200)]);
        // timestamps are offset * 1000 ms; now = 161 s; max age 60 s → offsets 1 and 100 are older.
        assert_eq!(expired(&batch, 161_000, Some(Duration::from_secs(60))), vec![0, 1]);
        assert!(expired(&batch, 161_000, None).is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 0..30 {
            let wait = backoff(attempt, initial, max);
            let ceiling = initial.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(wait <= ceiling && wait >= ceiling / 2, "attempt {attempt}: {wait:?}");
        }
    }
}
