//! `HANDLER=openai`: a phone voice agent on OpenAI's Realtime API (the GA interface).
//!
//! Per call: one Realtime WebSocket (`Authorization: Bearer`, no `OpenAI-Beta` header), configured
//! with `session.update` for 8 kHz mu-law both ways (`audio/pcmu`: Twilio's own format, so audio
//! is never transcoded). Caller audio goes out as `input_audio_buffer.append` with Twilio's base64
//! unchanged; each `response.output_audio.delta` goes to Twilio as `media`, followed by a `mark`,
//! so the agent knows exactly how much of each of its answers the caller has heard.
//!
//! Barge-in: when the model reports `input_audio_buffer.speech_started` while some of its audio is
//! still unplayed, Twilio gets `clear` and the model `conversation.item.truncate` for the playing
//! item with `audio_end_ms` = the milliseconds of that item whose marks Twilio returned (mu-law is
//! 8 bytes a millisecond): what the caller really heard, not an estimate from timestamps.
//!
//! Tools: `end_call` (always): the goodbye audio plays out (its mark returns), then the call is
//! hung up through Twilio's REST API. `transfer_call` (with `AGENT_TRANSFER_NUMBER`): `<Dial>`.
//! Failures: the model unreachable at start → 1011 (Twilio retries on another replica); the
//! model's socket closing or an `error` event mid-call → the caller hears a short apology
//! (`<Say>` then `<Hangup/>`, REST) instead of silence.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::call::handler::{
    decoded_len, Call, CallEnd, CallHandler, HandlerError, MediaChunk, UpstreamEvent,
    UpstreamRequest,
};
use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::twilio::messages::Start;

/// What the caller hears when the model goes away mid-call.
pub const APOLOGY: &str = "Sorry, the assistant is unavailable right now. Please call again later.";
/// How long the model's handshake may take before the call is failed over.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One played-or-not chunk of agent audio: the mark sent after it.
struct PendingMark {
    name: String,
    item_id: String,
    /// Milliseconds of `item_id` heard once this mark returns.
    item_end_ms: u64,
}

pub struct OpenAiAgent {
    config: Arc<AgentConfig>,
    metrics: Metrics,
    /// When the model's socket was asked for (connect time).
    connecting: Option<Instant>,
    open: bool,
    /// The caller's `<Parameter>`s, for `{{Name}}` placeholders in the instructions.
    instructions: String,
    /// Agent audio sent to Twilio whose marks have not come back, oldest first.
    marks: VecDeque<PendingMark>,
    mark_seq: u64,
    /// The item now playing and how many of its milliseconds were sent / heard.
    item_id: Option<String>,
    item_sent_ms: u64,
    item_heard_ms: u64,
    /// `end_call` was called: hang up once the last mark returns.
    ending: bool,
    /// For the first-audio latency log line.
    response_asked: Option<Instant>,
    barge_ins: u64,
}

impl OpenAiAgent {
    pub fn new(config: Arc<AgentConfig>, metrics: Metrics) -> Self {
        OpenAiAgent {
            instructions: String::new(),
            config,
            metrics,
            connecting: None,
            open: false,
            marks: VecDeque::new(),
            mark_seq: 0,
            item_id: None,
            item_sent_ms: 0,
            item_heard_ms: 0,
            ending: false,
            response_asked: None,
            barge_ins: 0,
        }
    }

    fn send(&self, call: &mut Call<'_>, event: Value) {
        call.send_upstream_text(event.to_string());
    }

