//! The GPT-Live engine (`engine = "live"`): the agent on OpenAI's current voice API, full
//! duplex: the model listens while it speaks, takes its own turns and stops itself when talked
//! over; its tools run on a delegated Responses backend (`backend_model`).
//!
//! Per call: one WebSocket to `OPENAI_LIVE_URL` (no query; `Authorization: Bearer`, `User-Agent:
//! callvisor/Rust <version>`, the form OpenAI asks partners for). `session.start` goes first: the
//! model, the instructions, one `audio.format` both ways (`audio/pcmu` at 8000: Twilio's payloads
//! go in and come out unchanged), the voice, and the delegation (`responses`: the backend model,
//! its instructions, the agent's function tools). Nothing else goes out before `session.started`:
//! the caller's audio waits (the latest [`EARLY_AUDIO_MS`](super::EARLY_AUDIO_MS)) and follows in
//! order; then the greeting, as a `session.commentary.append` worded as an instruction to speak
//! first.
//!
//! - **Audio.** Each caller frame → `session.input_audio.append`; each
//!   `session.output_audio.delta` → Twilio as it comes, with a mark every [`MARK_EVERY_MS`] so the
//!   agent knows how much of what it sent has played. The model handles barge-in itself (no
//!   truncate, no cancel): the agent does not clear Twilio's buffer on every sound. It clears it
//!   only when the caller is talking (an input transcript delta) and the audio queued at Twilio
//!   (sent, minus what the marks say played) is more than `LIVE_CLEAR_AHEAD_MS` ahead: the model,
//!   which streams in real time, has stopped; what is queued is stale.
//! - **Tools.** `session.delegation.created`, then `response.event` envelopes: each completed
//!   `function_call` item (once per `call_id`) runs as for the Realtime engine (tools.rs); each
//!   output goes back as `response.item.create` (`function_call_output`), and one
//!   `response.create` follows once the backend's response is complete and every call of it has
//!   its output (a partial batch is rejected). `end_call`: the goodbye plays out (a mark after the
//!   audio sent, later output dropped), its output, `session.close`, `session.closed` (at most
//!   [`CLOSE_WAIT`]), then the REST hang-up. `transfer_call`: its output, then `<Dial>`.
//! - **Errors.** An `error` before `session.started`, a refused handshake, an unreachable service:
//!   a failed start (401/403: the apology; else the call fails over). After it, an `error` answers
//!   one command: logged with its code, param and client_event_id; the call goes on.
//!   `session.closed` for any reason but ours (`expired`, `content`, `connection_lost`, …) or the
//!   socket closing unasked: the apology and the hang-up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::agents::Agent;
use super::call_setup::{
    apologize, handshake_failed, EarlyAudio, PerCall, BYTES_PER_MS, CONFIG_REQUEST,
};
use super::metrics::AgentMetrics;
use super::realtime::MAX_PENDING_MARKS;
use super::settings::AgentConfig;
use super::tools::{function_tools, ToolAction, Tools};
use crate::call::handler::{
    decoded_len, Call, CallEnd, CallHandler, HandlerError, HttpAnswer, MediaChunk, UpstreamEvent,
    UpstreamRequest,
};
use crate::records::Role;
use crate::twilio::messages::Start;

/// A mark goes to Twilio after this much agent audio (the model streams ~50 deltas a second).
pub const MARK_EVERY_MS: u64 = 200;
/// How long `session.close` may take to be answered before the call is hung up anyway.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Transcript fragments further apart than this start a new turn.
pub const TURN_GAP_MS: u64 = 800;
/// The `on_timer` id of the close wait.
const CLOSE_TIMER: u64 = 1;
/// The `User-Agent` OpenAI asks partners for: `[Company/Library]/[Language] [Version]`.
pub const USER_AGENT: &str = concat!("callvisor/Rust ", env!("CARGO_PKG_VERSION"));

/// The goodbye of `end_call`, through its stages.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The mark after the goodbye's audio is on its way back.
    Playing { call_id: String, mark: String },
    /// `session.close` sent: waiting for `session.closed`.
    Closing,
}

/// A function call of the backend's response in progress, and its output once in.
struct Pending {
    call_id: String,
    output: Option<String>,
}

/// The turn a transcript fragment belongs to.
struct OpenTurn {
    role: Role,
    id: String,
    text: String,
    start_ms: u64,
    end_ms: u64,
}

