//! How many workers a mapping's scheduled run starts: AWS's pollers, as relay processes (Lambda
//! invocations) in the mapping's consumer group. Kafka's group protocol (cooperative-sticky) shares the
//! partitions out among them; nothing here assigns partitions.
//!
//! [`workers`] is the pure decision (lag, partitions, measured rate, limits → workers). [`RateMemory`] keeps
//! the records per second one worker reached, for the next run's decision.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::auth::{CheckReport, SecretSource};
use crate::config::{Mapping, ProvisionedPollerConfig, RelayConfig};
use crate::invoke::{InvokeAsync, InvokeResult};

/// What the decision looks at, for one mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand<'a> {
    /// Per partition, records not yet committed (high watermark less the group's committed offset). Its
    /// length is the partition count.
    pub lags: &'a [i64],
    /// Records per second one worker delivered in earlier runs (None: not measured yet).
    pub rate_per_worker: Option<f64>,
    /// The time the workers have to catch up: the run's length.
    pub within: Duration,
    /// `ProvisionedPollerConfig`, or None for on-demand mode.
    pub provisioned: Option<ProvisionedPollerConfig>,
}

/// How many workers the mapping needs now, from 1 up to min(partitions, `MaximumPollers`), never below
/// `MinimumPollers` (capped by the partition count).
///
/// Why: one worker more than the lag needs costs a Lambda invocation that has nothing to do, and one
/// more than there are partitions gets no partition from the group at all (a partition is consumed by
/// one member). So the count is the lag over what one worker delivers in the time it has, rounded up,
/// but never more than the partitions that have lag. Before any rate is measured, one worker per
/// partition with lag is the guess that cannot leave records behind for lack of workers: the count is
/// still bounded by the limits. Without `ProvisionedPollerConfig` the limits are AWS's on-demand mode's:
/// 1 up to the partition count.
pub fn workers(demand: &Demand<'_>) -> u32 {
    let partitions = u32::try_from(demand.lags.len()).unwrap_or(u32::MAX).max(1);
    let (minimum, maximum) = demand.provisioned.map_or((1, partitions), |p| p.limits());
    let most = maximum.min(partitions).max(1);
    let least = minimum.min(most);
    let with_lag = demand.lags.iter().filter(|lag| **lag > 0).count() as u32;
    let total: i64 = demand.lags.iter().map(|lag| (*lag).max(0)).sum();
    let needed = match demand.rate_per_worker.filter(|rate| rate.is_finite() && *rate > 0.0) {
        _ if total == 0 => 0,
        None => with_lag,
        Some(rate) => {
            let per_worker = (rate * demand.within.as_secs_f64()).max(1.0);
            ((total as f64 / per_worker).ceil() as u32).min(with_lag)
        }
    };
    needed.clamp(least, most)
}

/// Records per second one worker reached, kept between runs in the coordinator's process (a warm Lambda
/// container), as a moving average; a cold start uses the configured default.
///
/// Why here and not in Kafka: the commit metadata belongs to the engine's retry state, and a store of its
/// own (a table, a parameter) would be one more resource to create and grant for an estimate that only
/// sizes the next run. A cold start with the default measured in docs/scaling.md errs on the side of
/// more workers (the decision caps at the partitions with lag).
#[derive(Debug, Default)]
pub struct RateMemory {
    rates: Mutex<std::collections::BTreeMap<String, f64>>,
}

impl RateMemory {
    /// The rate measured for `mapping`, else `default`.
    pub fn rate(&self, mapping: &str, default: Option<f64>) -> Option<f64> {
        self.rates.lock().expect("rates lock").get(mapping).copied().or(default)
    }

