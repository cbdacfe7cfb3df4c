//! The Realtime engine (`engine = "realtime"`, the default): the agent on OpenAI's Realtime API (GA).
//!
//! Per call: one Realtime WebSocket (`Authorization: Bearer`, no `OpenAI-Beta` header), configured
//! with `session.update` for 8 kHz mu-law both ways (`audio/pcmu`: Twilio's own format, so audio
//! is never transcoded). Caller audio goes out as `input_audio_buffer.append` with Twilio's base64
//! unchanged (what the caller says before the model's socket opens waits, the latest
//! [`EARLY_AUDIO_MS`], and follows `session.update` in order); each
//! `response.output_audio.delta` goes to Twilio as `media`, followed by a `mark`, so the agent
//! knows exactly how much of each of its answers the caller has heard.
//!
//! The agent mirrors the model's state, under the API's rules:
//! - **One response at a time.** A response lives from `response.created` to `response.done`;
//!   `response.create` is sent only when none is active (or asked for): a key press or a tool's
//!   answer adds its item at once and the response waits for `response.done`. A
//!   `conversation_already_has_active_response` error (the server started one on its own at the
//!   same moment) puts the request back in line.
//! - **Errors are per event.** An `error` ends the call only when the session is over
//!   (`session_expired`, the key or the quota refused); any other is logged at WARN with its
//!   `code` and `param`, counted, and the call goes on. The socket closing ends the call.
//! - **Barge-in.** On `input_audio_buffer.speech_started` with agent audio still unplayed, Twilio
//!   gets `clear` and the model `conversation.item.truncate` for the item playing (the oldest one
//!   with unacknowledged audio) at `audio_end_ms` = the bytes of it whose marks Twilio returned,
//!   divided by 8 (mu-law: 8 bytes a millisecond): what the caller heard. The server cancels its
//!   response itself; deltas of it still in flight are dropped, never played. Marks that are not
//!   pending (Twilio returns cleared marks after `clear`) are ignored.
//!
//! Tools: `end_call` (always): the goodbye plays out (the response is done and every mark sent
//! has returned), then the call is hung up through Twilio's REST API. `transfer_call` (with
//! `AGENT_TRANSFER_NUMBER`): `<Dial>`. Failures: the model unreachable at start, rate limited or
//! failing → 1011 (Twilio retries on another replica); the key refused (401/403) → the apology at
//! once (every replica would get the same answer); the model's session ending mid-call → the
//! caller hears the apology (`<Say>` then `<Hangup/>`, REST) instead of silence. A call that comes
//! back after a hand-off (`attempt` > 1) is not greeted again.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::agents::Agent;
use super::call_setup::{
    apologize, handshake_failed, EarlyAudio, PerCall, BYTES_PER_MS, CONFIG_REQUEST,
};
use super::metrics::AgentMetrics;
use super::settings::AgentConfig;
use super::tools::{function_tools, ToolAction, Tools};
use crate::call::handler::{
    decoded_len, Call, CallEnd, CallHandler, HandlerError, HttpAnswer, MediaChunk, UpstreamEvent,
    UpstreamRequest,
};
use crate::records::Role;
use crate::twilio::messages::Start;

/// Marks awaiting Twilio's echo at most; past it, audio goes out unmarked (that much unplayed
/// audio is 50 s of 100 ms deltas) and what was heard of it counts only from later marks.
pub const MAX_PENDING_MARKS: usize = 512;

/// Logs about this call with its CallSid and StreamSid as structured fields.
macro_rules! agent_log {
    ($call:expr, $level:ident, $($fmt:tt)+) => {
        log::log!(log::Level::$level, call_sid = $call.call_sid(), stream_sid = $call.stream_sid(); $($fmt)+)
    };
}

/// One chunk of agent audio sent to Twilio, and the mark sent after it.
struct PendingMark {
    name: String,
    item_id: String,
    /// Bytes of `item_id` heard once this mark returns.
    item_end: u64,
}

/// An assistant item whose audio went to Twilio.
struct PlayedItem {
    id: String,
    /// Bytes of its audio sent to Twilio, and the part of them whose marks returned.
    sent: u64,
    heard: u64,
}

/// The model's response lifecycle, as far as the rule "one response at a time" needs it.
#[derive(Default)]
struct Responses {
    /// A response is in progress (`response.created` … `response.done`), or was asked for and
    /// has not been created yet.
    active: bool,
    /// The id of the response in progress, once created.
    id: Option<String>,
    /// A `response.create` waits for the active response to finish.
    wanted: bool,
}

