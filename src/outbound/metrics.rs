//! Outbound calls' metrics (`callvisor_outbound_*`), registered with the service's own
//! ([`crate::metrics::Metrics`]): a replica may get an outbound call's callbacks or stream
//! whether or not it takes `POST /calls` itself.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::metrics::{Label, NamedLabels};

#[derive(Clone, Debug)]
pub struct OutboundMetrics {
    /// `POST /calls` that reached Twilio, by outcome: `created`, `rate_limited` (429 until
    /// `OUTBOUND_TIMEOUT_SECS`), `failed_NNxxx` (Twilio's error code class, e.g. `failed_21xxx`
    /// for an invalid number), `failed_unknown` (no answer from Twilio, or not its JSON).
    pub calls: Family<NamedLabels<1>, Counter>,
    /// Twilio's 429s retried.
    pub rate_limited_retries: Counter,
    /// `/call-status` callbacks by `CallStatus` (`initiated`, `ringing`, `in-progress`,
    /// `completed`, `busy`, `no-answer`, `failed`, `canceled`; anything else `other`).
    pub status: Family<Label, Counter>,
    /// `/amd-status` callbacks by `AnsweredBy` (`human`, `machine_start`, `machine_end_beep`,
    /// `machine_end_silence`, `machine_end_other`, `fax`, `unknown`; anything else `other`).
    pub answered_by: Family<Label, Counter>,
    /// From placing a call to Twilio's `answered` callback.
    pub time_to_answer: Histogram,
    /// Streams of outbound calls with detection: whether the answer was known before
    /// `AMD_GREETING_WAIT_MS` (`known`) or the agent greeted without it (`timed_out`).
    pub amd_wait: Family<Label, Counter>,
}

impl OutboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = OutboundMetrics {
            calls: Family::default(),
            rate_limited_retries: Counter::default(),
            status: Family::default(),
            answered_by: Family::default(),
            // 0.5 s .. ~2 min: ringing time.
            time_to_answer: Histogram::new(exponential_buckets(0.5, 1.5, 14)),
            amd_wait: Family::default(),
        };
        registry.register(
            "outbound_calls",
            "POST /calls: calls Twilio was asked to place, by outcome (created, rate_limited, failed_NNxxx by Twilio's error code class, failed_unknown)",
            metrics.calls.clone(),
        );
        registry.register(
            "outbound_rate_limited_retries",
            "POST /calls: Twilio 429 answers retried",
            metrics.rate_limited_retries.clone(),
        );
        registry.register(
            "outbound_call_status",
            "Outbound calls' status callbacks, by CallStatus",
            metrics.status.clone(),
        );
        registry.register(
            "outbound_answered_by",
            "Outbound calls' answering-machine detection results, by AnsweredBy",
            metrics.answered_by.clone(),
        );
        registry.register(
            "outbound_time_to_answer_seconds",
            "Outbound calls: from placing the call to its answer",
            metrics.time_to_answer.clone(),
        );
        registry.register(
            "outbound_amd_wait",
            "Outbound streams with detection: the answer known before AMD_GREETING_WAIT_MS (known) or not (timed_out)",
            metrics.amd_wait.clone(),
        );
        metrics
    }

    /// `outbound_calls_total`'s outcome for a Twilio error code: its class (`21211` ->
    /// `failed_21xxx`).
    pub fn failure_outcome(code: Option<u64>) -> String {
        match code {
            Some(code) if (10_000..100_000).contains(&code) => {
                format!("failed_{}xxx", code / 1000)
            }
            _ => "failed_unknown".into(),
        }
    }

    pub fn call(&self, outcome: String) {
        self.calls.get_or_create(&[("outcome", outcome)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_code_class() {
        assert_eq!(
            OutboundMetrics::failure_outcome(Some(21211)),
            "failed_21xxx"
        );
        assert_eq!(
            OutboundMetrics::failure_outcome(Some(20003)),
            "failed_20xxx"
        );
        assert_eq!(
            OutboundMetrics::failure_outcome(Some(404)),
            "failed_unknown"
        );
        assert_eq!(OutboundMetrics::failure_outcome(None), "failed_unknown");
    }
}