    /// Records what one worker of `mapping` delivered: `records` in `elapsed`. Runs that delivered nothing
    /// (nothing to do) say nothing about the rate and are ignored.
    pub fn observe(&self, mapping: &str, records: u64, elapsed: Duration) {
        if records == 0 || elapsed.is_zero() {
            return;
        }
        let rate = records as f64 / elapsed.as_secs_f64();
        let mut rates = self.rates.lock().expect("rates lock");
        let entry = rates.entry(mapping.to_string()).or_insert(rate);
        *entry = 0.5 * *entry + 0.5 * rate;
    }
}

/// The key that makes an invocation payload a worker's: `{"Mappings": [one mapping], "RelayWorker": {"Worker": n}}`.
pub const WORKER_KEY: &str = "RelayWorker";

/// The payload that starts worker `worker` of `mapping`: the mapping itself (the coordinator may have got
/// it from the schedule's input), marked as a worker's so it does not fan out again.
pub fn worker_payload(mapping: &Mapping, worker: u32) -> Vec<u8> {
    let payload = serde_json::json!({ "Mappings": [mapping], WORKER_KEY: { "Worker": worker } });
    serde_json::to_vec(&payload).expect("a mapping serializes")
}

/// Splits an invocation payload into the configuration part and, for a worker, its number.
pub fn split_worker(payload: &Value) -> (Value, Option<u32>) {
    let Value::Object(map) = payload else { return (payload.clone(), None) };
    let Some(worker) = map.get(WORKER_KEY) else { return (payload.clone(), None) };
    let number = worker.get("Worker").and_then(Value::as_u64).map_or(0, |n| n.min(u32::MAX as u64) as u32);
    let mut rest = map.clone();
    rest.remove(WORKER_KEY);
    (Value::Object(rest), Some(number))
}

/// Per partition, the records the group has not committed: from the committed offset, or from the oldest
/// record when the group has none.
pub fn lags(report: &CheckReport) -> Vec<i64> {
    report
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.lag.unwrap_or(p.high_watermark - p.low_watermark).max(0))
        .collect()
}

/// What the coordinator did for one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    /// The mapping's UUID.
    pub mapping: String,
    /// Workers the decision asked for, the coordinator included.
    pub workers: u32,
    /// Extra workers Lambda accepted (202).
    pub started: u32,
    /// Why the others were not started (the Invoke API's answer), if any.
    pub failures: Vec<String>,
}

/// How the coordinator sizes and starts workers.
pub struct Coordinator<'a> {
    /// The relay function itself (its name or ARN): workers are invocations of it.
    pub function: &'a str,
    /// Starts a worker: `Invoke` with `InvocationType=Event`.
    pub starter: &'a dyn InvokeAsync,
    /// Reads each mapping's lag (the group's committed offsets against the high watermarks).
    pub secrets: &'a dyn SecretSource,
    /// Records per second per worker measured by earlier runs.
    pub rates: &'a RateMemory,
    /// The rate assumed before any run measured one (`RELAY_WORKER_RECORDS_PER_SECOND`), if set.
    pub default_rate: Option<f64>,
    /// How long the workers have: the run's length.
    pub within: Duration,
    /// The most workers this deployment may start per mapping (its reserved concurrency allows for them).
    pub cap: u32,
}