pub struct LiveAgent {
    config: Arc<AgentConfig>,
    metrics: AgentMetrics,
    agent: Arc<Agent>,
    per_call: PerCall,
    connecting: Option<Instant>,
    socket_open: bool,
    /// `session.start` sent; `session.started` received (commands may go out).
    start_sent: bool,
    started: bool,
    early: EarlyAudio,
    greeting: Option<String>,
    tools: Tools,
    /// The backend's response in progress: its function calls (in order) and whether it is
    /// complete; every `call_id` seen, so each runs once.
    calls: Vec<Pending>,
    response_complete: bool,
    seen: Vec<String>,
    /// Agent audio sent to Twilio, and the part of it Twilio's marks say has played; marks
    /// sent and not yet back (name, bytes sent when it was sent).
    sent_bytes: u64,
    heard_bytes: u64,
    since_mark: u64,
    marks: VecDeque<(String, u64)>,
    mark_seq: u64,
    ending: Option<Ending>,
    /// We asked for `session.close` (a hang-up or the call's end): its close is no failure.
    closing: bool,
    /// The stream's time (ms) at `session.started`: the session's transcript times count from
    /// there.
    session_start_ms: u64,
    turns: Vec<OpenTurn>,
    turn_seq: u64,
    clears: u64,
}

impl LiveAgent {
    pub fn new(
        config: Arc<AgentConfig>,
        metrics: AgentMetrics,
        agent: Arc<Agent>,
        per_call: PerCall,
    ) -> Self {
        LiveAgent {
            config,
            metrics,
            agent,
            per_call,
            connecting: None,
            socket_open: false,
            start_sent: false,
            started: false,
            early: EarlyAudio::default(),
            greeting: None,
            tools: Tools::default(),
            calls: Vec::new(),
            response_complete: false,
            seen: Vec::new(),
            sent_bytes: 0,
            heard_bytes: 0,
            since_mark: 0,
            marks: VecDeque::new(),
            mark_seq: 0,
            ending: None,
            closing: false,
            session_start_ms: 0,
            turns: Vec::new(),
            turn_seq: 0,
            clears: 0,
        }
    }

    fn send(call: &mut Call<'_>, event: Value) {
        call.send_upstream_text(event.to_string());
    }

    fn append_audio(call: &mut Call<'_>, payload_base64: &str) {
        call.send_upstream_text(format!(
            r#"{{"type":"session.input_audio.append","audio":"{payload_base64}"}}"#
        ));
    }

    /// `session.start`, once the socket is open and the per-call configuration is in.
    fn start_session(&mut self, call: &mut Call<'_>) {
        if self.start_sent || !self.socket_open || self.per_call.waiting {
            return;
        }
        self.start_sent = true;
        let instructions = self.per_call.instructions(call);
        self.greeting = self.per_call.greeting(call);
        let agent = &self.agent;
        let backend = agent.backend_model.clone().unwrap_or_default();
        let event_id: String = format!("start_{}", call.call_sid())
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let start = json!({
            "type": "session.start",
            "event_id": event_id,
            "session": {
                "model": agent.model,
                "instructions": instructions,
                "audio": {
                    "format": {"type": "audio/pcmu", "rate": 8000},
                    "output": {"voice": self.per_call.voice},
                },
                "delegation": {
                    "type": "responses",
                    "responses": {
                        "model": backend,
                        "instructions": BACKEND_INSTRUCTIONS,
                        "tools": function_tools(agent),
                    },
                },
            },
        });
        Self::send(call, start);
    }

