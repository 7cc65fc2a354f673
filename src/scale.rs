//! How many workers a mapping's scheduled run starts: AWS's pollers, as relay processes (Lambda
//! invocations) in the mapping's consumer group. Kafka's group protocol (cooperative-sticky) shares the
//! partitions out among them; nothing here assigns partitions.
//!
//! [`workers`] is the pure decision (lag, partitions, measured rate, limits → workers). [`RateMemory`] keeps
//! the records per second one worker reached, for the next run's decision.

use std::sync::Mutex;
use std::time::Duration;

use crate::config::ProvisionedPollerConfig;

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
        let table: Vec<(&[i64], Option<f64>, Option<ProvisionedPollerConfig>, u32, &str)> = vec![
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