impl Coordinator<'_> {
    /// Per enabled mapping: decides how many workers it needs ([`workers`], capped by [`Coordinator::cap`])
    /// and starts all but one (this run is the first) with an asynchronous invocation each.
    pub async fn start_workers(&self, config: &RelayConfig) -> Vec<FanOut> {
        let mut out = Vec::new();
        for mapping in config.mappings.iter().filter(|m| m.enabled) {
            let uuid = mapping.uuid();
            let workers = match crate::auth::check(mapping, self.secrets).await {
                Ok(report) => {
                    let lags = lags(&report);
                    let demand = Demand {
                        lags: &lags,
                        rate_per_worker: self.rates.rate(&uuid, self.default_rate),
                        within: self.within,
                        provisioned: mapping.provisioned_poller_config,
                    };
                    workers(&demand).min(self.cap.max(1))
                }
                Err(error) => {
                    // The run itself reports what is wrong with the mapping; no workers for it meanwhile.
                    tracing::warn!(error_code = "FAN_OUT_SKIPPED", mapping = %uuid, %error, "cannot read the mapping's lag: no extra workers");
                    1
                }
            };
            let mut fan_out = FanOut { mapping: uuid.clone(), workers, started: 0, failures: Vec::new() };
            for worker in 1..workers {
                match self.starter.invoke_async(self.function, worker_payload(mapping, worker)).await {
                    InvokeResult::Completed { status_code: 202, .. } => fan_out.started += 1,
                    other => {
                        tracing::warn!(error_code = "WORKER_NOT_STARTED", mapping = %uuid, worker, outcome = ?other, "a worker could not be started");
                        fan_out.failures.push(format!("{other:?}"));
                    }
                }
            }
            tracing::info!(mapping = %uuid, workers, started = fan_out.started, "workers started");
            out.push(fan_out);
        }
        out
    }
}

/// The key that makes an invocation a continuous chain's successor: `{"RelayHandOver": {}}` next to the
/// configuration (or alone, with the configuration from the environment).
pub const HAND_OVER_KEY: &str = "RelayHandOver";

/// How long before it stops invoking a continuous run starts its successor: the successor has time to start,
/// join the groups and take half the partitions while this run still consumes, so when this run stops
/// invoking and leaves, its partitions move to a member that is already there (no initial rebalance delay,
/// no session timeout).
pub const HAND_OVER_LEAD: Duration = Duration::from_secs(60);

/// Whether this deployment runs continuously (`RELAY_CONTINUOUS=true`): each run polls until its deadline
/// and starts its successor before it leaves.
pub fn continuous_from_env() -> bool {
    std::env::var("RELAY_CONTINUOUS").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Splits an invocation payload into the rest and whether it is a hand-over (a successor's).
pub fn split_hand_over(payload: &Value) -> (Value, bool) {
    match payload {
        Value::Object(map) if map.contains_key(HAND_OVER_KEY) => {
            let mut rest = map.clone();
            rest.remove(HAND_OVER_KEY);
            (if rest.is_empty() { Value::Null } else { Value::Object(rest) }, true)
        }
        other => (other.clone(), false),
    }
}

/// The successor's payload: what this run was given (its configuration, or nothing when it comes from the
/// environment), marked as a hand-over.
pub fn successor_payload(config_payload: &Value) -> Vec<u8> {
    let mut map = match config_payload {
        Value::Object(map) if map.contains_key("Mappings") => map.clone(),
        _ => serde_json::Map::new(),
    };
    map.insert(HAND_OVER_KEY.to_string(), serde_json::json!({}));
    serde_json::to_vec(&Value::Object(map)).expect("a payload serializes")
}

/// When to start the successor: [`HAND_OVER_LEAD`] before `cutoff` (when this run stops invoking), or
/// halfway there for shorter runs.
pub fn hand_over_at(now: std::time::Instant, cutoff: std::time::Instant) -> std::time::Instant {
    let left = cutoff.saturating_duration_since(now);
    cutoff.max(now) - HAND_OVER_LEAD.min(left / 2)
}

/// What the brokers say about one mapping's consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupLiveness {
    /// The group has live members (state neither `Empty` nor `Dead`): a chain or its workers consume it.
    Live,
    /// The group has no live member.
    Idle,
    /// The brokers could not tell (no `DescribeGroups`, as librdkafka's mock cluster and tansu 0.6.0; a
    /// connection or authentication failure): why.
    Unknown(String),
}

/// Asks the brokers whether a mapping's consumer group has live members: the seam [`chain_running`] decides
/// through, so the decision is tested without a broker that answers `DescribeGroups`.
#[async_trait::async_trait]
pub trait GroupProbe: Send + Sync {
    /// The liveness of `mapping`'s consumer group.
    async fn liveness(&self, mapping: &Mapping) -> GroupLiveness;
}

/// The probe on the real brokers: `ListGroups` + `DescribeGroups` (librdkafka's `rd_kafka_list_groups`),
/// with the mapping's own security settings, MSK IAM included (the client answers librdkafka's
/// OAUTHBEARER token requests with a signed MSK IAM token, as the consumer and `check` do).
pub struct KafkaGroupProbe<'a> {
    /// Where the mapping's secrets come from.
    pub secrets: &'a dyn SecretSource,
}

