//! What a call's agent sets up before its model talks, whichever engine runs it: which agent
//! answers, the per-call configuration (`AGENT_CONFIG_URL`), placeholders, the caller's audio
//! from before the model is ready, and the apology when the model goes away.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::json;

use super::agents::Agent;
use super::metrics::AgentMetrics;
use super::settings::AgentConfig;
use super::tools::signed_json_headers;
use crate::call::handler::{decoded_len, Call, HttpAnswer, HttpPost, MediaChunk};
use crate::twilio::messages::Start;
use crate::twilio::signature::BOUND_PARAM;

/// What the caller hears when the model goes away mid-call.
pub const APOLOGY: &str = "Sorry, the assistant is unavailable right now. Please call again later.";
/// Caller audio kept from before the model is ready, at most (the latest of it).
pub const EARLY_AUDIO_MS: u64 = 5_000;
/// The `on_http` id of the per-call configuration request (tools count from 1).
pub const CONFIG_REQUEST: u64 = 0;
/// mu-law at 8 kHz.
pub const BYTES_PER_MS: u64 = 8;

/// The agent answering a call: the one the stream token binds (the session put it in place of
/// any the stream claimed), else the one for the number called (a stream minted by a replica
/// with another file), else the default (else the file's first).
pub fn choose_agent(config: &AgentConfig, start: &Start) -> Arc<Agent> {
    let params = &start.custom_parameters;
    let agents = &config.agents;
    params
        .get(BOUND_PARAM)
        .and_then(|name| agents.by_name(name))
        .or_else(|| params.get("To").and_then(|to| agents.for_number(to)))
        .or_else(|| agents.default_agent())
        .or_else(|| agents.iter().next())
        .expect("configuration has at least one agent")
        .clone()
}

/// What a call runs, before its placeholders are filled: the agent's settings, or what
/// `AGENT_CONFIG_URL` answered for the call.
pub struct PerCall {
    pub instructions: String,
    /// Whether this call greets (not after a hand-off: the caller was greeted).
    pub greet: bool,
    /// An outbound call with answering-machine detection whose callee is not known to be a
    /// person yet: the greeting waits ([`PerCall::callee_known`]).
    pub hold: bool,
    pub greeting: Option<String>,
    pub voice: String,
    /// Values for placeholders, before the stream's parameters.
    pub variables: BTreeMap<String, String>,
    /// The stream's parameters (`From`, `To`, `attempt`, …), for placeholders.
    pub params: BTreeMap<String, String>,
    /// `AGENT_CONFIG_URL`'s answer is awaited: the model's session waits for it.
    pub waiting: bool,
}

impl PerCall {
    /// The agent's settings for this call, and (with `AGENT_CONFIG_URL`) the request for the
    /// call's own, signed, sent now, in parallel with the model's handshake.
    pub fn start(config: &AgentConfig, agent: &Agent, start: &Start, call: &mut Call<'_>) -> Self {
        let params = start.custom_parameters.clone();
        let greet = params
            .get("attempt")
            .and_then(|a| a.parse::<u32>().ok())
            .is_none_or(|attempt| attempt <= 1);
        let mut per_call = PerCall {
            instructions: agent.instructions.clone(),
            greet,
            hold: crate::outbound::awaits_detection(&params),
            greeting: agent.greeting.clone(),
            voice: agent.voice.clone(),
            variables: BTreeMap::new(),
            params,
            waiting: false,
        };
        per_call.waiting = ask_config(config, agent, start, call);
        per_call
    }

    /// `AGENT_CONFIG_URL` answered (or timed out): a 200 with a JSON object replaces what it
    /// names; anything else keeps the agent's own settings (a WARN line, a counter).
    pub fn answered(&mut self, answer: HttpAnswer, metrics: &AgentMetrics, call: &Call<'_>) {
        self.waiting = false;
        let outcome = match answer {
            HttpAnswer::Answered { status: 200, body } => {
                match serde_json::from_slice::<PerCallAnswer>(&body) {
                    Ok(answer) => {
                        answer.apply(self);
                        "ok"
                    }
                    Err(_) => "malformed",
                }
            }
            HttpAnswer::Answered { .. } | HttpAnswer::Failed(_) => "error",
            HttpAnswer::TimedOut => "timeout",
        };
        if outcome != "ok" {
            log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                "agent: AGENT_CONFIG_URL's answer is {outcome}: the agent's own settings apply");
        }
        metrics
            .agent_config
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// The instructions, placeholders filled.
    pub fn instructions(&self, call: &Call<'_>) -> String {
        fill_placeholders(&self.instructions, &self.params, &self.variables, call)
    }

    /// The greeting, placeholders filled; `None` when the call does not greet (or not yet).
    pub fn greeting(&self, call: &Call<'_>) -> Option<String> {
        self.greeting
            .as_ref()
            .filter(|_| self.greet && !self.hold)
            .map(|g| fill_placeholders(g, &self.params, &self.variables, call))
    }

