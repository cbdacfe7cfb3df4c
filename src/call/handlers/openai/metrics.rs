//! `HANDLER=openai`'s own metrics (`callvisor_agent_*`), registered on the process's registry
//! when the app is the one running ([`crate::metrics::Metrics::new_with`]): a deployment of
//! another app exports none of them.
//!
//! The fields keep the `agent_` of their exported names, so that the runtime reads
//! `self.metrics.agent_barge_ins` as it did when they were fields of the service's `Metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::metrics::{Label, NamedLabels};

/// The voice agent's metrics; clones share the same series.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    /// `HANDLER=openai`: the model's handshake, the wait from the caller's end of speech (or a
    /// response asked for) to the agent's first audio, barge-ins, tool calls (`name`), model
    /// errors (`type`: session_expired, rate_limit, server_error, other).
    pub agent_connect: Histogram,
    pub agent_first_audio: Histogram,
    pub agent_barge_ins: Counter,
    pub agent_tool_calls: Family<NamedLabels<1>, Counter>,
    /// The agent's own tools' requests to the business, by tool and outcome, and their time.
    pub agent_tool_requests: Family<NamedLabels<2>, Counter>,
    pub agent_tool_seconds: Histogram,
    /// `AGENT_CONFIG_URL`'s answers, by outcome (ok, error, timeout, malformed).
    pub agent_config: Family<Label, Counter>,
    pub agent_model_errors: Family<Label, Counter>,
}

impl AgentMetrics {
    /// Registers every agent metric on `registry` (the service's, prefixed `callvisor`).
    pub fn register(registry: &mut Registry) -> Self {
        let agent_connect = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let agent_first_audio = Histogram::new(exponential_buckets(0.01, 1.5, 16));
        let agent_barge_ins = Counter::default();
        let agent_tool_calls = Family::default();
        let agent_tool_requests = Family::default();
        let agent_config = Family::default();
        let agent_tool_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let agent_model_errors = Family::default();
        registry.register(
            "agent_connect_seconds",
            "Voice agent: the model's WebSocket handshake",
            agent_connect.clone(),
        );
        registry.register(
            "agent_first_audio_seconds",
            "Voice agent: from the caller's end of speech (or a response asked for) to the first agent audio",
            agent_first_audio.clone(),
        );
        registry.register(
            "agent_barge_ins",
            "Voice agent: callers who talked over the agent",
            agent_barge_ins.clone(),
        );
        registry.register(
            "agent_tool_calls",
            "Voice agent: tool calls, by name",
            agent_tool_calls.clone(),
        );
        registry.register(
            "agent_tool_requests",
            "Voice agent: its own tools' requests to the business, by name and outcome (ok, error, timeout)",
            agent_tool_requests.clone(),
        );
        registry.register(
            "agent_tool_seconds",
            "Voice agent: how long its own tools' requests took",
            agent_tool_seconds.clone(),
        );
        registry.register(
            "agent_config",
            "Voice agent: AGENT_CONFIG_URL's answers, by outcome (ok, error, timeout, malformed)",
            agent_config.clone(),
        );
        registry.register(
            "agent_model_errors",
            "Voice agent: error events from the model, by type",
            agent_model_errors.clone(),
        );
        AgentMetrics {
            agent_connect,
            agent_first_audio,
            agent_barge_ins,
            agent_tool_calls,
            agent_tool_requests,
            agent_tool_seconds,
            agent_config,
            agent_model_errors,
        }
    }
}