#[async_trait::async_trait]
impl GroupProbe for KafkaGroupProbe<'_> {
    async fn liveness(&self, mapping: &Mapping) -> GroupLiveness {
        let security = match crate::auth::resolve(mapping, self.secrets).await {
            Ok(security) => security,
            Err(error) => return GroupLiveness::Unknown(error.to_string()),
        };
        let mapping = mapping.clone();
        tokio::task::spawn_blocking(move || describe_group(&mapping, &security))
            .await
            .unwrap_or_else(|panic| GroupLiveness::Unknown(format!("group check panicked: {panic}")))
    }
}

fn describe_group(mapping: &Mapping, security: &crate::auth::KafkaSecurity) -> GroupLiveness {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let group = mapping.consumer_group_id();
    let diagnostics = std::sync::Arc::new(crate::auth::ConnectionDiagnostics::new(security, mapping));
    let mut settings = rdkafka::ClientConfig::new();
    settings
        .set("bootstrap.servers", security.bootstrap_servers_for(mapping))
        .set("group.id", &group)
        .set("client.id", "kafka-lambda-relay-chain");
    security.apply(&mut settings);
    let consumer: BaseConsumer<crate::auth::DiagnosingContext> =
        match settings.create_with_context(crate::auth::DiagnosingContext::new(diagnostics.clone())) {
            Ok(consumer) => consumer,
            Err(error) => return GroupLiveness::Unknown(diagnostics.creation_error(&error).to_string()),
        };
    if let Err(error) = crate::auth::msk::set_initial_token(consumer.client(), diagnostics.msk_iam()) {
        return GroupLiveness::Unknown(error.to_string());
    }
    match consumer.fetch_group_list(Some(&group), Duration::from_secs(10)) {
        // An "Empty" or "Dead" group has no live member, whatever members it still lists.
        Ok(groups) => {
            let live = |g: &&rdkafka::groups::GroupInfo| !matches!(g.state(), "Empty" | "Dead") && !g.members().is_empty();
            if groups.groups().iter().any(|g| live(&g)) {
                GroupLiveness::Live
            } else {
                GroupLiveness::Idle
            }
        }
        Err(error) => GroupLiveness::Unknown(error.to_string()),
    }
}

/// Whether a continuous chain (or its workers) is running now, so a scheduled tick must not start a second
/// chain: true when any enabled mapping's group is [`GroupLiveness::Live`]; the scheduled run then does
/// nothing, and otherwise it starts a chain.
///
/// **When unsure** ([`GroupLiveness::Unknown`]: a broker without `DescribeGroups`, as librdkafka's mock
/// cluster and tansu 0.6.0, or an error), that mapping counts as idle and a chain is started: a second chain
/// is then possible, which the group protocol keeps safe (a partition is never in two invocations at once,
/// and the two chains share the partitions like workers) but which costs a second run per tick until one of
/// them ends; a chain must never fail to start because the check could not answer. Each unknown answer is
/// logged as `CHAIN_CHECK_FAILED`.
pub async fn chain_running(config: &RelayConfig, probe: &dyn GroupProbe) -> bool {
    for mapping in config.mappings.iter().filter(|m| m.enabled) {
        match probe.liveness(mapping).await {
            GroupLiveness::Live => return true,
            GroupLiveness::Idle => {}
            GroupLiveness::Unknown(error) => {
                tracing::warn!(error_code = "CHAIN_CHECK_FAILED", mapping = %mapping.uuid(), %error, "cannot tell whether a chain is running: starting one");
            }
        }
    }
    false
}