    fn on_model_event(&mut self, event: Value, call: &mut Call<'_>) {
        match event["type"].as_str().unwrap_or("") {
            "session.started" => self.session_started(&event, call),
            "session.output_audio.delta" => self.on_delta(&event, call),
            "session.input_transcript.delta" => {
                self.transcript(Role::Caller, &event, call);
                self.maybe_clear(call);
            }
            "session.output_transcript.delta" => self.transcript(Role::Agent, &event, call),
            "session.delegation.created" => {
                log::debug!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                    "agent: delegated to {}", event["delegation"]["target"]);
            }
            "response.event" => self.on_backend_event(&event["event"], call),
            "session.usage.updated" => self.usage_seconds(&event["usage"], call),
            "session.closed" => self.session_closed(&event, call),
            "error" => self.on_error(&event, call),
            _ => {}
        }
    }

    fn session_started(&mut self, event: &Value, call: &mut Call<'_>) {
        if self.started {
            return;
        }
        self.started = true;
        self.session_start_ms = call.elapsed_ms();
        let session = &event["session"];
        log::info!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
            "agent: live session {} started, expires at {}", session["id"], session["expires_at"]);
        for payload in self.early.take(call) {
            Self::append_audio(call, &payload);
        }
        self.greet(call);
    }

    /// The greeting, if the call has one still to say (an outbound call's waits for its callee
    /// to be known as a person).
    fn greet(&mut self, call: &mut Call<'_>) {
        if let Some(greeting) = self.greeting.take() {
            Self::send(
                call,
                json!({"type": "session.commentary.append", "delegation_id": null,
                    "content": format!("Greet the caller now, in these words: \"{greeting}\" Then listen.")}),
            );
        }
    }

    fn on_delta(&mut self, event: &Value, call: &mut Call<'_>) {
        let Some(delta) = event["delta"].as_str() else {
            return;
        };
        if self.ending.is_some() {
            // After the goodbye: the model filling the silence, never to be heard.
            return;
        }
        let bytes = decoded_len(delta);
        call.media_base64(delta);
        self.sent_bytes += bytes;
        self.since_mark += bytes;
        if self.since_mark >= MARK_EVERY_MS * BYTES_PER_MS && self.marks.len() < MAX_PENDING_MARKS {
            self.since_mark = 0;
            self.mark(call);
        }
    }

    /// A mark after every agent audio byte sent so far; its name.
    fn mark(&mut self, call: &mut Call<'_>) -> String {
        self.mark_seq += 1;
        let name = format!("live-{}", self.mark_seq);
        call.mark(&name);
        self.marks.push_back((name.clone(), self.sent_bytes));
        name
    }

    /// The caller talks: Twilio's queued audio is stale if more of it than
    /// `LIVE_CLEAR_AHEAD_MS` has not played (the model, streaming in real time, has stopped).
    fn maybe_clear(&mut self, call: &mut Call<'_>) {
        let ahead_ms = self.sent_bytes.saturating_sub(self.heard_bytes) / BYTES_PER_MS;
        if ahead_ms > self.config.live_clear_ahead.as_millis() as u64 && self.ending.is_none() {
            log::info!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                "agent: the caller talks with {ahead_ms} ms of agent audio queued: cleared");
            call.clear();
            self.clears += 1;
            self.metrics.agent_barge_ins.inc();
            // Twilio drops what it had not played and returns those marks: not pending.
            self.marks.clear();
            self.heard_bytes = self.sent_bytes;
        }
    }

    /// A transcript fragment: into the turn it continues (same speaker, close in time), or a
    /// new one; the record gets the turn as it grows.
    fn transcript(&mut self, role: Role, event: &Value, call: &mut Call<'_>) {
        let Some(delta) = event["delta"].as_str() else {
            return;
        };
        if call.record().is_none() {
            return;
        }
        let at = |key: &str| event[key].as_u64().map(|ms| self.session_start_ms + ms);
        let now = call.elapsed_ms();
        let (start, end) = (at("start_ms").unwrap_or(now), at("end_ms").unwrap_or(now));
        let continues = self
            .turns
            .iter()
            .rposition(|t| t.role == role)
            .filter(|&i| start <= self.turns[i].end_ms + TURN_GAP_MS);
        let i = match continues {
            Some(i) => i,
            None => {
                self.turn_seq += 1;
                if self.turns.len() >= 2 {
                    // Only the latest of each speaker can still grow.
                    if let Some(old) = self.turns.iter().position(|t| t.role == role) {
                        self.turns.remove(old);
                    }
                }
                self.turns.push(OpenTurn {
                    role,
                    id: format!("live-{}", self.turn_seq),
                    text: String::new(),
                    start_ms: start,
                    end_ms: end,
                });
                self.turns.len() - 1
            }
        };
        let turn = &mut self.turns[i];
        turn.text.push_str(delta);
        turn.end_ms = turn.end_ms.max(end);
        let (id, text, start_ms, end_ms) = (
            turn.id.clone(),
            turn.text.trim().to_string(),
            turn.start_ms,
            turn.end_ms,
        );
        if let Some(record) = call.record() {
            record.turn(role, &id, &text, start_ms, end_ms);
        }
    }

    fn usage_seconds(&mut self, usage: &Value, call: &mut Call<'_>) {
        if let (Some(seconds), Some(record)) = (usage["seconds"].as_f64(), call.record()) {
            record.usage.get_or_insert_default().seconds = Some(seconds);
        }
    }

    /// One event of the delegated Responses backend.
    fn on_backend_event(&mut self, inner: &Value, call: &mut Call<'_>) {
        match inner["type"].as_str().unwrap_or("") {
            "response.created" => {
                self.calls.clear();
                self.response_complete = false;
            }
            "response.output_item.done" => {
                let item = &inner["item"];
                if item["type"] == "function_call" && item["status"] == "completed" {
                    self.on_function_call(item, call);
                }
            }
            "response.completed" | "response.failed" | "response.incomplete" => {
                if let Some(record) = call.record() {
                    let usage = &inner["response"]["usage"];
                    if usage.is_object() {
                        record.usage.get_or_insert_default().add_responses(usage);
                    }
                }
                if inner["type"] != "response.completed" {
                    // The service discards a failed response's calls.
                    log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                        "agent: the backend's response ended {}", inner["type"]);
                    self.calls.clear();
                }
                self.response_complete = true;
                self.maybe_continue(call);
            }
            _ => {}
        }
    }

    fn on_function_call(&mut self, item: &Value, call: &mut Call<'_>) {
        let call_id = item["call_id"].as_str().unwrap_or("").to_string();
        if self.seen.contains(&call_id) {
            return;
        }
        self.seen.push(call_id.clone());
        let action = self
            .tools
            .dispatch(&self.config, &self.agent, &self.metrics, item, call);
        match action {
            ToolAction::EndCall => {
                // Its output goes once the goodbye has played (`on_mark`).
                let mark = self.mark(call);
                self.ending = Some(Ending::Playing { call_id, mark });
            }
            ToolAction::Transfer(to) => {
                self.output(call, &call_id, &json!({"transferred": true}).to_string());
                call.transfer(&to);
            }
            ToolAction::Output(output) => {
                self.calls.push(Pending {
                    call_id: call_id.clone(),
                    output: None,
                });
                self.output(call, &call_id, &output);
            }
            ToolAction::Pending => self.calls.push(Pending {
                call_id,
                output: None,
            }),
        }
    }

    /// A call's output to the backend.
    fn output(&mut self, call: &mut Call<'_>, call_id: &str, output: &str) {
        Self::send(
            call,
            json!({"type": "response.item.create",
                   "item": {"type": "function_call_output", "call_id": call_id, "output": output}}),
        );
        if let Some(pending) = self.calls.iter_mut().find(|p| p.call_id == call_id) {
            pending.output = Some(output.to_string());
        }
        self.maybe_continue(call);
    }

    /// One `response.create` once the backend's response is complete and every call of it has
    /// its output.
    fn maybe_continue(&mut self, call: &mut Call<'_>) {
        let ready = self.response_complete
            && !self.calls.is_empty()
            && self.calls.iter().all(|p| p.output.is_some());
        if ready && self.ending.is_none() && !self.closing {
            self.calls.clear();
            Self::send(call, json!({"type": "response.create"}));
        }
    }

    /// Asks the service to close the session (it answers `session.closed`).
    fn close_session(&mut self, call: &mut Call<'_>) {
        if self.closing || !self.started {
            return;
        }
        self.closing = true;
        Self::send(call, json!({"type": "session.close"}));
    }

    fn session_closed(&mut self, event: &Value, call: &mut Call<'_>) {
        self.usage_seconds(&event["usage"], call);
        let reason = event["reason"].as_str().unwrap_or("");
        if self.closing {
            if self.ending == Some(Ending::Closing) {
                call.hang_up();
            }
            return;
        }
        log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
            "agent: the live session closed ({reason}): the caller hears the apology");
        let kind = match reason {
            "expired" => "session_expired",
            _ => "session_closed",
        };
        self.metrics
            .agent_model_errors
            .get_or_create(&[("type", kind)])
            .inc();
        self.closing = true;
        apologize(call);
    }

    fn on_error(&mut self, event: &Value, call: &mut Call<'_>) {
        let error = &event["error"];
        let code = error["code"].as_str().unwrap_or("");
        let kind = match (code, error["type"].as_str().unwrap_or("")) {
            ("invalid_api_key", _) | (_, "authentication_error" | "permission_error") => "auth",
            ("insufficient_quota", _) => "quota",
            (c, _) if c.contains("rate_limit") => "rate_limit",
            (_, "server_error") => "server_error",
            (_, "invalid_request_error") => "invalid_request",
            _ => "other",
        };
        self.metrics
            .agent_model_errors
            .get_or_create(&[("type", kind)])
            .inc();
        if !self.started {
            log::error!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                "agent: the live session did not start: {code}: {} (param {})", error["message"], error["param"]);
            if matches!(kind, "auth" | "quota") {
                apologize(call);
            } else {
                call.fail_over("model session did not start");
            }
            return;
        }
        log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
            "agent: the model refused a command (the call goes on): code={code} param={} client_event_id={}: {}",
            error["param"], event["client_event_id"], error["message"]);
    }
}

