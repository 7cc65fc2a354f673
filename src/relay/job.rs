//! A delivery job: the async interpreter of one [`Delivery`]. It invokes, writes to the destination and
//! waits as the machine says, and sends the machine's notices to the driver; it decides nothing itself.
//!
//! The event is encoded here, once per invocation, so partitions encode in parallel off the driver's
//! task; the records are freed here too. A job holds one of the process's invocation permits only while it
//! invokes, so a partition waiting out a backoff never keeps another from being delivered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::MAX_PAYLOAD_BYTES;
use crate::destination::offload::{LargeRecordOffload, OffloadError};
use crate::destination::GivenUp;
use crate::event::EventSource;
use crate::invoke::{FunctionInfo, Invoke, InvokeResult};
use crate::kafka::consumer::InFlight;
use crate::kafka::{PartitionKey, Record};

use super::delivery::{Delivery, HandOffFailure, Input, Notice, Now, Step};
use super::ledger::{Charge, JobId};
use super::FailureSink;

/// What every job of a mapping shares.
pub(super) struct JobContext {
    pub mapping_uuid: String,
    pub function_name: String,
    pub function: FunctionInfo,
    pub source: EventSource,
    pub sink: Option<Arc<dyn FailureSink>>,
    pub invoker: Arc<dyn Invoke>,
    /// No invocation may start after this instant (it could not finish before the deadline).
    pub invoke_cutoff: Option<Instant>,
    /// Flips to true when the run stops: waits end, nothing more is invoked.
    pub stop: watch::Receiver<bool>,
    /// The process-wide bound on concurrent invocations.
    pub permits: Arc<Semaphore>,
    /// Partitions held by jobs; a partition the group takes away is invoked no more (see [`InFlight`]).
    pub in_flight: Arc<InFlight>,
    /// `RelayExtensions.LargeRecordOffload`, when the mapping sets it.
    pub offload: Option<Arc<LargeRecordOffload>>,
}

impl JobContext {
    /// Whether the oversized `record` is delivered through the large-record offload (else given up).
    pub fn offloads(&self, record: &Record) -> bool {
        self.offload.as_ref().is_some_and(|o| o.fits(&self.source, &self.mapping_uuid, record, MAX_PAYLOAD_BYTES))
    }
}

/// With `RelayExtensions.LargeRecordOffload`, a lone record whose event exceeds 6 MB (and whose pointer
/// event fits) is stored in S3 first; it is then invoked, or handed to the destination, as its pointer
/// record. `None` for every other batch.
async fn offloaded(context: &JobContext, records: &[Record]) -> Result<Option<(Record, Vec<u8>)>, OffloadError> {
    if let (Some(offload), [record]) = (&context.offload, records) {
        if context.source.sizer().with(record) > MAX_PAYLOAD_BYTES && context.offloads(record) {
            return offload.store(&context.source, &context.mapping_uuid, record).await.map(Some).inspect_err(|error| {
                tracing::warn!(error_code = "LARGE_RECORD_OFFLOAD_FAILED", mapping = %context.mapping_uuid, aws_error_code = error.source.code(), %error, "storing a large record in S3 failed; the partition waits");
            });
        }
    }
    Ok(None)
}

/// The event for `records` (see [`offloaded`]). A failed `PutObject` is answered as an invocation that did
/// not happen, so the record stays uncommitted and is tried again after the transient backoff.
async fn event_for(context: &JobContext, records: &[Record]) -> Result<Vec<u8>, InvokeResult> {
    match offloaded(context, records).await {
        Ok(Some((_, event))) => Ok(event),
        Ok(None) => Ok(context.source.encode(records)),
        Err(error) if error.source.retryable() => {
            Err(InvokeResult::Unavailable { status_code: error.source.status().map(i32::from), message: error.to_string() })
        }
        Err(error) => Err(InvokeResult::Rejected { code: error.source.code().to_string(), message: error.to_string() }),
    }
}