/// The longest a consumer left without partitions waits between two fresh joins of its group.
pub const REJOIN_MAX: Duration = Duration::from_secs(300);

/// How long a consumer that holds no partition waits before joining its group anew, after `rejoins` fresh
/// joins that brought it nothing: one session timeout plus 2 s, doubled after each such join, at most
/// [`REJOIN_MAX`].
///
/// Why back off: the fresh join recovers from a coordinator that left this member out with no later
/// rebalance (tansu), and one or two joins do that. A member with nothing because the group has more
/// members than partitions (a continuous run's successor or a worker beside enough others) would otherwise
/// leave and join every ~12 s for its whole run: each time two rebalances of the whole group (commits
/// refused with `RebalanceInProgress` meanwhile), and, if the predecessor leaves in the moment between this
/// member's leave and its join, a group that is briefly empty, whose next join waits out
/// `group.initial.rebalance.delay.ms` (3 s) before anyone consumes: a hand-over gap over the 2 s goal.
pub fn rejoin_wait(session_timeout: Duration, rejoins: u32) -> Duration {
    let first = session_timeout + Duration::from_secs(2);
    first.saturating_mul(1u32 << rejoins.min(16)).min(REJOIN_MAX)
}

/// `run --workers N` on a laptop: the same command, without `--workers`, as N-1 more processes of this
/// binary on the same consumer group (their reports come back on their stdout).
pub fn spawn_local_workers(extra: u32) -> std::io::Result<Vec<std::process::Child>> {
    let exe = std::env::current_exe()?;
    let args = without_workers_flag(std::env::args().skip(1));
    (0..extra)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stdin(std::process::Stdio::null())
                .spawn()
        })
        .collect()
}

/// The command line without `--workers N` / `--workers=N`.
pub fn without_workers_flag(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if arg == "--workers" {
            skip_value = true;
        } else if !arg.starts_with("--workers=") {
            out.push(arg);
        }
    }
    out
}

