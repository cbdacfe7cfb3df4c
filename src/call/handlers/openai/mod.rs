//! `HANDLER=openai`: a phone voice agent on OpenAI's Realtime API (the GA interface).
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
pub mod agents;
pub mod metrics;
pub mod settings;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::call::handler::{
    decoded_len, Call, CallEnd, CallHandler, HandlerError, MediaChunk, UpstreamEvent,
    UpstreamRequest,
};
use crate::call::handlers::openai::settings::AgentConfig;
use crate::twilio::signature::BOUND_PARAM;

use self::agents::{Agent, Destination, Tool};
use self::metrics::AgentMetrics;
use crate::call::handler::{HttpAnswer, HttpPost};
use crate::records::{Role, ToolCallRecord, ToolOutcome};
use crate::twilio::messages::Start;
use crate::twilio::signature::unix_now;

/// What the caller hears when the model goes away mid-call.
pub const APOLOGY: &str = "Sorry, the assistant is unavailable right now. Please call again later.";
/// How much caller audio waits for the model's socket to open (the latest of it is kept).
pub const EARLY_AUDIO_MS: u64 = 5_000;
/// Marks awaiting Twilio's echo at most; past it, audio goes out unmarked (that much unplayed
/// audio is 50 s of 100 ms deltas) and what was heard of it counts only from later marks.
pub const MAX_PENDING_MARKS: usize = 512;
/// mu-law at 8 kHz.
const BYTES_PER_MS: u64 = 8;

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