/// The agent on the Realtime API, for one call.
pub struct RealtimeAgent {
    config: Arc<AgentConfig>,
    /// The agent answering this call.
    agent: Arc<Agent>,
    /// What this call runs, before placeholders: the agent's, or `AGENT_CONFIG_URL`'s answer.
    per_call: PerCall,
    /// The model's socket is open (the session may still wait for the per-call config).
    socket_open: bool,
    metrics: AgentMetrics,
    /// When the model's socket was asked for (connect time).
    connecting: Option<Instant>,
    /// The model's session is configured (`session.update` sent): caller audio goes to it.
    open: bool,
    /// The instructions sent, placeholders filled.
    instructions: String,
    /// Caller audio that arrived before the model's session was configured.
    early: EarlyAudio,
    responses: Responses,
    /// The agent's own tools' requests (to the business).
    tools: Tools,
    /// A response the caller talked over: its deltas still in flight are dropped.
    interrupted: Option<String>,
    /// Items with audio at Twilio, oldest first; marks sent and not yet returned, oldest first.
    items: VecDeque<PlayedItem>,
    marks: VecDeque<PendingMark>,
    mark_seq: u64,
    /// `end_call` was called: hang up once the response is done and its audio has played.
    ending: bool,
    /// For the first-audio latency log line.
    response_asked: Option<Instant>,
    barge_ins: u64,
    dropped_deltas: u64,
    /// For the call record (only kept when records are on): the caller's turns being heard
    /// (item, start ms, end ms), and the agent's turns not yet final (item, text, start ms).
    caller_turns: VecDeque<(String, u64, Option<u64>)>,
    agent_turns: VecDeque<AgentTurn>,
}

/// An agent turn of the transcript until its transcript is final.
struct AgentTurn {
    item_id: String,
    text: String,
    /// When its first audio went to Twilio (ms from the stream's start), and how much of it.
    start_ms: Option<u64>,
    sent_ms: u64,
}

/// Turns the record follows at once (older ones are written as they are): a bound on the
/// agent's memory whatever the model sends.
const MAX_OPEN_TURNS: usize = 16;

impl RealtimeAgent {
    pub fn new(
        config: Arc<AgentConfig>,
        metrics: AgentMetrics,
        agent: Arc<Agent>,
        per_call: PerCall,
    ) -> Self {
        RealtimeAgent {
            instructions: String::new(),
            agent,
            per_call,
            socket_open: false,
            config,
            metrics,
            connecting: None,
            open: false,
            early: EarlyAudio::default(),
            responses: Responses::default(),
            tools: Tools::default(),
            interrupted: None,
            items: VecDeque::new(),
            marks: VecDeque::new(),
            mark_seq: 0,
            ending: false,
            response_asked: None,
            barge_ins: 0,
            dropped_deltas: 0,
            caller_turns: VecDeque::new(),
            agent_turns: VecDeque::new(),
        }
    }

    fn send(&self, call: &mut Call<'_>, event: Value) {
        call.send_upstream_text(event.to_string());
    }

    fn append_audio(call: &mut Call<'_>, payload_base64: &str) {
        call.send_upstream_text(format!(
            r#"{{"type":"input_audio_buffer.append","audio":"{payload_base64}"}}"#
        ));
    }

    fn session_update(&self) -> Value {
        let agent = &self.agent;
        let mut tools = function_tools(agent);
        for server in &agent.mcp {
            let mut mcp = json!({"type": "mcp", "server_label": server.server_label,
                "server_url": server.server_url, "require_approval": server.require_approval.as_str()});
            if let Some(allowed) = &server.allowed_tools {
                mcp["allowed_tools"] = json!(allowed);
            }
            if !server.headers.is_empty() {
                let headers: serde_json::Map<String, Value> = server
                    .headers
                    .iter()
                    .map(|h| (h.name.clone(), Value::from(h.value.expose_secret())))
                    .collect();
                mcp["headers"] = Value::Object(headers);
            }
            tools.push(mcp);
        }
        let mut input = json!({"format": {"type": "audio/pcmu"},
                               "turn_detection": agent.turn_detection.to_json()});
        if let Some(noise) = agent.noise_reduction {
            input["noise_reduction"] = json!({"type": noise.as_str()});
        }
        if let Some(model) = &self.config.transcription {
            input["transcription"] = json!({"model": model});
        }
        json!({
            "type": "session.update",
            "session": {
                "type": "realtime",
                "model": agent.model,
                "output_modalities": ["audio"],
                "audio": {
                    "input": input,
                    "output": {"format": {"type": "audio/pcmu"}, "voice": self.per_call.voice},
                },
                "instructions": self.instructions,
                "tools": tools,
            }
        })
    }

