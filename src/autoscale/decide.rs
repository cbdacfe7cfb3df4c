//! The decision rule, pure: what one interval's observation asks of the replica count.
//!
//! `desired = clamp(ceil(load / (limit × target_utilization)), MIN, MAX)`, where `load` is the
//! live calls of the non-draining replicas seen plus, for each replica Railway runs that no
//! sample reached, a full replica's worth (`limit`). Scale out at once (calls bounced since the
//! last interval add one while at least half the replicas seen are full: behind a random
//! balancer one full replica among free ones keeps bouncing calls that the next try places, and
//! more replicas would not empty it); scale in one replica at a time, only when the
//! utilization is below `scale_in_below`, the cooldown has passed since the last change and every
//! replica was seen: a failed or partial observation never scales in.

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    pub target_utilization: f64,
    pub scale_in_below: f64,
    pub cooldown: Duration,
}

/// What an interval saw of the call service.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Load {
    /// Live calls on the non-draining replicas that answered.
    pub active_calls: u64,
    /// Per-replica `LIMIT_CONCURRENCY` (the largest reported).
    pub limit: u64,
    /// Replicas that answered / that Railway runs and no sample reached.
    pub seen: u32,
    pub unseen: u32,
    /// Calls refused by full (non-draining) replicas since the last interval: bounced callers.
    pub bounced: u64,
    /// Of the replicas seen, those at their limit.
    pub full: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Hold,
    ScaleOut,
    ScaleIn,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub from: u32,
    pub to: u32,
    /// What the rule computed before the one-step and cooldown limits.
    pub desired: u32,
    pub reason: String,
}

impl Decision {
    fn hold(current: u32, desired: u32, reason: String) -> Self {
        Decision {
            action: Action::Hold,
            from: current,
            to: current,
            desired,
            reason,
        }
    }
}

