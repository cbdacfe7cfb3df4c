//! Seeing the call service's replicas through a random balancer.
//!
//! Railway's API has no per-replica load and its balancer picks a replica at random per request,
//! so each interval reads the service's `/` enough times to reach every replica with 99 %
//! probability (`samples_for`; the replica count comes from the API), each over a new
//! connection (a kept-alive one could stay on one replica). The latest answer per `replica` id
//! is kept and shown; a replica not heard from for `FORGET_AFTER` intervals is forgotten. For the
//! decision only this interval's answers count: a replica Railway runs that did not answer now is
//! unseen, and counted as full.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::decide::Load;

/// Intervals after which a replica that never answered again is forgotten.
pub const FORGET_AFTER: u64 = 3;
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_SAMPLES: u32 = 500;
/// Samples in flight at once.
const PARALLEL: usize = 16;

/// How many reads of `/` reach each of `replicas` at least once with 99 % probability, behind a
/// uniformly random balancer: the least k with replicas × (1 - 1/replicas)^k ≤ 1 %.
pub fn samples_for(replicas: u32) -> u32 {
    if replicas <= 1 {
        return 3; // one is enough; three ride out a lost request
    }
    let n = f64::from(replicas);
    let k = ((0.01 / n).ln() / (1.0 - 1.0 / n).ln()).ceil() as u32;
    k.clamp(3, MAX_SAMPLES)
}

/// The fields of a replica's `/` the controller reads.
#[derive(Debug, Clone, Deserialize)]
struct Health {
    replica: String,
    active_calls: u64,
    limit: u64,
    draining: bool,
    #[serde(default)]
    calls_rejected: u64,
}

/// One replica as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub replica: String,
    pub active_calls: u64,
    pub limit: u64,
    pub draining: bool,
    /// Intervals since it last answered (0: this one).
    pub age_intervals: u64,
}

/// One interval's view.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    /// What Railway runs (from its API).
    pub expected: u32,
    pub samples: u32,
    pub answered: u32,
    /// What the decision reads; `None` (null) when no sample answered: a failed observation.
    pub load: Option<Load>,
    pub replicas: Vec<ReplicaView>,
}

pub struct Observer {
    url: String,
    client: awc::Client,
    round: u64,
    /// Latest answer and the round it came in, per replica id.
    seen: BTreeMap<String, (Health, u64)>,
    /// `calls_rejected` per replica at its previous answer: bounces are the difference.
    rejected: HashMap<String, u64>,
}

impl Observer {
    pub fn new(target_url: &str) -> Self {
        Observer {
            url: format!("{}/", target_url.trim_end_matches('/')),
            client: crate::client::builder().timeout(SAMPLE_TIMEOUT).finish(),
            round: 0,
            seen: BTreeMap::new(),
            rejected: HashMap::new(),
        }
    }

    async fn sample(&self) -> Option<Health> {
        let mut resp = self.client.get(&self.url).force_close().send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json::<Health>().limit(64 * 1024).await.ok()
    }

    /// Samples the service for an interval where Railway runs `expected` replicas.
    pub async fn observe(&mut self, expected: u32) -> Observation {
        self.round += 1;
        let samples = samples_for(expected);
        let mut answers = Vec::with_capacity(samples as usize);
        let mut left = samples as usize;
        while left > 0 {
            let batch = left.min(PARALLEL);
            answers.extend(
                futures_util::future::join_all((0..batch).map(|_| self.sample()))
                    .await
                    .into_iter()
                    .flatten(),
            );
            left -= batch;
        }
        let answered = answers.len() as u32;
        for health in answers {
            self.seen
                .insert(health.replica.clone(), (health, self.round));
        }
        let round = self.round;
        self.seen.retain(|_, (_, at)| round - *at < FORGET_AFTER);

        let mut load = Load::default();
        for (id, (health, at)) in &self.seen {
            if *at != round || health.draining {
                continue;
            }
            load.seen += 1;
            load.full += u32::from(health.limit > 0 && health.active_calls >= health.limit);
            load.active_calls += health.active_calls;
            load.limit = load.limit.max(health.limit);
            if let Some(before) = self.rejected.get(id) {
                load.bounced += health.calls_rejected.saturating_sub(*before);
            }
        }
        for (id, (health, at)) in &self.seen {
            if *at == round {
                self.rejected.insert(id.clone(), health.calls_rejected);
            }
        }
        self.rejected.retain(|id, _| self.seen.contains_key(id));
        load.unseen = expected.saturating_sub(load.seen);
        Observation {
            expected,
            samples,
            answered,
            load: (answered > 0).then_some(load),
            replicas: self
                .seen
                .iter()
                .map(|(id, (h, at))| ReplicaView {
                    replica: id.clone(),
                    active_calls: h.active_calls,
                    limit: h.limit,
                    draining: h.draining,
                    age_intervals: round - at,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_samples_to_see_every_replica() {
        assert_eq!(samples_for(1), 3);
        assert_eq!(samples_for(2), 8);
        assert_eq!(samples_for(6), 36);
        assert!(samples_for(50) <= MAX_SAMPLES);
        // The bound holds: the chance of missing some replica is at most 1 %.
        for n in 2..=20u32 {
            let k = samples_for(n);
            let miss = f64::from(n) * (1.0 - 1.0 / f64::from(n)).powi(k as i32);
            assert!(miss <= 0.01, "{n} replicas, {k} samples: {miss}");
        }
    }
}