    /// Asks for a response now, or after the active one is done.
    fn request_response(&mut self, call: &mut Call<'_>) {
        // After a response that called tools, the next waits for every tool's output.
        if self.responses.active || !self.tools.is_idle() {
            self.responses.wanted = true;
            return;
        }
        self.responses.active = true;
        self.responses.id = None;
        self.send(call, json!({"type": "response.create"}));
        self.response_asked = Some(Instant::now());
    }

    /// A user message (text) in the conversation, and a response to it.
    fn user_text(&mut self, call: &mut Call<'_>, text: &str) {
        self.send(
            call,
            json!({
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": text}]},
            }),
        );
        self.request_response(call);
    }

    fn tool_output(&mut self, call: &mut Call<'_>, item: &Value, output: &str) {
        self.send(
            call,
            json!({"type": "conversation.item.create",
                   "item": {"type": "function_call_output", "call_id": item["call_id"], "output": output}}),
        );
        self.request_response(call);
    }

    fn on_model_event(&mut self, event: Value, call: &mut Call<'_>) {
        match event["type"].as_str().unwrap_or("") {
            "response.created" => {
                self.responses.active = true;
                self.responses.id = event["response"]["id"].as_str().map(str::to_string);
            }
            "response.done" => {
                if let Some(record) = call.record() {
                    let usage = &event["response"]["usage"];
                    if usage.is_object() {
                        record.usage.get_or_insert_default().add(usage);
                    }
                }
                self.response_done(call)
            }
            "response.output_audio.delta" => self.on_delta(&event, call),
            "input_audio_buffer.speech_stopped" => {
                self.response_asked = Some(Instant::now());
                self.caller_stopped(&event, call);
            }
            "input_audio_buffer.speech_started" => {
                self.caller_started(&event, call);
                self.barge_in(call)
            }
            "conversation.item.input_audio_transcription.completed" => {
                self.caller_transcribed(&event, call)
            }
            "response.output_audio_transcript.delta" => {
                if let (Some(item), Some(delta)) =
                    (event["item_id"].as_str(), event["delta"].as_str())
                {
                    if call.record().is_some() && !self.was_interrupted(&event) {
                        self.agent_turn(item, call).text.push_str(delta);
                    }
                }
            }
            "response.output_audio_transcript.done" => {
                if let (Some(item), Some(text)) =
                    (event["item_id"].as_str(), event["transcript"].as_str())
                {
                    if call.record().is_some() && !self.was_interrupted(&event) {
                        let turn = self.agent_turn(item, call);
                        turn.text = text.to_string();
                        self.write_agent_turn(item, call);
                    }
                }
            }
            "response.output_item.done" => {
                let item = &event["item"];
                if item["type"] == "function_call" {
                    self.on_tool_call(item, call);
                }
            }
            "error" => self.on_error(&event["error"], call),
            _ => {}
        }
    }

    fn response_done(&mut self, call: &mut Call<'_>) {
        self.responses.active = false;
        self.responses.id = None;
        if self.ending {
            return self.hang_up_when_played(call);
        }
        if self.tools.is_idle() && std::mem::take(&mut self.responses.wanted) {
            self.request_response(call);
        }
    }

    fn on_delta(&mut self, event: &Value, call: &mut Call<'_>) {
        let (Some(delta), Some(item_id)) = (event["delta"].as_str(), event["item_id"].as_str())
        else {
            return;
        };
        if self.interrupted.is_some()
            && event["response_id"].as_str() == self.interrupted.as_deref()
        {
            // Cut off by the caller: already cancelled, never to be heard.
            self.dropped_deltas += 1;
            return;
        }
        if let Some(asked) = self.response_asked.take() {
            let waited = asked.elapsed();
            self.metrics.agent_first_audio.observe(waited.as_secs_f64());
            agent_log!(
                call,
                Info,
                "agent: first audio {} ms after the caller stopped (or the response was asked for)",
                waited.as_millis()
            );
        }
        let bytes = decoded_len(delta);
        let item = match self.items.back_mut() {
            Some(item) if item.id == item_id => item,
            _ => {
                self.items.push_back(PlayedItem {
                    id: item_id.to_string(),
                    sent: 0,
                    heard: 0,
                });
                self.items.back_mut().expect("pushed")
            }
        };
        item.sent += bytes;
        let item_end = item.sent;
        if call.record().is_some() {
            let now = call.elapsed_ms();
            let turn = self.agent_turn(item_id, call);
            turn.start_ms.get_or_insert(now);
            turn.sent_ms += bytes / BYTES_PER_MS;
        }
        call.media_base64(delta);
        if self.marks.len() < MAX_PENDING_MARKS {
            self.mark_seq += 1;
            let name = format!("agent-{}", self.mark_seq);
            call.mark(&name);
            self.marks.push_back(PendingMark {
                name,
                item_id: item_id.to_string(),
                item_end,
            });
        }
    }