pub struct OpenAiAgent {
    config: Arc<AgentConfig>,
    /// The agent answering this call (chosen at `start`: the one the stream token binds, else
    /// the one for the number called, else the default).
    agent: Arc<Agent>,
    /// Its greeting with the call's placeholders filled (none after a hand-off).
    greeting: Option<String>,
    /// What this call runs, before placeholders: the agent's, or `AGENT_CONFIG_URL`'s answer.
    per_call: PerCall,
    /// The stream's parameters (`From`, `To`, `attempt`, …), for placeholders.
    params: std::collections::BTreeMap<String, String>,
    /// `AGENT_CONFIG_URL`'s answer is awaited: the session is configured once it is in.
    config_waiting: bool,
    /// The model's socket is open (the session may still wait for the per-call config).
    socket_open: bool,
    metrics: AgentMetrics,
    /// When the model's socket was asked for (connect time).
    connecting: Option<Instant>,
    /// The model's session is configured (`session.update` sent): caller audio goes to it.
    open: bool,
    /// The instructions sent, placeholders filled.
    instructions: String,
    /// Caller audio (base64) that arrived before the model's socket opened, and its bytes.
    early_audio: VecDeque<String>,
    early_bytes: u64,
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

impl OpenAiAgent {
    pub fn new(config: Arc<AgentConfig>, metrics: AgentMetrics) -> Self {
        let agent = config
            .agents
            .default_agent()
            .or_else(|| config.agents.iter().next())
            .expect("configuration has at least one agent")
            .clone();
        OpenAiAgent {
            instructions: String::new(),
            agent,
            greeting: None,
            per_call: PerCall::default(),
            params: Default::default(),
            config_waiting: false,
            socket_open: false,
            config,
            metrics,
            connecting: None,
            open: false,
            early_audio: VecDeque::new(),
            early_bytes: 0,
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
        let mut tools = vec![json!({
            "type": "function",
            "name": "end_call",
            "description": "End the phone call, after saying goodbye.",
            "parameters": {"type": "object", "properties": {}},
        })];
        if !agent.transfer_targets.is_empty() {
            let names: Vec<&str> = agent
                .transfer_targets
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            tools.push(json!({
                "type": "function",
                "name": "transfer_call",
                "description": "Transfer the caller to a person or department.",
                "parameters": {"type": "object",
                    "properties": {"target": {"type": "string", "enum": names,
                        "description": "Where to transfer the caller."}},
                    "required": ["target"]},
            }));
        }
        for tool in &agent.tools {
            tools.push(json!({"type": "function", "name": tool.name,
                "description": tool.description, "parameters": tool.parameters}));
        }
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
        if self.responses.active || !self.tools.pending.is_empty() {
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
        if self.tools.pending.is_empty() && std::mem::take(&mut self.responses.wanted) {
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

    /// A tool call into the record.
    #[allow(clippy::too_many_arguments)]
    fn record_tool(
        call: &mut Call<'_>,
        name: &str,
        call_id: &str,
        arguments: &Value,
        start_ms: u64,
        outcome: ToolOutcome,
        status: Option<u16>,
    ) {
        let now = call.elapsed_ms();
        if let Some(record) = call.record() {
            let arguments = match arguments.as_str().map(serde_json::from_str::<Value>) {
                Some(Ok(parsed)) => parsed,
                _ => arguments.clone(),
            };
            record.tool_call(ToolCallRecord {
                name: name.to_string(),
                call_id: call_id.to_string(),
                arguments,
                start_ms,
                duration_ms: now.saturating_sub(start_ms),
                outcome,
                status,
            });
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

    fn on_tool_call(&mut self, item: &Value, call: &mut Call<'_>) {
        let name = item["name"].as_str().unwrap_or("");
        agent_log!(call, Info, "agent: tool call {name}");
        // Bounded labels: the built-in tools and the agent's own (from its file).
        let tool = self.agent.tool(name).cloned();
        let label = match (name, &tool) {
            ("end_call" | "transfer_call", _) | (_, Some(_)) => name.to_string(),
            _ => "other".to_string(),
        };
        self.metrics
            .agent_tool_calls
            .get_or_create(&[("name", label)])
            .inc();
        let (call_id, start) = (item["call_id"].as_str().unwrap_or(""), call.elapsed_ms());
        let arguments = &item["arguments"];
        match (name, tool) {
            ("end_call", _) => {
                Self::record_tool(call, name, call_id, arguments, start, ToolOutcome::Ok, None);
                self.ending = true;
                self.hang_up_when_played(call);
            }
            ("transfer_call", _) => self.transfer(item, call),
            (_, Some(tool)) => self.call_tool(&tool, item, call),
            _ => {
                Self::record_tool(
                    call,
                    name,
                    call_id,
                    arguments,
                    start,
                    ToolOutcome::Error,
                    None,
                );
                let output = json!({"error": format!("unknown tool {name:?}")}).to_string();
                self.tool_output(call, item, &output);
            }
        }
    }

    /// One of the agent's own tools: its call POSTed to the business, signed (Standard
    /// Webhooks, `webhook-id` = the call_id); the answer goes back to the model as the tool's
    /// output (`on_http`). At most [`MAX_TOOLS_IN_FLIGHT`] per call at once, the rest wait.
    fn call_tool(&mut self, tool: &Tool, item: &Value, call: &mut Call<'_>) {
        let call_id = item["call_id"].as_str().unwrap_or("").to_string();
        let start_ms = call.elapsed_ms();
        let refused = |call: &mut Call<'_>| {
            let arguments = &item["arguments"];
            Self::record_tool(
                call,
                &tool.name,
                &call_id,
                arguments,
                start_ms,
                ToolOutcome::Error,
                None,
            );
        };
        let arguments = match item["arguments"]
            .as_str()
            .map(serde_json::from_str::<Value>)
        {
            Some(Ok(arguments)) => arguments,
            _ => {
                refused(call);
                let output = json!({"error": "the arguments are not JSON"}).to_string();
                return self.tool_output(call, item, &output);
            }
        };
        let body = json!({"call_sid": call.call_sid(), "agent": self.agent.name, "tool": tool.name,
                          "call_id": call_id, "arguments": arguments})
        .to_string();
        let Some(secret) = &self.config.webhook_secret else {
            // The configuration refuses tools without WEBHOOK_SECRET: not reached.
            refused(call);
            let output = json!({"error": "the tool is not configured"}).to_string();
            return self.tool_output(call, item, &output);
        };
        let headers = match signed_json_headers(secret, &call_id, &body) {
            Ok(headers) => headers,
            Err(e) => {
                refused(call);
                let output = json!({"error": format!("bad call_id: {e}")}).to_string();
                return self.tool_output(call, item, &output);
            }
        };
        self.tools.next_id += 1;
        let post = HttpPost {
            id: self.tools.next_id,
            url: tool.url.clone(),
            headers,
            body,
            timeout: tool.timeout,
        };
        self.tools.pending.push(PendingTool {
            id: post.id,
            call_id,
            name: tool.name.clone(),
            started: None,
            start_ms,
            arguments,
        });
        self.tools.waiting.push_back(post);
        self.start_tools(call);
    }

    /// Starts waiting tool requests while fewer than [`MAX_TOOLS_IN_FLIGHT`] run.
    fn start_tools(&mut self, call: &mut Call<'_>) {
        while self
            .tools
            .pending
            .iter()
            .filter(|t| t.started.is_some())
            .count()
            < MAX_TOOLS_IN_FLIGHT
        {
            let Some(post) = self.tools.waiting.pop_front() else {
                break;
            };
            if let Some(pending) = self.tools.pending.iter_mut().find(|t| t.id == post.id) {
                pending.started = Some(Instant::now());
            }
            call.http_post(post);
        }
    }

    /// `transfer_call`: dials the target the model named (with one target, the model may leave
    /// it out); anything else is told to the model.
    fn transfer(&mut self, item: &Value, call: &mut Call<'_>) {
        let arguments: Value = item["arguments"]
            .as_str()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or(Value::Null);
        let targets = &self.agent.transfer_targets;
        let destination = match (arguments["target"].as_str(), targets.as_slice()) {
            (_, []) => Err("no transfer target is configured".to_string()),
            (Some(name), _) => self
                .agent
                .transfer_target(name)
                .cloned()
                .ok_or_else(|| format!("unknown transfer target {name:?}")),
            (None, [only]) => Ok(only.destination.clone()),
            (None, _) => Err("transfer_call needs a target".to_string()),
        };
        let (call_id, start) = (item["call_id"].as_str().unwrap_or(""), call.elapsed_ms());
        let outcome = match destination {
            Ok(_) => ToolOutcome::Ok,
            Err(_) => ToolOutcome::Error,
        };
        Self::record_tool(
            call,
            "transfer_call",
            call_id,
            &item["arguments"],
            start,
            outcome,
            None,
        );
        match destination {
            Ok(Destination::Number(to) | Destination::Sip(to)) => call.transfer(&to),
            Err(why) => {
                agent_log!(call, Warn, "agent: transfer_call refused: {why}");
                let output = json!({"error": why}).to_string();
                self.tool_output(call, item, &output);
            }
        }
    }

    /// After `end_call`: hangs up once the response is done and every mark sent has returned.
    fn hang_up_when_played(&mut self, call: &mut Call<'_>) {
        if !self.responses.active && self.marks.is_empty() {
            call.hang_up();
        }
    }

    /// The model cannot go on: the caller hears the apology, the call is hung up, and its
    /// record says why.
    fn model_failed(&mut self, call: &mut Call<'_>) {
        if let Some(record) = call.record() {
            record.end_reason = Some("model_error");
        }
        call.say_and_hang_up(APOLOGY);
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
            self.model_failed(call);
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

    /// With `AGENT_CONFIG_URL`: asks the business for this call's settings, signed, in
    /// parallel with the model's handshake; the session waits for the answer at most
    /// `AGENT_CONFIG_TIMEOUT_MS`.
    fn ask_config(&mut self, start: &Start, call: &mut Call<'_>) {
        let (Some(url), Some(secret)) = (&self.config.config_url, &self.config.webhook_secret)
        else {
            return;
        };
        let params = &start.custom_parameters;
        let body = json!({"call_sid": start.call_sid, "account_sid": start.account_sid,
            "from": params.get("From"), "to": params.get("To"), "agent": self.agent.name,
            "parameters": params})
        .to_string();
        // One id per call attempt: the same on a retry of it, another after a hand-off.
        let attempt = params.get("attempt").map_or("1", String::as_str);
        let id: String = format!("cfg_{}_{attempt}", start.call_sid)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let Ok(headers) = signed_json_headers(secret, &id, &body) else {
            return;
        };
        self.config_waiting = true;
        call.http_post(HttpPost {
            id: CONFIG_REQUEST,
            url: url.clone(),
            headers,
            body,
            timeout: self.config.config_timeout,
        });
    }

    /// `AGENT_CONFIG_URL` answered (or timed out): a 200 with a JSON object replaces what it
    /// names; anything else keeps the agent's own settings.
    fn config_answered(&mut self, answer: HttpAnswer, call: &mut Call<'_>) {
        self.config_waiting = false;
        let outcome = match answer {
            HttpAnswer::Answered { status: 200, body } => match PerCallAnswer::parse(&body) {
                Some(answer) => {
                    answer.apply(&mut self.per_call);
                    "ok"
                }
                None => "malformed",
            },
            HttpAnswer::Answered { .. } | HttpAnswer::Failed(_) => "error",
            HttpAnswer::TimedOut => "timeout",
        };
        if outcome != "ok" {
            agent_log!(
                call,
                Warn,
                "agent: AGENT_CONFIG_URL's answer is {outcome}: the agent's own settings apply"
            );
        }
        self.metrics
            .agent_config
            .get_or_create(&[("outcome", outcome)])
            .inc();
        self.configure(call);
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
        if self.open || !self.socket_open || self.config_waiting {
            return;
        }
        self.open = true;
        let (params, variables) = (&self.params, &self.per_call.variables);
        self.instructions = fill_placeholders(&self.per_call.instructions, params, variables, call);
        self.greeting = self
            .per_call
            .greeting
            .as_ref()
            .filter(|_| self.per_call.greet)
            .map(|g| fill_placeholders(g, params, variables, call));
        let update = self.session_update();
        self.send(call, update);
        if !self.early_audio.is_empty() {
            agent_log!(
                call,
                Debug,
                "agent: {} ms of caller audio from before the model opened follow",
                self.early_bytes / BYTES_PER_MS
            );
        }
        for payload in std::mem::take(&mut self.early_audio) {
            Self::append_audio(call, &payload);
        }
        self.early_bytes = 0;
        if let Some(greeting) = self.greeting.clone() {
            self.user_text(call, &format!("Greet the caller with: {greeting}"));
        }
    }
}

/// The `on_http` id of the per-call configuration request (tools count from 1).
const CONFIG_REQUEST: u64 = 0;

/// What a call runs, before its placeholders are filled.
#[derive(Default)]
struct PerCall {
    instructions: String,
    /// Whether this call greets (not after a hand-off: the caller was greeted).
    greet: bool,
    greeting: Option<String>,
    voice: String,
    /// Values for placeholders, before the stream's parameters.
    variables: std::collections::BTreeMap<String, String>,
}

/// `AGENT_CONFIG_URL`'s answer: each field present replaces the agent's.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PerCallAnswer {
    instructions: Option<String>,
    greeting: Option<String>,
    voice: Option<String>,
    variables: Option<std::collections::BTreeMap<String, String>>,
}

impl PerCallAnswer {
    fn parse(body: &[u8]) -> Option<PerCallAnswer> {
        serde_json::from_slice(body).ok()
    }

    fn apply(self, per_call: &mut PerCall) {
        if let Some(instructions) = self.instructions {
            per_call.instructions = instructions;
        }
        if let Some(greeting) = self.greeting {
            per_call.greeting = Some(greeting);
        }
        if let Some(voice) = self.voice {
            per_call.voice = voice;
        }
        if let Some(variables) = self.variables {
            per_call.variables = variables;
        }
    }
}

/// A tool request of this call, waiting or running.
struct PendingTool {
    id: u64,
    call_id: String,
    name: String,
    /// When it was sent (`None`: waiting for a free slot).
    started: Option<Instant>,
    /// For the record: when the model called it (ms from the stream's start), with what.
    start_ms: u64,
    arguments: Value,
}

/// The agent's own tools in flight.
#[derive(Default)]
struct Tools {
    next_id: u64,
    pending: Vec<PendingTool>,
    waiting: VecDeque<HttpPost>,
}

/// Tool requests one call runs at once.
pub const MAX_TOOLS_IN_FLIGHT: usize = 4;

impl CallHandler for OpenAiAgent {
    fn on_start(&mut self, start: &Start, call: &mut Call<'_>) -> Result<(), HandlerError> {
        let params = &start.custom_parameters;
        let agents = &self.config.agents;
        // The name the stream token binds (the session put it in place of any claimed), else the
        // number called (a stream minted by a replica with another file), else the default.
        if let Some(agent) = params
            .get(BOUND_PARAM)
            .and_then(|name| agents.by_name(name))
            .or_else(|| params.get("To").and_then(|to| agents.for_number(to)))
        {
            self.agent = agent.clone();
        }
        agent_log!(call, Info, "agent: {} answers", self.agent.name);
        if let Some(record) = call.record() {
            record.agent = Some(self.agent.name.clone());
            record.model = Some(self.agent.model.clone());
            record.engine = Some("realtime");
        }
        self.params = params.clone();
        let greet = params
            .get("attempt")
            .and_then(|a| a.parse::<u32>().ok())
            .is_none_or(|attempt| attempt <= 1);
        self.per_call = PerCall {
            instructions: self.agent.instructions.clone(),
            greet,
            greeting: self.agent.greeting.clone(),
            voice: self.agent.voice.clone(),
            variables: Default::default(),
        };
        self.ask_config(start, call);
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
        // Before the model's socket opens: keep the latest EARLY_AUDIO_MS of it.
        self.early_bytes += media.audio.len() as u64;
        self.early_audio.push_back(media.payload_base64.to_string());
        while self.early_bytes > EARLY_AUDIO_MS * BYTES_PER_MS {
            let Some(oldest) = self.early_audio.pop_front() else {
                break;
            };
            self.early_bytes -= decoded_len(&oldest);
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
            UpstreamEvent::Failed {
                status: Some(status @ (401 | 403)),
                reason,
            } => {
                // Every replica would get the same answer: no point failing over.
                agent_log!(call, Error, "agent: the model refused OPENAI_API_KEY (HTTP {status}); the caller hears the apology: {reason}");
                self.metrics
                    .agent_model_errors
                    .get_or_create(&[("type", "auth")])
                    .inc();
                self.model_failed(call);
            }
            UpstreamEvent::Failed { reason, .. } => {
                agent_log!(call, Warn, "agent: the model cannot be reached: {reason}");
                call.fail_over("model unavailable");
            }
            UpstreamEvent::Closed { code, reason } => {
                agent_log!(
                    call,
                    Warn,
                    "agent: the model's socket closed {code} {reason}"
                );
                self.model_failed(call);
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
            self.config_answered(answer, call);
            return Ok(());
        }
        let Some(at) = self.tools.pending.iter().position(|t| t.id == id) else {
            return Ok(());
        };
        let tool = self.tools.pending.remove(at);
        let took = tool.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let status = match &answer {
            HttpAnswer::Answered { status, .. } => Some(*status),
            _ => None,
        };
        let (outcome, output) = match answer {
            HttpAnswer::Answered { status, body } if (200..300).contains(&status) => {
                ("ok", String::from_utf8_lossy(&body).into_owned())
            }
            HttpAnswer::Answered { status, .. } => (
                "error",
                json!({"error": format!("the tool answered HTTP {status}")}).to_string(),
            ),
            HttpAnswer::TimedOut => (
                "timeout",
                json!({"error": "the tool did not answer in time"}).to_string(),
            ),
            HttpAnswer::Failed(why) => (
                "error",
                json!({"error": format!("the tool could not be reached: {why}")}).to_string(),
            ),
        };
        agent_log!(
            call,
            Info,
            "agent: tool {} ({}) {outcome} in {} ms",
            tool.name,
            tool.call_id,
            (took * 1000.0) as u64
        );
        self.metrics
            .agent_tool_requests
            .get_or_create(&[
                ("name", tool.name.clone()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        self.metrics.agent_tool_seconds.observe(took);
        let recorded = match outcome {
            "ok" => ToolOutcome::Ok,
            "timeout" => ToolOutcome::Timeout,
            _ => ToolOutcome::Error,
        };
        let (name, call_id) = (tool.name.clone(), tool.call_id.clone());
        Self::record_tool(
            call,
            &name,
            &call_id,
            &tool.arguments,
            tool.start_ms,
            recorded,
            status,
        );
        self.send(
            call,
            json!({"type": "conversation.item.create",
                   "item": {"type": "function_call_output", "call_id": tool.call_id, "output": output}}),
        );
        self.start_tools(call);
        self.request_response(call);
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

/// The headers of a JSON request to the business: Standard Webhooks' three (`webhook-id` = `id`)
/// and the content type.
fn signed_json_headers(
    secret: &crate::webhooks::WebhookSecret,
    id: &str,
    body: &str,
) -> Result<Vec<(String, String)>, crate::webhooks::IdError> {
    let signed = secret.headers(id, body, unix_now())?;
    let mut headers: Vec<(String, String)> = signed
        .pairs()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    headers.push(("content-type".into(), "application/json".into()));
    Ok(headers)
}

/// Fills `{{name}}` placeholders from the call's parameters; one left unfilled is removed (and
/// logged: the prompt would otherwise tell the model about a template).
fn fill_placeholders(
    template: &str,
    params: &std::collections::BTreeMap<String, String>,
    variables: &std::collections::BTreeMap<String, String>,
    call: &Call<'_>,
) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open + 2..].find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = rest[open + 2..open + 2 + close].trim();
        match variables.get(name).or_else(|| params.get(name)) {
            Some(value) => out.push_str(value),
            None => agent_log!(call, Warn, "agent: no value for {{{{{name}}}}}: removed"),
        }
        rest = &rest[open + 2 + close + 2..];
    }
    out.push_str(rest);
    out
}
