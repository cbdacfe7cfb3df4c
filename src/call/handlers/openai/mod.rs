//! `HANDLER=openai`: a phone voice agent on OpenAI's voice APIs, one engine per agent
//! (`engine` in the agents file, `AGENT_ENGINE` without one):
//!
//! - `realtime.rs`: the Realtime API (the default; OpenAI now files it as legacy, and it still
//!   gets new models): the agent drives the model's responses, truncates what the caller did not
//!   hear, calls tools itself;
//! - `live.rs`: GPT-Live, the current voice API: full duplex, the model takes its own turns and
//!   handles barge-in, tools run on a delegated Responses backend.
//!
//! Both sit behind the same app contract and the same agent settings. What they share is here
//! and in `call_setup.rs` (which agent, the per-call configuration, placeholders, the caller's
//! audio before the model is ready, the apology) and `tools.rs` (the tools, their requests to
//! the business, their records). `agents.rs` is the agents file, `settings.rs` the app's
//! variables, `metrics.rs` its metrics.

pub mod agents;
pub mod call_setup;
pub mod live;
pub mod metrics;
pub mod realtime;
pub mod settings;
pub mod tools;

use std::sync::Arc;

use self::agents::Engine;
use self::call_setup::{choose_agent, PerCall};
use self::live::LiveAgent;
use self::metrics::AgentMetrics;
use self::realtime::RealtimeAgent;
use self::settings::AgentConfig;
use crate::call::handler::{
    Call, CallEnd, CallHandler, HandlerError, HttpAnswer, MediaChunk, UpstreamEvent,
};
use crate::call::handlers::openai::call_setup::CONFIG_REQUEST;
use crate::twilio::messages::Start;
use crate::twilio::rest::{CallUpdate, ControlOutcome};

pub use self::call_setup::{APOLOGY, EARLY_AUDIO_MS};
pub use self::realtime::MAX_PENDING_MARKS;
pub use self::tools::MAX_TOOLS_IN_FLIGHT;

/// One call's agent: at `start` it picks the agent answering (and so its engine), then hands
/// every event to that engine.
pub struct OpenAiAgent {
    config: Arc<AgentConfig>,
    metrics: AgentMetrics,
    engine: Option<Box<dyn CallHandler>>,
    /// An outbound call whose callee is not known to be a person: the model hears nothing (a
    /// voicemail's greeting, or "hello?", is not for it to answer) until `on_answered_by` says
    /// it is.
    held: bool,
}

impl OpenAiAgent {
    pub fn new(config: Arc<AgentConfig>, metrics: AgentMetrics) -> Self {
        OpenAiAgent {
            config,
            metrics,
            engine: None,
            held: false,
        }
    }

    fn engine(&mut self) -> Option<&mut (dyn CallHandler + 'static)> {
        self.engine.as_deref_mut()
    }
}

impl CallHandler for OpenAiAgent {
    fn on_start(&mut self, start: &Start, call: &mut Call<'_>) -> Result<(), HandlerError> {
        let agent = choose_agent(&self.config, start);
        log::info!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
            "agent: {} answers ({} engine)", agent.name, agent.engine.as_str());
        if let Some(record) = call.record() {
            record.agent = Some(agent.name.clone());
            record.model = Some(agent.model.clone());
            record.engine = Some(agent.engine.as_str());
        }
        let per_call = PerCall::start(&self.config, &agent, start, call);
        self.held = per_call.hold;
        let (config, metrics) = (self.config.clone(), self.metrics.clone());
        let engine: Box<dyn CallHandler> = match agent.engine {
            Engine::Realtime => Box::new(RealtimeAgent::new(config, metrics, agent, per_call)),
            Engine::Live => Box::new(LiveAgent::new(config, metrics, agent, per_call)),
        };
        self.engine.insert(engine).on_start(start, call)
    }

    fn on_media(
        &mut self,
        media: &MediaChunk<'_>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        if self.held {
            return Ok(());
        }
        self.engine().map_or(Ok(()), |e| e.on_media(media, call))
    }

    fn on_answered_by(
        &mut self,
        answered_by: Option<&str>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        self.held &= !answered_by.is_none_or(crate::outbound::is_person);
        self.engine()
            .map_or(Ok(()), |e| e.on_answered_by(answered_by, call))
    }

    fn on_dtmf(&mut self, digit: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.engine().map_or(Ok(()), |e| e.on_dtmf(digit, call))
    }

    fn on_mark(&mut self, name: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.engine().map_or(Ok(()), |e| e.on_mark(name, call))
    }

    fn on_upstream(
        &mut self,
        event: UpstreamEvent,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        self.engine().map_or(Ok(()), |e| e.on_upstream(event, call))
    }

    fn on_control(
        &mut self,
        update: &CallUpdate,
        outcome: &ControlOutcome,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        self.engine()
            .map_or(Ok(()), |e| e.on_control(update, outcome, call))
    }

    fn on_http(
        &mut self,
        id: u64,
        answer: HttpAnswer,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        debug_assert!(self.engine.is_some() || id != CONFIG_REQUEST);
        self.engine()
            .map_or(Ok(()), |e| e.on_http(id, answer, call))
    }

    fn on_timer(&mut self, id: u64, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.engine().map_or(Ok(()), |e| e.on_timer(id, call))
    }

    fn on_end(&mut self, end: &CallEnd, call: &mut Call<'_>) {
        if let Some(engine) = self.engine() {
            engine.on_end(end, call);
        }
    }
}