    /// An event of the response the caller talked over (its text is already in the record).
    fn was_interrupted(&self, event: &Value) -> bool {
        self.interrupted.is_some() && event["response_id"].as_str() == self.interrupted.as_deref()
    }

    /// The record's draft of the agent turn of `item` (a new one the first time); past
    /// [`MAX_OPEN_TURNS`] the oldest draft is written as it is.
    fn agent_turn(&mut self, item: &str, call: &mut Call<'_>) -> &mut AgentTurn {
        if let Some(at) = self.agent_turns.iter().position(|t| t.item_id == item) {
            return &mut self.agent_turns[at];
        }
        if self.agent_turns.len() >= MAX_OPEN_TURNS {
            let oldest = self.agent_turns[0].item_id.clone();
            self.write_agent_turn(&oldest, call);
        }
        self.agent_turns.push_back(AgentTurn {
            item_id: item.to_string(),
            text: String::new(),
            start_ms: None,
            sent_ms: 0,
        });
        self.agent_turns.back_mut().expect("pushed")
    }

    /// The agent turn of `item` into the record: its text, from its first audio for as long as
    /// its audio lasts.
    fn write_agent_turn(&mut self, item: &str, call: &mut Call<'_>) {
        let Some(at) = self.agent_turns.iter().position(|t| t.item_id == item) else {
            return;
        };
        let turn = self.agent_turns.remove(at).expect("found");
        let now = call.elapsed_ms();
        let start = turn.start_ms.unwrap_or(now);
        if let Some(record) = call.record() {
            record.turn(Role::Agent, item, &turn.text, start, start + turn.sent_ms);
        }
    }

    /// The model heard the caller start a turn (its item), at this point of the call.
    fn caller_started(&mut self, event: &Value, call: &mut Call<'_>) {
        if let (Some(item), true) = (event["item_id"].as_str(), call.record().is_some()) {
            if self.caller_turns.len() >= MAX_OPEN_TURNS {
                self.caller_turns.pop_front();
            }
            self.caller_turns
                .push_back((item.to_string(), call.elapsed_ms(), None));
        }
    }

    fn caller_stopped(&mut self, event: &Value, call: &mut Call<'_>) {
        let now = call.elapsed_ms();
        if let Some(turn) = event["item_id"]
            .as_str()
            .and_then(|item| self.caller_turns.iter_mut().find(|t| t.0 == item))
        {
            turn.2 = Some(now);
        }
    }

    /// The caller's turn, transcribed: into the record, timed by the model's VAD.
    fn caller_transcribed(&mut self, event: &Value, call: &mut Call<'_>) {
        let (Some(item), Some(text)) = (event["item_id"].as_str(), event["transcript"].as_str())
        else {
            return;
        };
        let now = call.elapsed_ms();
        let (start, end) = match self.caller_turns.iter().position(|t| t.0 == item) {
            Some(at) => {
                let (_, start, end) = self.caller_turns.remove(at).expect("found");
                (start, end.unwrap_or(now))
            }
            None => (now, now),
        };
        if let Some(record) = call.record() {
            record.turn(Role::Caller, item, text.trim(), start, end);
        }
    }