/// What the delegated backend is told (the voice model gets the agent's instructions).
const BACKEND_INSTRUCTIONS: &str = "You run the phone agent's tools. Call end_call only after \
the assistant has said goodbye; call transfer_call when the caller asks for a person or a \
department. Answer from the tools' results only.";

impl CallHandler for LiveAgent {
    fn on_start(&mut self, _start: &Start, call: &mut Call<'_>) -> Result<(), HandlerError> {
        self.connecting = Some(Instant::now());
        call.connect_upstream(UpstreamRequest {
            url: self.config.live_url.clone(),
            headers: vec![
                (
                    "Authorization".into(),
                    format!("Bearer {}", self.config.api_key.expose_secret()),
                ),
                ("User-Agent".into(), USER_AGENT.into()),
            ],
            timeout: self.config.connect_timeout,
        });
        Ok(())
    }

    fn on_media(
        &mut self,
        media: &MediaChunk<'_>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        if self.started {
            Self::append_audio(call, media.payload_base64);
        } else {
            self.early.push(media);
        }
        Ok(())
    }

    /// An outbound call's callee is known: a person is greeted once the session has started
    /// (`session.start` went without the greeting).
    fn on_answered_by(
        &mut self,
        answered_by: Option<&str>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        if self.per_call.callee_known(answered_by) && self.start_sent {
            self.greeting = self.per_call.greeting(call);
            if self.started {
                self.greet(call);
            }
        }
        Ok(())
    }

    fn on_dtmf(&mut self, digit: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        if self.started && self.agent.dtmf_to_model && !self.closing {
            Self::send(
                call,
                json!({"type": "session.thinking.append", "delegation_id": null,
                       "content": format!("The caller pressed {digit} on the keypad.")}),
            );
        }
        Ok(())
    }

    fn on_mark(&mut self, name: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        let Some(at) = self.marks.iter().position(|(n, _)| n == name) else {
            return Ok(());
        };
        for (_, sent) in self.marks.drain(..=at) {
            self.heard_bytes = self.heard_bytes.max(sent);
        }
        if let Some(Ending::Playing { call_id, mark }) = &self.ending {
            if mark == name {
                // The goodbye has played: answer the call, close the session, then hang up.
                let call_id = call_id.clone();
                self.ending = Some(Ending::Closing);
                Self::send(
                    call,
                    json!({"type": "response.item.create",
                        "item": {"type": "function_call_output", "call_id": call_id,
                                 "output": json!({"ended": true}).to_string()}}),
                );
                self.close_session(call);
                call.set_timer(CLOSE_TIMER, CLOSE_WAIT);
            }
        }
        Ok(())
    }

    fn on_timer(&mut self, id: u64, call: &mut Call<'_>) -> Result<(), HandlerError> {
        if id == CLOSE_TIMER && self.ending == Some(Ending::Closing) {
            log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                "agent: session.closed did not come within {} s: hanging up", CLOSE_WAIT.as_secs());
            call.hang_up();
        }
        Ok(())
    }

    fn on_upstream(
        &mut self,
        event: UpstreamEvent,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        match event {
            UpstreamEvent::Open => {
                self.socket_open = true;
                if let Some(started) = self.connecting.take() {
                    self.metrics
                        .agent_connect
                        .observe(started.elapsed().as_secs_f64());
                }
                self.start_session(call);
            }
            UpstreamEvent::Text(text) => match serde_json::from_slice::<Value>(&text) {
                Ok(event) => self.on_model_event(event, call),
                Err(_) => log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                    "agent: the model sent something that is not JSON"),
            },
            UpstreamEvent::Binary(_) => {}
            UpstreamEvent::Failed { status, reason } => {
                handshake_failed(status, &reason, &self.metrics, call)
            }
            UpstreamEvent::Closed { code, reason } => {
                if self.ending == Some(Ending::Closing) {
                    call.hang_up();
                } else if !self.closing {
                    log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                        "agent: the live socket closed {code} {reason}");
                    self.closing = true;
                    apologize(call);
                }
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
            self.start_session(call);
            return Ok(());
        }
        if let Some((call_id, output)) = self.tools.answered(id, answer, &self.metrics, call) {
            if !self.closing {
                self.output(call, &call_id, &output);
            }
        }
        Ok(())
    }

    fn on_end(&mut self, end: &CallEnd, call: &mut Call<'_>) {
        // No orphan session billing by the second: close it (the session then closes the
        // socket once this has gone).
        self.close_session(call);
        log::info!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
            "agent: call ended ({}), {} stale-audio clear(s)", end.reason.label(), self.clears);
        let clears = self.clears;
        if let Some(record) = call.record() {
            record.barge_ins = Some(clears);
            record.transcript.get_or_insert_with(Vec::new);
            record.tool_calls.get_or_insert_with(Vec::new);
            record.usage.get_or_insert_default();
        }
    }
}