/// Waits for local workers and appends their mappings' reports to `report` (`{"Mappings": [...]}`); false
/// when a worker failed or printed no report.
pub fn collect_local_workers(children: Vec<std::process::Child>, report: &mut Value) -> bool {
    let mut ok = true;
    for child in children {
        let Ok(output) = child.wait_with_output() else {
            ok = false;
            continue;
        };
        ok &= output.status.success();
        match serde_json::from_slice::<Value>(&output.stdout) {
            Ok(Value::Object(mut theirs)) => {
                if let (Some(Value::Array(mine)), Some(Value::Array(more))) =
                    (report.get_mut("Mappings"), theirs.remove("Mappings"))
                {
                    mine.extend(more);
                }
            }
            _ => ok = false,
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provisioned(min: i64, max: i64) -> Option<ProvisionedPollerConfig> {
        Some(ProvisionedPollerConfig { minimum_pollers: Some(min), maximum_pollers: Some(max) })
    }

    #[test]
    fn the_worker_count_follows_the_lag_within_the_limits() {
        let minute = Duration::from_secs(60);
        let twelve_busy = [10_000i64; 12];
        let two_busy = [0, 50_000, 0, 0, 50_000, 0, 0, 0, 0, 0, 0, 0];
        // (lags, rate per worker, provisioned, expected workers)
        type Row<'a> = (&'a [i64], Option<f64>, Option<ProvisionedPollerConfig>, u32, &'a str);
        let table: Vec<Row> = vec![
            (&[0; 12], Some(1000.0), None, 1, "nothing to do: one worker (the coordinator itself)"),
            (&twelve_busy, Some(1000.0), None, 2, "120,000 records at 60,000 per worker-minute"),
            (&twelve_busy, Some(100.0), None, 12, "slow workers: one per partition"),
            (&twelve_busy, Some(10.0), None, 12, "never more than the partitions"),
            (&twelve_busy, None, None, 12, "no rate measured: one per partition with lag"),
            (&two_busy, None, None, 2, "no rate measured: only partitions with lag get a worker"),
            (&two_busy, Some(10.0), None, 2, "a third worker would have no partition with lag"),
            (&twelve_busy, Some(100.0), provisioned(1, 4), 4, "MaximumPollers caps"),
            (&[0; 12], Some(1000.0), provisioned(3, 10), 3, "MinimumPollers is the floor"),
            (&[5; 2], Some(1000.0), provisioned(5, 10), 2, "MinimumPollers above the partitions: one per partition"),
            (&twelve_busy, Some(1000.0), provisioned(1, 200), 2, "provisioned mode decides by the lag too"),
            (&[], Some(1000.0), None, 1, "a topic without partitions: one worker"),
            (&[-3, 0], Some(1000.0), None, 1, "a negative lag (committed past the watermark) is none"),
            (&twelve_busy, Some(0.0), None, 12, "a zero rate is no measurement"),
        ];
        for (lags, rate, provisioned, expected, why) in table {
            let demand = Demand { lags, rate_per_worker: rate, within: minute, provisioned };
            assert_eq!(workers(&demand), expected, "{why}: {demand:?}");
        }
    }

    #[test]
    fn a_consumer_left_without_partitions_rejoins_after_a_session_then_backs_off() {
        let session = Duration::from_secs(10);
        let waits: Vec<u64> = (0..7).map(|n| rejoin_wait(session, n).as_secs()).collect();
        assert_eq!(waits, vec![12, 24, 48, 96, 192, 300, 300]);
        assert_eq!(rejoin_wait(session, u32::MAX), REJOIN_MAX, "no overflow after many joins");
        assert_eq!(rejoin_wait(Duration::from_millis(1500), 0), Duration::from_millis(3500));
    }

    #[test]
    fn local_workers_get_the_command_line_without_the_workers_flag() {
        let args = ["run", "--workers", "3", "--config", "c.json", "--workers=2", "--until-idle"].map(String::from);
        assert_eq!(without_workers_flag(args.into_iter()), ["run", "--config", "c.json", "--until-idle"]);
    }

    #[test]
    fn the_rate_is_remembered_per_mapping_as_a_moving_average() {
        let memory = RateMemory::default();
        assert_eq!(memory.rate("m", Some(500.0)), Some(500.0), "the default before any run");
        memory.observe("m", 6000, Duration::from_secs(6));
        assert_eq!(memory.rate("m", Some(500.0)), Some(1000.0));
        memory.observe("m", 2000, Duration::from_secs(1));
        assert_eq!(memory.rate("m", None), Some(1500.0));
        memory.observe("m", 0, Duration::from_secs(60));
        assert_eq!(memory.rate("m", None), Some(1500.0), "an idle run says nothing about the rate");
        assert_eq!(memory.rate("other", None), None);
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    #[test]
    fn a_successor_payload_keeps_the_configuration_and_is_told_apart() {
        let config = serde_json::json!({"Mappings": [{"FunctionName": "f"}]});
        let successor: Value = serde_json::from_slice(&successor_payload(&config)).unwrap();
        assert_eq!(split_hand_over(&successor), (config.clone(), true));
        let scheduled = serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event"});
        let successor: Value = serde_json::from_slice(&successor_payload(&scheduled)).unwrap();
        assert_eq!(successor, serde_json::json!({"RelayHandOver": {}}), "the configuration comes from the environment");
        assert_eq!(split_hand_over(&successor), (Value::Null, true));
        assert_eq!(split_hand_over(&config), (config, false));
    }

    #[test]
    fn the_successor_starts_a_minute_before_the_run_stops_invoking_or_halfway() {
        let now = std::time::Instant::now();
        assert_eq!(hand_over_at(now, now + Duration::from_secs(900)), now + Duration::from_secs(840));
        assert_eq!(hand_over_at(now, now + Duration::from_secs(60)), now + Duration::from_secs(30));
        assert_eq!(hand_over_at(now, now), now, "no time left: at once");
    }

    #[test]
    fn a_worker_payload_carries_its_mapping_and_is_told_apart_from_the_schedule() {
        let config = RelayConfig::parse_valid(
            &serde_json::json!({"Mappings": [{
                "FunctionName": "target", "Topics": ["orders"], "StartingPosition": "TRIM_HORIZON",
                "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1:9092"]}},
                "ProvisionedPollerConfig": {"MinimumPollers": 1, "MaximumPollers": 3}
            }]})
            .to_string(),
        )
        .unwrap();
        let payload: Value = serde_json::from_slice(&worker_payload(&config.mappings[0], 2)).unwrap();
        let (rest, worker) = split_worker(&payload);
        assert_eq!(worker, Some(2));
        let again = crate::app::resolve_config(&rest).expect("the rest is the mapping's configuration");
        assert_eq!(again.mappings, config.mappings);
        let schedule = serde_json::json!({"source": "aws.events"});
        assert_eq!(split_worker(&schedule), (schedule.clone(), None), "a scheduled event is the coordinator's");
    }

    /// Answers per consumer group, recording which groups were asked.
    struct ScriptedProbe {
        answers: std::collections::HashMap<String, GroupLiveness>,
        asked: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl GroupProbe for ScriptedProbe {
        async fn liveness(&self, mapping: &Mapping) -> GroupLiveness {
            let group = mapping.consumer_group_id();
            self.asked.lock().unwrap().push(group.clone());
            self.answers.get(&group).cloned().unwrap_or(GroupLiveness::Idle)
        }
    }

    fn groups_config(groups: &[(&str, bool)]) -> RelayConfig {
        let mappings: Vec<Value> = groups
            .iter()
            .map(|(group, enabled)| {
                serde_json::json!({
                    "FunctionName": "target", "Topics": [format!("orders-{group}")], "StartingPosition": "TRIM_HORIZON",
                    "Enabled": enabled,
                    "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["127.0.0.1:9092"]}},
                    "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group}
                })
            })
            .collect();
        RelayConfig::parse_valid(&serde_json::json!({ "Mappings": mappings }).to_string()).unwrap()
    }

    /// (liveness of group a, of group b) → whether the scheduled tick sees a running chain (and does nothing).
    #[tokio::test]
    async fn a_tick_skips_only_when_a_group_is_live_and_starts_a_chain_when_unsure() {
        use GroupLiveness::*;
        let unknown = || Unknown("DescribeGroups not supported".into());
        let cases = [
            (Idle, Idle, false),
            (Live, Idle, true),
            (Idle, Live, true),
            (unknown(), Idle, false),
            (unknown(), unknown(), false),
            (unknown(), Live, true),
        ];
        for (a, b, running) in cases {
            let probe = ScriptedProbe {
                answers: [("a".to_string(), a.clone()), ("b".to_string(), b.clone())].into(),
                asked: Mutex::new(Vec::new()),
            };
            let config = groups_config(&[("a", true), ("b", true)]);
            assert_eq!(chain_running(&config, &probe).await, running, "a {a:?}, b {b:?}");
        }
    }

    #[tokio::test]
    async fn a_disabled_mappings_group_is_not_asked_and_does_not_count() {
        let probe = ScriptedProbe {
            answers: [("off".to_string(), GroupLiveness::Live)].into(),
            asked: Mutex::new(Vec::new()),
        };
        let config = groups_config(&[("off", false), ("on", true)]);
        assert!(!chain_running(&config, &probe).await, "only the enabled mapping's idle group counts");
        assert_eq!(*probe.asked.lock().unwrap(), vec!["on".to_string()]);
    }
}