    /// The caller talks: if some agent audio has not played yet, stop it and tell the model
    /// what of the playing item was heard.
    fn barge_in(&mut self, call: &mut Call<'_>) {
        // The server cancels the response in progress (interrupt_response): what it still
        // sends of it is stale.
        if let Some(id) = self.responses.id.clone() {
            self.interrupted = Some(id);
        }
        if self.marks.is_empty() {
            return;
        }
        self.barge_ins += 1;
        self.metrics.agent_barge_ins.inc();
        call.clear();
        if let Some(playing) = self.items.iter().find(|i| i.heard < i.sent) {
            let heard_ms = playing.heard / BYTES_PER_MS;
            agent_log!(
                call,
                Info,
                "agent: barge-in after {} of {} ms",
                heard_ms,
                playing.sent / BYTES_PER_MS
            );
            let truncate = json!({"type": "conversation.item.truncate", "item_id": playing.id,
                                  "content_index": 0, "audio_end_ms": heard_ms});
            self.send(call, truncate);
            let id = playing.id.clone();
            if call.record().is_some() {
                self.write_agent_turn(&id, call);
                let start = call
                    .record()
                    .and_then(|r| r.transcript.as_ref())
                    .and_then(|t| t.iter().rfind(|t| t.item_id == id))
                    .map_or(0, |t| t.start_ms);
                if let Some(record) = call.record() {
                    record.interrupted(&id, start, heard_ms);
                }
            }
        }
        // Twilio drops what it had not played and returns those marks: they are not pending.
        self.marks.clear();
        self.items.clear();
        if self.ending {
            // The goodbye was cut short: there is nothing left to wait for.
            self.hang_up_when_played(call);
        }
    }

    /// A function call of the model: what it comes to (tools.rs), then done here.
    fn on_tool_call(&mut self, item: &Value, call: &mut Call<'_>) {
        let action = self
            .tools
            .dispatch(&self.config, &self.agent, &self.metrics, item, call);
        match action {
            ToolAction::EndCall => {
                self.ending = true;
                self.hang_up_when_played(call);
            }
            ToolAction::Transfer(to) => call.transfer(&to),
            ToolAction::Output(output) => self.tool_output(call, item, &output),
            ToolAction::Pending => {}
        }
    }

    /// After `end_call`: hangs up once the response is done and every mark sent has returned.
    fn hang_up_when_played(&mut self, call: &mut Call<'_>) {
        if !self.responses.active && self.marks.is_empty() {
            call.hang_up();
        }
    }

    /// Sorts an `error` event: only those that mean the session is over end the call.
    fn on_error(&mut self, error: &Value, call: &mut Call<'_>) {
        let code = error["code"].as_str().unwrap_or("");
        let kind = match (code, error["type"].as_str().unwrap_or("")) {
            ("session_expired", _) => "session_expired",
            ("invalid_api_key", _) | (_, "authentication_error" | "permission_error") => "auth",
            ("insufficient_quota", _) => "quota",
            ("conversation_already_has_active_response", _) => "active_response",
            (c, _) if c.contains("rate_limit") => "rate_limit",
            (_, "server_error") => "server_error",
            (_, "invalid_request_error") => "invalid_request",
            _ => "other",
        };
        self.metrics
            .agent_model_errors
            .get_or_create(&[("type", kind)])
            .inc();
        let fatal = matches!(kind, "session_expired" | "auth" | "quota");
        if fatal {
            agent_log!(
                call,
                Error,
                "agent: the model's session is over ({kind}): {}: {}",
                code,
                error["message"]
            );
            apologize(call);
            return;
        }
        agent_log!(call, Warn, "agent: the model refused an event (the call goes on): code={} param={} event_id={}: {}",
            code, error["param"], error["event_id"], error["message"]);
        if kind == "active_response" {
            // The server started a response of its own first: ask again after it.
            self.responses.active = true;
            self.responses.wanted = true;
        }
    }

    fn model_opened(&mut self, call: &mut Call<'_>) {
        self.socket_open = true;
        if let Some(started) = self.connecting.take() {
            let took = started.elapsed();
            self.metrics.agent_connect.observe(took.as_secs_f64());
            agent_log!(
                call,
                Info,
                "agent: model connected in {} ms",
                took.as_millis()
            );
        }
        self.configure(call);
    }

    /// Configures the model's session once its socket is open and the per-call configuration
    /// (if any) is in: `session.update`, the caller's audio so far, the greeting.
    fn configure(&mut self, call: &mut Call<'_>) {
        if self.open || !self.socket_open || self.per_call.waiting {
            return;
        }
        self.open = true;
        self.instructions = self.per_call.instructions(call);
        let greeting = self.per_call.greeting(call);
        let update = self.session_update();
        self.send(call, update);
        for payload in self.early.take(call) {
            Self::append_audio(call, &payload);
        }
        if let Some(greeting) = greeting {
            self.user_text(call, &format!("Greet the caller with: {greeting}"));
        }
    }
}