/// `observation`: `None` when no sample answered (the service or the network is down).
/// `last_change`: when the count last changed (by this controller).
pub fn decide(
    policy: &Policy,
    current: u32,
    observation: Option<&Load>,
    last_change: Option<Instant>,
    now: Instant,
) -> Decision {
    let Some(load) = observation.filter(|l| l.seen > 0 && l.limit > 0) else {
        if current < policy.min {
            return Decision {
                action: Action::ScaleOut,
                from: current,
                to: policy.min,
                desired: policy.min,
                reason: format!("below MIN_REPLICAS={}", policy.min),
            };
        }
        return Decision::hold(
            current,
            current,
            "no replica answered: holding (a failed observation never scales in)".into(),
        );
    };
    let calls = load.active_calls + u64::from(load.unseen) * load.limit;
    let per_replica = load.limit as f64 * policy.target_utilization;
    let needed = (calls as f64 / per_replica).ceil() as u32;
    let mut desired = needed.clamp(policy.min, policy.max);
    let mut why = format!(
        "{calls} calls ({} live on {} seen, {} unseen counted full at {}) need {needed} at {:.0}% of {}",
        load.active_calls,
        load.seen,
        load.unseen,
        load.limit,
        policy.target_utilization * 100.0,
        load.limit
    );
    if load.bounced > 0 && desired <= current && current < policy.max {
        if load.full * 2 >= load.seen {
            desired = current + 1;
            why = format!(
                "{why}; {} call(s) bounced, {} of {} replicas full: one more",
                load.bounced, load.full, load.seen
            );
        } else {
            why = format!(
                "{why}; {} call(s) bounced by {} full replica(s) of {}: retries find room",
                load.bounced, load.full, load.seen
            );
        }
    }
    let utilization = calls as f64 / (f64::from(current.max(1)) * load.limit as f64);
    if current > policy.max {
        return Decision {
            action: Action::ScaleIn,
            from: current,
            to: current - 1,
            desired,
            reason: format!("above MAX_REPLICAS={}", policy.max),
        };
    }
    if desired > current {
        return Decision {
            action: Action::ScaleOut,
            from: current,
            to: desired,
            desired,
            reason: why,
        };
    }
    if desired == current {
        return Decision::hold(current, desired, why);
    }
    // desired < current: one step in, if it is safe.
    if load.unseen > 0 {
        return Decision::hold(
            current,
            desired,
            format!(
                "{why}; {} replica(s) unseen: a partial observation never scales in",
                load.unseen
            ),
        );
    }
    if utilization >= policy.scale_in_below {
        return Decision::hold(
            current,
            desired,
            format!(
                "{why}; utilization {:.0}% is not below {:.0}%",
                utilization * 100.0,
                policy.scale_in_below * 100.0
            ),
        );
    }
    if let Some(since) = last_change.map(|t| now.saturating_duration_since(t)) {
        if since < policy.cooldown {
            return Decision::hold(
                current,
                desired,
                format!(
                    "{why}; cooldown: {}s of {}s since the last change",
                    since.as_secs(),
                    policy.cooldown.as_secs()
                ),
            );
        }
    }
    Decision {
        action: Action::ScaleIn,
        from: current,
        to: current - 1,
        desired,
        reason: format!(
            "{why}; utilization {:.0}% below {:.0}%: one replica in",
            utilization * 100.0,
            policy.scale_in_below * 100.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        min: 1,
        max: 6,
        target_utilization: 0.5,
        scale_in_below: 0.25,
        cooldown: Duration::from_secs(300),
    };

    fn load(active_calls: u64, seen: u32, unseen: u32) -> Load {
        Load {
            active_calls,
            limit: 10,
            seen,
            unseen,
            bounced: 0,
            full: 0,
        }
    }

    fn run(current: u32, l: Option<Load>, since_change: Option<u64>) -> Decision {
        let now = Instant::now() + Duration::from_secs(10_000);
        let last = since_change.map(|s| now - Duration::from_secs(s));
        decide(&POLICY, current, l.as_ref(), last, now)
    }

    #[test]
    fn scales_out_at_once_to_what_the_load_needs() {
        // 23 calls at 5 per replica (10 × 0.5): 5 replicas, straight from 1.
        let d = run(1, Some(load(23, 1, 0)), Some(0));
        assert_eq!((d.action, d.to, d.desired), (Action::ScaleOut, 5, 5));
        // Exactly at target: no change.
        assert_eq!(run(2, Some(load(10, 2, 0)), None).action, Action::Hold);
    }

    #[test]
    fn clamps_to_min_and_max() {
        let d = run(3, Some(load(500, 3, 0)), None);
        assert_eq!((d.action, d.to, d.desired), (Action::ScaleOut, 6, 6));
        assert_eq!(run(6, Some(load(500, 6, 0)), None).action, Action::Hold);
        // No calls: the count goes to MIN, never below.
        let d = run(1, Some(load(0, 1, 0)), None);
        assert_eq!((d.action, d.desired), (Action::Hold, 1));
        // Above MAX (lowered by hand): one step in.
        assert_eq!(run(8, Some(load(0, 8, 0)), Some(0)).to, 7);
        // Below MIN, even blind: up to MIN.
        assert_eq!(run(0, None, None).to, 1);
    }

    #[test]
    fn unseen_replicas_count_as_full() {
        // 2 seen with 4 calls, 1 unseen counted as 10: 14 calls need 3 replicas.
        let d = run(3, Some(load(4, 2, 1)), None);
        assert_eq!((d.action, d.desired), (Action::Hold, 3));
        // The same with 5 unseen of 6: 54 calls, MAX 6.
        let d = run(6, Some(load(0, 1, 5)), None);
        assert_eq!(d.desired, 6);
        assert!(d.reason.contains("5 unseen counted full"), "{}", d.reason);
    }

    #[test]
    fn a_failed_or_partial_observation_never_scales_in() {
        let d = run(4, None, None);
        assert_eq!((d.action, d.to), (Action::Hold, 4));
        // A replica answered 0 calls but another was not seen: 10 calls counted, needs 2 of
        // 4, yet no scale-in.
        let d = run(4, Some(load(0, 3, 1)), None);
        assert_eq!((d.action, d.desired), (Action::Hold, 2));
        assert!(d.reason.contains("partial observation"), "{}", d.reason);
        // A sample that reports limit 0 or no replica counts as failed.
        let mut zero = load(0, 2, 0);
        zero.limit = 0;
        assert_eq!(run(4, Some(zero), None).action, Action::Hold);
    }

    #[test]
    fn scales_in_one_step_below_the_threshold_after_the_cooldown() {
        // 4 replicas, 5 calls: 12.5% < 25%, cooldown over: one step.
        let d = run(4, Some(load(5, 4, 0)), Some(301));
        assert_eq!((d.action, d.to, d.desired), (Action::ScaleIn, 3, 1));
        // Within the cooldown: hold.
        let d = run(4, Some(load(5, 4, 0)), Some(120));
        assert_eq!(d.action, Action::Hold);
        assert!(d.reason.contains("cooldown: 120s of 300s"), "{}", d.reason);
        // Never changed by this controller: no cooldown to wait for.
        assert_eq!(run(4, Some(load(5, 4, 0)), None).action, Action::ScaleIn);
    }

    #[test]
    fn hysteresis_keeps_a_steady_load_from_flapping() {
        // 3 replicas, 9 calls: needs 2 at target (desired 2 < 3) but 30% is above the 25%
        // scale-in threshold: hold, so 3 does not become 2 and back.
        let d = run(3, Some(load(9, 3, 0)), Some(10_000));
        assert_eq!((d.action, d.desired), (Action::Hold, 2));
        // After a scale-in the same load never asks to scale back out: 7 calls, 4 → 3.
        let d = run(4, Some(load(7, 4, 0)), Some(10_000));
        assert_eq!((d.action, d.to), (Action::ScaleIn, 3));
        assert_ne!(
            run(3, Some(load(7, 3, 0)), Some(0)).action,
            Action::ScaleOut
        );
    }

    #[test]
    fn bounced_calls_add_one_replica_while_half_the_replicas_are_full() {
        let mut l = load(10, 2, 0);
        l.bounced = 3;
        l.full = 1;
        let d = run(2, Some(l), Some(0));
        assert_eq!((d.action, d.to), (Action::ScaleOut, 3));
        assert!(
            d.reason.contains("3 call(s) bounced, 1 of 2 replicas full"),
            "{}",
            d.reason
        );
        // One full replica of 4, the others with room: a retry finds room, no step.
        let mut l = load(18, 4, 0);
        (l.bounced, l.full) = (2, 1);
        let d = run(4, Some(l), Some(0));
        assert_eq!(d.action, Action::Hold);
        assert!(d.reason.contains("retries find room"), "{}", d.reason);
        // Not past MAX.
        let mut l = load(30, 6, 0);
        (l.bounced, l.full) = (3, 6);
        assert_eq!(run(6, Some(l), Some(0)).action, Action::Hold);
    }
}