    /// Who answered a held outbound call (`None`: not known in time): a person, or no answer
    /// in time, releases the greeting; a machine (or a fax) never gets it. Whether the greeting
    /// was released (the engine sends it now if its session is already set up).
    pub fn callee_known(&mut self, answered_by: Option<&str>) -> bool {
        if !self.hold {
            return false;
        }
        if answered_by.is_none_or(crate::outbound::is_person) {
            self.hold = false;
            true
        } else {
            self.greet = false;
            false
        }
    }
}

/// `AGENT_CONFIG_URL`'s answer: each field present replaces the agent's.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PerCallAnswer {
    instructions: Option<String>,
    greeting: Option<String>,
    voice: Option<String>,
    variables: Option<BTreeMap<String, String>>,
}

impl PerCallAnswer {
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

/// With `AGENT_CONFIG_URL`: asks the business for this call's settings, signed; the model's
/// session waits for the answer at most `AGENT_CONFIG_TIMEOUT_MS`. Whether it was asked.
fn ask_config(config: &AgentConfig, agent: &Agent, start: &Start, call: &mut Call<'_>) -> bool {
    let (Some(url), Some(secret)) = (&config.config_url, &config.webhook_secret) else {
        return false;
    };
    let params = &start.custom_parameters;
    let body = json!({"call_sid": start.call_sid, "account_sid": start.account_sid,
        "from": params.get("From"), "to": params.get("To"), "agent": agent.name,
        "parameters": params})
    .to_string();
    // One id per call attempt: the same on a retry of it, another after a hand-off.
    let attempt = params.get("attempt").map_or("1", String::as_str);
    let id: String = format!("cfg_{}_{attempt}", start.call_sid)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let Ok(headers) = signed_json_headers(secret, &id, &body) else {
        return false;
    };
    call.http_post(HttpPost {
        id: CONFIG_REQUEST,
        url: url.clone(),
        headers,
        body,
        timeout: config.config_timeout,
    });
    true
}

/// Fills `{{name}}` placeholders from the call's parameters; one left unfilled is removed (and
/// logged: the prompt would otherwise tell the model about a template).
pub fn fill_placeholders(
    template: &str,
    params: &BTreeMap<String, String>,
    variables: &BTreeMap<String, String>,
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
            None => log::warn!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                "agent: no value for {{{{{name}}}}}: removed"),
        }
        rest = &rest[open + 2 + close + 2..];
    }
    out.push_str(rest);
    out
}

/// Caller audio (Twilio's base64, unchanged) that arrived before the model was ready: the latest
/// [`EARLY_AUDIO_MS`] of it, to follow in order once it is.
#[derive(Default)]
pub struct EarlyAudio {
    frames: VecDeque<String>,
    bytes: u64,
}

impl EarlyAudio {
    pub fn push(&mut self, media: &MediaChunk<'_>) {
        self.bytes += media.audio.len() as u64;
        self.frames.push_back(media.payload_base64.to_string());
        while self.bytes > EARLY_AUDIO_MS * BYTES_PER_MS {
            let Some(oldest) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= decoded_len(&oldest);
        }
    }

    /// Everything kept, oldest first; the buffer is empty after.
    pub fn take(&mut self, call: &Call<'_>) -> VecDeque<String> {
        if !self.frames.is_empty() {
            log::debug!(call_sid = call.call_sid(), stream_sid = call.stream_sid();
                "agent: {} ms of caller audio from before the model was ready follow",
                self.bytes / BYTES_PER_MS);
        }
        self.bytes = 0;
        std::mem::take(&mut self.frames)
    }
}

/// The model's handshake failed (`status`: the HTTP status that refused it, if any). A refused
/// key is the apology at once: every replica would get the same answer, no point failing over.
/// Anything else (429, 5xx, unreachable, too slow) fails the call over to another replica.
pub fn handshake_failed(
    status: Option<u16>,
    reason: &str,
    metrics: &AgentMetrics,
    call: &mut Call<'_>,
) {
    let (call_sid, stream_sid) = (call.call_sid().to_string(), call.stream_sid().to_string());
    match status {
        Some(status @ (401 | 403)) => {
            log::error!(call_sid = call_sid.as_str(), stream_sid = stream_sid.as_str();
                "agent: the model refused OPENAI_API_KEY (HTTP {status}); the caller hears the apology: {reason}");
            metrics
                .agent_model_errors
                .get_or_create(&[("type", "auth")])
                .inc();
            apologize(call);
        }
        _ => {
            log::warn!(call_sid = call_sid.as_str(), stream_sid = stream_sid.as_str();
                "agent: the model cannot be reached: {reason}");
            call.fail_over("model unavailable");
        }
    }
}

/// The model cannot go on: the caller hears the apology, the call is hung up, and its record
/// says why.
pub fn apologize(call: &mut Call<'_>) {
    if let Some(record) = call.record() {
        record.end_reason = Some("model_error");
    }
    call.say_and_hang_up(APOLOGY);
}