impl CallHandler for RealtimeAgent {
    /// The call's setup is done (agent, per-call configuration asked): the model's socket.
    fn on_start(&mut self, _start: &Start, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.connecting = Some(Instant::now());
        let sep = if self.config.url.contains('?') {
            '&'
        } else {
            '?'
        };
        call.connect_upstream(UpstreamRequest {
            url: format!("{}{sep}model={}", self.config.url, self.agent.model),
            headers: vec![(
                "Authorization".into(),
                format!("Bearer {}", self.config.api_key.expose_secret()),
            )],
            timeout: self.config.connect_timeout,
        });
        Ok(())
    }

    fn on_media(
        &mut self,
        media: &MediaChunk<'_>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        if self.open {
            Self::append_audio(call, media.payload_base64);
            return Ok(());
        }
        // Before the model's session is configured: keep the latest of it.
        self.early.push(media);
        Ok(())
    }

    /// An outbound call's callee is known: a person is greeted now if the session is set up
    /// (else `configure` greets).
    fn on_answered_by(
        &mut self,
        answered_by: Option<&str>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        if self.per_call.callee_known(answered_by) && self.open {
            if let Some(greeting) = self.per_call.greeting(call) {
                self.user_text(call, &format!("Greet the caller with: {greeting}"));
            }
        }
        Ok(())
    }

    fn on_dtmf(&mut self, digit: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        if self.open && self.agent.dtmf_to_model {
            self.user_text(call, &format!("The caller pressed {digit}"));
        }
        Ok(())
    }

    fn on_mark(&mut self, name: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        // Twilio returns marks in order; one that is not pending was cleared: nothing to learn.
        let Some(at) = self.marks.iter().position(|m| m.name == name) else {
            return Ok(());
        };
        for mark in self.marks.drain(..=at) {
            if let Some(item) = self.items.iter_mut().find(|i| i.id == mark.item_id) {
                item.heard = item.heard.max(mark.item_end);
            }
        }
        // Items fully heard, with a later item after them, are done with.
        while self.items.len() > 1 && self.items[0].heard >= self.items[0].sent {
            self.items.pop_front();
        }
        if self.ending {
            self.hang_up_when_played(call);
        }
        Ok(())
    }

    fn on_upstream(
        &mut self,
        event: UpstreamEvent,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        match event {
            UpstreamEvent::Open => self.model_opened(call),
            UpstreamEvent::Text(text) => match serde_json::from_slice::<Value>(&text) {
                Ok(event) => self.on_model_event(event, call),
                Err(_) => {
                    agent_log!(
                        call,
                        Warn,
                        "agent: the model sent something that is not JSON"
                    )
                }
            },
            UpstreamEvent::Binary(_) => {}
            UpstreamEvent::Failed { status, reason } => {
                handshake_failed(status, &reason, &self.metrics, call)
            }
            UpstreamEvent::Closed { code, reason } => {
                agent_log!(
                    call,
                    Warn,
                    "agent: the model's socket closed {code} {reason}"
                );
                apologize(call);
            }
        }
        Ok(())
    }

    fn on_http(
        &mut self,
        id: u64,
        answer: HttpAnswer,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        if id == CONFIG_REQUEST {
            self.per_call.answered(answer, &self.metrics, call);
            self.configure(call);
            return Ok(());
        }
        if let Some((call_id, output)) = self.tools.answered(id, answer, &self.metrics, call) {
            self.send(
                call,
                json!({"type": "conversation.item.create",
                       "item": {"type": "function_call_output", "call_id": call_id, "output": output}}),
            );
            self.request_response(call);
        }
        Ok(())
    }

    fn on_end(&mut self, end: &CallEnd, call: &mut Call<'_>) {
        if call.record().is_some() {
            // Turns the call ended in the middle of: what there is of them.
            while let Some(turn) = self.agent_turns.front() {
                let item = turn.item_id.clone();
                self.write_agent_turn(&item, call);
            }
            let barge_ins = self.barge_ins;
            if let Some(record) = call.record() {
                record.barge_ins = Some(barge_ins);
                record.transcript.get_or_insert_with(Vec::new);
                record.tool_calls.get_or_insert_with(Vec::new);
                record.usage.get_or_insert_default();
            }
        }
        agent_log!(
            call,
            Info,
            "agent: call ended ({}), {} barge-in(s), {} interrupted delta(s) dropped",
            end.reason.label(),
            self.barge_ins,
            self.dropped_deltas
        );
        // The session closes the model's socket now (1000): no orphan session billing tokens.
    }
}
