//! The redrive loop: per item of the source, rebuild the batch, invoke, judge, then remove or keep.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::aws::{Bucket, Queue};
use super::error::RedriveError;
use super::parse::{failed_batch, Content, OffsetRange};
use super::select::{commit_position, removal, Outcome, Removal};
use super::{ItemFailure, Options, Services, Source, Summary, WouldSend};
use crate::auth::KafkaSecurity;
use crate::config::Mapping;
use crate::event::EventSource;
use crate::kafka::Record;
use crate::outcome::{classify, Settings, Verdict};

/// Redrives every invocation record of `options.source` to the target (the mapping's `FunctionName`
/// unless `options.function` names another) and returns the summary. `Err` only when the source itself
/// cannot be read or cleaned up; a batch that fails is counted and kept.
pub async fn redrive(mapping: &Mapping, options: &Options, services: &Services) -> Result<Summary, RedriveError> {
    let function = options.function.clone().unwrap_or_else(|| mapping.function_name.clone());
    let timeout = match options.target_timeout {
        Some(timeout) => timeout,
        None if options.dry_run => Duration::ZERO,
        None => {
            services
                .invoker
                .function_info(&function)
                .await
                .map_err(|source| RedriveError::FunctionLookup { function: function.clone(), source })?
                .timeout
        }
    };
    let summary = Summary {
        source: options.source.to_string(),
        function: function.clone(),
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let mut run = Redrive { mapping, options, services, function, timeout, security: None, next_invoke: None, summary };
    match &options.source {
        Source::Sqs { url } => run.drain_sqs(url).await?,
        Source::S3 { bucket, prefix } => run.drain_s3(bucket, prefix).await?,
        Source::Kafka { topic } => run.drain_kafka(topic).await?,
    }
    Ok(run.summary)
}

struct Redrive<'a> {
    mapping: &'a Mapping,
    options: &'a Options,
    services: &'a Services,
    function: String,
    timeout: Duration,
    security: Option<KafkaSecurity>,
    next_invoke: Option<Instant>,
    summary: Summary,
}