/// What a job tells the driver.
#[derive(Debug)]
pub(super) enum JobEvent {
    /// A notice for the ledger (a [`Notice::Continue`] also starts a job).
    Notice(Notice),
    /// The job ended; these partitions are free.
    Finished(Vec<PartitionKey>),
    /// An invoke call returned (sent before the machine's notice about it): for the metrics.
    Invocation {
        /// How long the call took.
        duration: Duration,
        /// Records in the event.
        records: usize,
        /// Bytes of the event.
        bytes: usize,
    },
    /// A write to the on-failure destination failed (`OnFailureDestinationDeliveryErrorCount`).
    DestinationFailed,
}

/// Runs `delivery` to its end. `permit` is the invocation slot the driver took for it, if any.
pub(super) async fn run(
    job: JobId,
    mut delivery: Delivery,
    context: Arc<JobContext>,
    events: mpsc::UnboundedSender<(JobId, JobEvent)>,
    mut permit: Option<OwnedSemaphorePermit>,
    charge: Charge,
) {
    let mut stop = context.stop.clone();
    let mut input = Input::Go;
    // Held until the task ends or is aborted: a revocation of these partitions waits for that.
    let hold = context.in_flight.hold(delivery.held().to_vec());
    let report = |event: JobEvent| {
        let _ = events.send((job, event));
    };
    loop {
        let leaving = context.in_flight.any_leaving(delivery.held());
        let now = Now {
            unix_ms: unix_ms(),
            may_invoke: !leaving && !*stop.borrow() && context.invoke_cutoff.is_none_or(|c| Instant::now() < c),
        };
        input = match delivery.next(input, now) {
            Step::Invoke => {
                if permit.is_none() {
                    permit = tokio::select! {
                        acquired = context.permits.clone().acquire_owned() => acquired.ok(),
                        _ = stop.wait_for(|s| *s) => None,
                    };
                }
                match permit {
                    Some(_) => invoke(&context, delivery.in_hand(), &report).await,
                    // Stopped while waiting for a slot: the machine reports the records unfinished.
                    None => Input::Stopped,
                }
            }
            Step::HandOff { condition, attempts, response } => {
                let given_up = GiveUp { condition, invoked: attempts.invoked, response };
                hand_off(&context, delivery.in_hand(), given_up, &report).await
            }
            Step::Wait(duration) => {
                // Waiting is not invoking: the slot goes to another partition meanwhile.
                permit = None;
                wait(&context, delivery.held(), duration, &mut stop).await
            }
            Step::Notify(notice) => {
                log(&context.mapping_uuid, &notice);
                report(JobEvent::Notice(notice));
                Input::Go
            }
            Step::Finished => break,
        };
    }
    // The records are freed here, with the job's memory charge.
    let held = delivery.held().to_vec();
    drop(delivery);
    drop(charge);
    report(JobEvent::Finished(held));
    drop(hold);
}

/// One invocation of the target with `records` (encoded here, or offloaded first).
async fn invoke(context: &JobContext, records: &[Record], report: &impl Fn(JobEvent)) -> Input {
    let payload = match event_for(context, records).await {
        Ok(payload) => payload,
        Err(not_invoked) => return Input::Invoked(not_invoked),
    };
    let (count, bytes) = (records.len(), payload.len());
    let timeout = context.function.timeout + Duration::from_secs(5);
    let started = Instant::now();
    let result = context.invoker.invoke(&context.function_name, payload, timeout).await;
    report(JobEvent::Invocation { duration: started.elapsed(), records: count, bytes });
    Input::Invoked(result)
}

/// Why and after what records are given up (the machine's [`Step::HandOff`]).
struct GiveUp {
    condition: crate::destination::Condition,
    invoked: u32,
    response: Option<crate::destination::ResponseContext>,
}