    fn session_update(&self) -> Value {
        let mut tools = vec![json!({
            "type": "function",
            "name": "end_call",
            "description": "End the phone call, after saying goodbye.",
            "parameters": {"type": "object", "properties": {}},
        })];
        if self.config.transfer_number.is_some() {
            tools.push(json!({
                "type": "function",
                "name": "transfer_call",
                "description": "Transfer the caller to a human.",
                "parameters": {"type": "object", "properties": {}},
            }));
        }
        json!({
            "type": "session.update",
            "session": {
                "type": "realtime",
                "model": self.config.model,
                "output_modalities": ["audio"],
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                    "output": {"format": {"type": "audio/pcmu"}, "voice": self.config.voice},
                },
                "instructions": self.instructions,
                "tools": tools,
            }
        })
    }

    fn user_text(&mut self, call: &mut Call<'_>, text: &str) {
        self.send(
            call,
            json!({
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": text}]},
            }),
        );
        self.send(call, json!({"type": "response.create"}));
        self.response_asked = Some(Instant::now());
    }

    fn on_model_event(&mut self, event: Value, call: &mut Call<'_>) {
        match event["type"].as_str().unwrap_or("") {
            "response.output_audio.delta" => {
                let (Some(delta), Some(item)) =
                    (event["delta"].as_str(), event["item_id"].as_str())
                else {
                    return;
                };
                if let Some(asked) = self.response_asked.take() {
                    let waited = asked.elapsed();
                    self.metrics.agent_first_audio.observe(waited.as_secs_f64());
                    log::info!(call_sid = call.call_sid(); "agent: first audio {} ms after the caller stopped (or the response was asked for)", waited.as_millis());
                }
                if self.item_id.as_deref() != Some(item) {
                    self.item_id = Some(item.to_string());
                    self.item_sent_ms = 0;
                    self.item_heard_ms = 0;
                }
                call.media_base64(delta);
                self.item_sent_ms += decoded_len(delta) / 8;
                self.mark_seq += 1;
                let name = format!("agent-{}", self.mark_seq);
                call.mark(&name);
                self.marks.push_back(PendingMark {
                    name,
                    item_id: item.to_string(),
                    item_end_ms: self.item_sent_ms,
                });
            }
            "input_audio_buffer.speech_stopped" => {
                self.response_asked = Some(Instant::now());
            }
            "input_audio_buffer.speech_started" => {
                if self.marks.is_empty() {
                    return;
                }
                // The caller talks over the agent: stop its audio, and tell the model what of
                // the playing item was really heard.
                self.barge_ins += 1;
                self.metrics.agent_barge_ins.inc();
                call.clear();
                if let Some(item) = self.item_id.clone() {
                    log::info!(call_sid = call.call_sid(); "agent: barge-in after {} of {} ms", self.item_heard_ms, self.item_sent_ms);
                    self.send(
                        call,
                        json!({"type": "conversation.item.truncate", "item_id": item,
                               "content_index": 0, "audio_end_ms": self.item_heard_ms}),
                    );
                }
                self.marks.clear();
            }
            "response.output_item.done" => {
                let item = &event["item"];
                if item["type"] != "function_call" {
                    return;
                }
                let name = item["name"].as_str().unwrap_or("");
                log::info!(call_sid = call.call_sid(); "agent: tool call {name}");
                let label = match name {
                    "end_call" => "end_call",
                    "transfer_call" => "transfer_call",
                    _ => "other",
                };
                self.metrics
                    .agent_tool_calls
                    .get_or_create(&[("name", label)])
                    .inc();
                match name {
                    "end_call" => {
                        self.ending = true;
                        if self.marks.is_empty() {
                            call.hang_up();
                        }
                    }
                    "transfer_call" => match self.config.transfer_number.clone() {
                        Some(to) => call.transfer(&to),
                        None => self.tool_output(call, item, "no transfer number is configured"),
                    },
                    _ => self.tool_output(call, item, "unknown tool"),
                }
            }
            "error" => {
                let error = &event["error"];
                log::error!(call_sid = call.call_sid(); "agent: model error {}: {}", error["code"], error["message"]);
                let kind = match (error["code"].as_str(), error["type"].as_str()) {
                    (Some("session_expired"), _) => "session_expired",
                    (Some(c), _) if c.contains("rate_limit") => "rate_limit",
                    (_, Some("server_error")) => "server_error",
                    _ => "other",
                };
                self.metrics
                    .agent_model_errors
                    .get_or_create(&[("type", kind)])
                    .inc();
                call.say_and_hang_up(APOLOGY);
            }
            _ => {}
        }
    }

    fn tool_output(&mut self, call: &mut Call<'_>, item: &Value, output: &str) {
        self.send(
            call,
            json!({"type": "conversation.item.create",
                   "item": {"type": "function_call_output", "call_id": item["call_id"], "output": output}}),
        );
        self.send(call, json!({"type": "response.create"}));
    }
}