impl Redrive<'_> {
    /// Every visible message, until a receive comes back empty. Redriven messages are deleted one by one;
    /// kept ones stay invisible until the end (so this run does not read them twice), then are released.
    async fn drain_sqs(&mut self, url: &str) -> Result<(), RedriveError> {
        let queue = Queue::new(&self.services.sdk_config, url);
        let mut kept = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let messages = queue.receive().await?;
            if messages.is_empty() {
                break;
            }
            for message in messages {
                if !seen.insert(message.message_id.clone()) {
                    continue;
                }
                match self.batch(&message.message_id, message.body.as_bytes()).await {
                    Removal::Remove => {
                        queue.delete(&message).await?;
                        self.summary.removed += 1;
                    }
                    Removal::Keep(_) => kept.push(message),
                }
            }
        }
        self.summary.kept += kept.len();
        for message in &kept {
            queue.release(message).await?;
        }
        Ok(())
    }

    /// Every object under the prefix without a checkpoint marker; a marker is written once its batch was
    /// redriven.
    async fn drain_s3(&mut self, bucket: &str, prefix: &str) -> Result<(), RedriveError> {
        let bucket = Bucket::new(&self.services.sdk_config, bucket);
        let checkpoints = self.options.checkpoint_prefix.clone();
        for key in bucket.keys(prefix).await? {
            if key.starts_with(&checkpoints) {
                continue;
            }
            let marker = format!("{checkpoints}{key}.done");
            if bucket.exists(&marker).await? {
                self.summary.batches_already_redriven += 1;
                continue;
            }
            let body = bucket.get(&key).await?;
            match self.batch(&key, &body).await {
                Removal::Remove => {
                    let note = serde_json::json!({"object": key, "function": self.function,
                        "redrivenAt": crate::destination::rfc3339_millis(time::OffsetDateTime::now_utc())});
                    bucket.put_checkpoint(&marker, note.to_string().into_bytes()).await?;
                    self.summary.removed += 1;
                }
                Removal::Keep(_) => self.summary.kept += 1,
            }
        }
        Ok(())
    }

    /// The failure topic from the redrive group's offsets to its end; the group then commits, per
    /// partition, past the messages redriven, never past one kept.
    async fn drain_kafka(&mut self, topic: &str) -> Result<(), RedriveError> {
        let group = self.options.group.clone().unwrap_or_else(|| format!("kafka-lambda-relay-redrive-{topic}"));
        let security = self.security().await?;
        let (mapping, topic_owned, group_owned) = (self.mapping.clone(), topic.to_string(), group.clone());
        let messages =
            blocking(move || super::kafka::read_failure_topic(&mapping, &security, &topic_owned, &group_owned)).await?;
        let mut done: BTreeMap<i32, BTreeMap<i64, bool>> = BTreeMap::new();
        for message in messages {
            let item = format!("{topic}-{}@{}", message.partition, message.offset);
            let removable = self.batch(&item, &message.value).await == Removal::Remove;
            done.entry(message.partition).or_default().insert(message.offset, removable);
            if removable {
                self.summary.removed += 1;
            } else {
                self.summary.kept += 1;
            }
        }
        let positions: BTreeMap<i32, i64> =
            done.iter().filter_map(|(p, d)| commit_position(d).map(|o| (*p, o))).collect();
        // Messages after a kept one are sent again by the next redrive: the group cannot commit past a gap.
        let (mapping, security, topic) = (self.mapping.clone(), self.security().await?, topic.to_string());
        blocking(move || super::kafka::commit_failure_topic(&mapping, &security, &topic, &group, &positions)).await
    }

    /// The mapping's Kafka security, resolved once.
    async fn security(&mut self) -> Result<KafkaSecurity, RedriveError> {
        if self.security.is_none() {
            let resolved = crate::auth::resolve(self.mapping, self.services.secrets.as_ref())
                .await
                .map_err(|source| RedriveError::KafkaSecurity { uuid: self.mapping.uuid(), source })?;
            self.security = Some(resolved);
        }
        Ok(self.security.clone().expect("resolved above"))
    }

    /// One invocation record: rebuilt, filtered, sent (unless a dry run), counted; returns whether its item
    /// may leave the source ([`removal`]).
    async fn batch(&mut self, item: &str, body: &[u8]) -> Removal {
        self.summary.batches_found += 1;
        let rebuilt = match failed_batch(body) {
            Ok(batch) => self.rebuild(batch.content).await,
            Err(reason) => Err(RedriveError::InvalidRecord { item: item.to_string(), reason }),
        };
        let (source, records, incomplete) = match rebuilt {
            Ok(rebuilt) => rebuilt,
            Err(error) => {
                self.summary.unreadable += 1;
                self.summary.failures.push(ItemFailure { item: item.to_string(), reason: error.to_string() });
                self.progress();
                return Removal::Keep("unreadable");
            }
        };
        self.summary.records_found += records.len();
        let found = records.len();
        let selected: Vec<Record> = records.into_iter().filter(|r| self.options.filters.selects(r)).collect();
        let skipped = found - selected.len();
        self.summary.records_skipped_by_filter += skipped;
        if selected.is_empty() && skipped > 0 {
            self.summary.batches_skipped_by_filter += 1;
        }
        let outcome = self.send(item, &source, &selected).await;
        match &outcome {
            Outcome::Succeeded => {
                self.summary.batches_redriven += 1;
                self.summary.records_redriven += selected.len();
            }
            Outcome::Failed(reason) => {
                self.summary.batches_failed += 1;
                self.summary.records_failed += selected.len();
                self.summary.failures.push(ItemFailure { item: item.to_string(), reason: reason.clone() });
            }
            Outcome::NothingToSend | Outcome::DryRun => {}
        }
        self.progress();
        removal(&outcome, skipped, incomplete)
    }

    /// The batch's event header and records; SQS/SNS offsets are read back from Kafka (missing offsets
    /// are added to the summary), and records the mapping's `FilterCriteria` drops are left out, as the
    /// relay left them out of the original batch. `true` when the record does not name every partition.
    async fn rebuild(&mut self, content: Content) -> Result<(EventSource, Vec<Record>, bool), RedriveError> {
        match content {
            Content::Records { source, records } => Ok((source, records, false)),
            Content::Offsets { source, ranges, truncated_partition_count } => {
                let records = self.read_back(ranges).await?;
                Ok((source, records, truncated_partition_count.is_some()))
            }
        }
    }

    async fn read_back(&mut self, ranges: Vec<OffsetRange>) -> Result<Vec<Record>, RedriveError> {
        let security = self.security().await?;
        let mapping = self.mapping.clone();
        let read = blocking(move || super::kafka::read_ranges(&mapping, &security, &ranges)).await?;
        self.summary.records_missing += read.missing.iter().map(super::select::Missing::count).sum::<usize>();
        self.summary.missing.extend(read.missing);
        // With a schema registry the relay filtered decoded records; the raw records are kept here.
        let filters = match self.mapping.schema_registry_config() {
            None => crate::filter::Filters::new(self.mapping.filter_criteria.as_ref()).ok(),
            Some(_) => None,
        };
        let total = read.records.len();
        let records: Vec<Record> = match filters {
            Some(filters) => read.records.into_iter().filter(|r| filters.matches(r)).collect(),
            None => read.records,
        };
        self.summary.records_filtered_by_mapping += total - records.len();
        Ok(records)
    }

    /// Invokes the target with `records` (or, in a dry run, notes what would be sent).
    async fn send(&mut self, item: &str, source: &EventSource, records: &[Record]) -> Outcome {
        if records.is_empty() {
            return if self.options.dry_run { Outcome::DryRun } else { Outcome::NothingToSend };
        }
        let event = source.encode(records);
        if self.options.dry_run {
            self.summary.would_send.push(WouldSend {
                item: item.to_string(),
                function: self.function.clone(),
                records: records.len(),
                event: serde_json::from_slice(&event).unwrap_or(serde_json::Value::Null),
            });
            return Outcome::DryRun;
        }
        self.pace().await;
        let result = self.services.invoker.invoke(&self.function, event, self.timeout).await;
        match classify(&result, records, &Settings::for_mapping(self.mapping)) {
            Verdict::Success => Outcome::Succeeded,
            Verdict::Partial(checkpoints) => Outcome::Failed(format!(
                "the function reported batchItemFailures from {}",
                checkpoints.iter().map(|(k, o)| format!("{k}@{o}")).collect::<Vec<_>>().join(", ")
            )),
            Verdict::FunctionError { reason, .. } | Verdict::NotAttempted { reason } => Outcome::Failed(reason),
        }
    }

    /// Waits so invocations start at most `--rate` per second.
    async fn pace(&mut self) {
        let Some(rate) = self.options.rate.filter(|r| *r > 0.0) else { return };
        if let Some(at) = self.next_invoke {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
        self.next_invoke = Some(Instant::now() + Duration::from_secs_f64(1.0 / rate));
    }

    fn progress(&self) {
        if self.options.progress {
            eprintln!("{}", self.summary.progress_line());
        }
    }
}

/// Runs librdkafka's blocking calls off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RedriveError> + Send + 'static,
) -> Result<T, RedriveError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}