/// Writes `records` to the on-failure destination (as their pointer when a large record was offloaded).
async fn hand_off(context: &JobContext, records: &[Record], why: GiveUp, report: &impl Fn(JobEvent)) -> Input {
    let Some(sink) = &context.sink else { unreachable!("the machine drops records when there is no destination") };
    let offloaded = match offloaded(context, records).await {
        Ok(offloaded) => offloaded,
        Err(error) => {
            report(JobEvent::DestinationFailed);
            return Input::HandedOff(Err(HandOffFailure { code: error.source.code().to_string(), retryable: error.source.retryable() }));
        }
    };
    let (records, payload) = match &offloaded {
        Some((pointer, event)) => (std::slice::from_ref(pointer), event.clone()),
        None => (records, context.source.encode(records)),
    };
    let given_up = GivenUp {
        mapping_uuid: &context.mapping_uuid,
        function_arn: &context.function.function_arn,
        event_source_arn: context.source.event_source_arn.as_deref(),
        bootstrap_servers: &context.source.bootstrap_servers,
        condition: why.condition,
        approximate_invoke_count: why.invoked,
        response: why.response,
        records,
        payload: &payload,
    };
    match sink.send(&given_up).await {
        Ok(location) => {
            tracing::info!(mapping = %context.mapping_uuid, condition = why.condition.as_str(), records = records.len(), location = %location, "records written to the on-failure destination");
            Input::HandedOff(Ok(()))
        }
        Err(error) => {
            report(JobEvent::DestinationFailed);
            tracing::warn!(error_code = "DESTINATION_WRITE_FAILED", mapping = %context.mapping_uuid, aws_error_code = error.error_code(), retryable = error.retryable(), %error, "on-failure destination write failed; the partition waits");
            Input::HandedOff(Err(HandOffFailure { code: error.error_code().to_string(), retryable: error.retryable() }))
        }
    }
}

/// Waits `duration`; a stop, or a revocation of a partition held here, cuts the wait short.
async fn wait(context: &JobContext, held: &[PartitionKey], duration: Duration, stop: &mut watch::Receiver<bool>) -> Input {
    let until = tokio::time::Instant::now() + duration;
    loop {
        let revoked = context.in_flight.leaving_now.notified();
        if context.in_flight.any_leaving(held) {
            return Input::Stopped;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Input::Go,
            _ = stop.wait_for(|s| *s) => return Input::Stopped,
            _ = revoked => {}
        }
    }
}

fn log(mapping: &str, notice: &Notice) {
    match notice {
        // A partial batch response is the function working as designed (it asks for some records again): INFO.
        Notice::Invoked { failed: true, reason: Some(reason) } if reason == super::delivery::PARTIAL_BATCH_RESPONSE => {
            tracing::info!(code = "PARTIAL_BATCH_RESPONSE", mapping, "partial batch response: failed items are retried")
        }
        Notice::Invoked { failed: true, reason } => {
            tracing::warn!(error_code = "FUNCTION_ERROR", mapping, reason = reason.as_deref().unwrap_or(""), "invocation failed")
        }
        Notice::NotAttempted { reason } => {
            tracing::warn!(error_code = "INVOKE_NOT_ATTEMPTED", mapping, reason = %reason, "invoke will be retried")
        }
        Notice::GivenUp { records, to_destination: false } => tracing::warn!(
            error_code = "RECORDS_DROPPED",
            mapping,
            records = records.len(),
            first = %records.first().map(|(k, o)| format!("{k}@{o}")).unwrap_or_default(),
            "records given up with no on-failure destination: dropped"
        ),
        _ => {}
    }
}

fn unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod log_tests {
    use super::*;
    use crate::logging::{subscriber, tests::Buffer, Format, LogSettings};

    /// (level, code) of the JSON line `notice` logs.
    fn logged(notice: &Notice) -> Vec<(String, String)> {
        let buffer = Buffer::default();
        let settings = LogSettings { format: Format::Json, directives: "info".into() };
        tracing::subscriber::with_default(subscriber(&settings, buffer.clone()), || log("m-uuid", notice));
        buffer
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .map(|v| {
                let code = v["fields"]["code"].as_str().or(v["fields"]["error_code"].as_str());
                let code = code.unwrap_or("").to_string();
                (v["level"].as_str().unwrap_or("").to_string(), code)
            })
            .collect()
    }

    #[test]
    fn a_partial_batch_response_is_expected_behaviour_logged_at_info_with_its_own_code() {
        let reason = Some(super::super::delivery::PARTIAL_BATCH_RESPONSE.to_string());
        let partial = Notice::Invoked { failed: true, reason };
        assert_eq!(logged(&partial), vec![("INFO".to_string(), "PARTIAL_BATCH_RESPONSE".to_string())]);
        let error = Notice::Invoked { failed: true, reason: Some("function error (Unhandled)".into()) };
        assert_eq!(logged(&error), vec![("WARN".to_string(), "FUNCTION_ERROR".to_string())]);
    }
}