impl CallHandler for OpenAiAgent {
    fn on_start(&mut self, start: &Start, call: &mut Call<'_>) -> Result<(), HandlerError> {
        let mut instructions = self.config.instructions.clone();
        for (name, value) in &start.custom_parameters {
            instructions = instructions.replace(&format!("{{{{{name}}}}}"), value);
        }
        self.instructions = instructions;
        self.connecting = Some(Instant::now());
        let sep = if self.config.url.contains('?') {
            '&'
        } else {
            '?'
        };
        call.connect_upstream(UpstreamRequest {
            url: format!("{}{sep}model={}", self.config.url, self.config.model),
            headers: vec![(
                "Authorization".into(),
                format!("Bearer {}", self.config.api_key.expose_secret()),
            )],
            timeout: CONNECT_TIMEOUT,
        });
        Ok(())
    }

    fn on_media(
        &mut self,
        media: &MediaChunk<'_>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        if self.open {
            call.send_upstream_text(format!(
                r#"{{"type":"input_audio_buffer.append","audio":"{}"}}"#,
                media.payload_base64
            ));
        }
        Ok(())
    }

    fn on_dtmf(&mut self, digit: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        if self.open && self.config.dtmf_to_model {
            self.user_text(call, &format!("The caller pressed {digit}"));
        }
        Ok(())
    }

    fn on_mark(&mut self, name: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        // Twilio returns marks in order; a cleared mark comes back too and is already gone.
        while let Some(mark) = self.marks.pop_front() {
            if self.item_id.as_deref() == Some(mark.item_id.as_str()) {
                self.item_heard_ms = mark.item_end_ms;
            }
            if mark.name == name {
                break;
            }
        }
        if self.ending && self.marks.is_empty() {
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
                self.open = true;
                if let Some(started) = self.connecting.take() {
                    let took = started.elapsed();
                    self.metrics.agent_connect.observe(took.as_secs_f64());
                    log::info!(call_sid = call.call_sid(); "agent: model connected in {} ms", took.as_millis());
                }
                let update = self.session_update();
                self.send(call, update);
                if let Some(greeting) = self.config.greeting.clone() {
                    self.user_text(call, &format!("Greet the caller with: {greeting}"));
                }
            }
            UpstreamEvent::Text(text) => match serde_json::from_slice::<Value>(&text) {
                Ok(event) => self.on_model_event(event, call),
                Err(_) => {
                    log::warn!(call_sid = call.call_sid(); "agent: the model sent something that is not JSON")
                }
            },
            UpstreamEvent::Binary(_) => {}
            UpstreamEvent::Failed(why) => {
                log::warn!(call_sid = call.call_sid(); "agent: the model cannot be reached: {why}");
                call.fail_over("model unavailable");
            }
            UpstreamEvent::Closed { code, reason } => {
                log::warn!(call_sid = call.call_sid(); "agent: the model's socket closed {code} {reason}");
                call.say_and_hang_up(APOLOGY);
            }
        }
        Ok(())
    }

    fn on_end(&mut self, end: &CallEnd, call: &mut Call<'_>) {
        log::info!(call_sid = call.call_sid(); "agent: call ended ({}), {} barge-in(s)", end.reason, self.barge_ins);
        // The session closes the model's socket now (1000): no orphan session billing tokens.
    }
}
