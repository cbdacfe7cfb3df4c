//! What a call's record says: `call.started` when its stream starts, `call.ended` when it ends.
//! The field names are a contract with the business's backend (docs/records.md): add fields,
//! never rename one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::call::handler::EndReason;

/// `call.ended`'s `end_reason`: how the business sees it, from how the session saw it (an app
/// may say more precisely, see [`AppRecord::end_reason`]).
pub fn end_reason(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Stop => "caller_hung_up",
        EndReason::ClientClosed | EndReason::ClientGone => "connection_lost",
        EndReason::StartTimeout => "start_timeout",
        EndReason::IdleTimeout => "idle_timeout",
        EndReason::ProtocolError | EndReason::Unauthenticated => "protocol_error",
        // Closed 1011: Twilio runs the `<Redirect>`, the call goes on elsewhere.
        EndReason::HandlerFailed | EndReason::FailedOver => "failed_over",
        EndReason::Superseded => "superseded",
        EndReason::HandedOff => "handed_off",
        EndReason::NotReading => "not_reading",
        EndReason::HungUp => "app_hung_up",
        EndReason::Transferred => "transferred",
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-12-03T01:02:03.456Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => "1970-01-01T00:00:00.000Z".into(),
    }
}

/// Who the call is, from `start` and the stream's parameters; shared by both records.
#[derive(Debug, Clone, Serialize)]
pub struct CallIdentity {
    pub call_sid: String,
    pub stream_sid: String,
    pub account_sid: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `HANDLER`: echo, bridge, openai.
    pub app: &'static str,
    /// The agent answering (its name), `null` for apps without agents.
    pub agent: Option<String>,
    pub replica: String,
    /// 1 for the call's first try; a bounced or handed-off call comes back with the next.
    pub attempt: u32,
    /// `inbound`, or `outbound` for a call placed through `POST /calls`.
    pub direction: &'static str,
}

/// `call.started`.
#[derive(Debug, Serialize)]
pub struct CallStarted<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub call: &'a CallIdentity,
    pub started_at: String,
}

/// `call.ended`.
#[derive(Debug, Serialize)]
pub struct CallEnded<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub call: &'a CallIdentity,
    pub started_at: String,
    pub ended_at: String,
    pub duration_ms: u64,
    pub end_reason: &'static str,
    /// The stream's close code (1006: the connection dropped without one).
    pub close_code: u16,
    /// Where a `transferred` call went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_to: Option<String>,
    /// The call goes on on another replica, in a stream with the next `attempt`.
    pub handed_off: bool,
    /// The Twilio recording started for this call (`RECORD_CALLS`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_sid: Option<String>,
    /// An outbound call with answering-machine detection: Twilio's `AnsweredBy`, when the stream
    /// learnt it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    pub frames: Frames,
    #[serde(flatten)]
    pub app: &'a AppRecord,
}

/// `call.ended` of an outbound call that never reached a stream: busy, not answered, failed or
/// canceled (Twilio's status callback says which). The fields of a stream's `call.ended` that
/// have no value without a stream are `null` (`stream_sid`, `close_code`) or zero.
#[derive(Debug, Serialize)]
pub struct UnansweredEnded<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub call_sid: &'a str,
    pub stream_sid: Option<&'a str>,
    pub account_sid: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub app: &'static str,
    pub agent: Option<&'a str>,
    pub replica: &'a str,
    /// 0: no try of the call reached callvisor.
    pub attempt: u32,
    pub direction: &'static str,
    /// When the call was placed (`POST /calls`), and when Twilio said it ended.
    pub started_at: String,
    pub ended_at: String,
    pub duration_ms: u64,
    /// `busy`, `no_answer`, `failed`, `canceled`.
    pub end_reason: &'static str,
    pub close_code: Option<u16>,
    pub handed_off: bool,
    pub frames: Frames,
}

/// Frames counted on the call's two sides.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Frames {
    /// Media frames from Twilio, and to Twilio.
    #[serde(rename = "in")]
    pub in_: u64,
    pub out: u64,
    /// Frames to Twilio never sent: queued for a peer closed for not reading.
    pub dropped_out: u64,
    /// Frames to the app's upstream (bot, model), from it, and dropped on the way to it.
    pub upstream_in: u64,
    pub upstream_out: u64,
    pub upstream_dropped: u64,
}

/// A turn of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Caller,
    Agent,
}

#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    /// Milliseconds from the stream's start.
    pub start_ms: u64,
    pub end_ms: u64,
    /// An agent turn the caller talked over: cut off after `heard_ms`.
    pub interrupted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heard_ms: Option<u64>,
    /// The API's item, to match later events to the turn; not in the record.
    #[serde(skip)]
    pub item_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolOutcome {
    Ok,
    Error,
    Timeout,
}

/// One tool the model called, and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallRecord {
    pub name: String,
    pub call_id: String,
    /// As the model gave them: parsed JSON, or the text when it is not JSON.
    pub arguments: Value,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub outcome: ToolOutcome,
    /// The business's HTTP status, for the agent's own tools.
    pub status: Option<u16>,
}

/// Tokens, summed over the call's responses (`response.done`'s `usage`; a live agent's backend
/// `response.completed`'s), and a live agent's billed audio time.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Usage {
    /// GPT-Live: the session's audio seconds (its latest `usage.seconds`: not a sum).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    pub responses: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub input_token_details: InputTokens,
    pub output_token_details: OutputTokens,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct InputTokens {
    pub text_tokens: u64,
    pub audio_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct OutputTokens {
    pub text_tokens: u64,
    pub audio_tokens: u64,
}

impl Usage {
    /// Adds one response's `usage` object (missing fields count 0).
    pub fn add(&mut self, usage: &Value) {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        self.responses += 1;
        self.input_tokens += n(&usage["input_tokens"]);
        self.output_tokens += n(&usage["output_tokens"]);
        self.total_tokens += n(&usage["total_tokens"]);
        let input = &usage["input_token_details"];
        self.input_token_details.text_tokens += n(&input["text_tokens"]);
        self.input_token_details.audio_tokens += n(&input["audio_tokens"]);
        self.input_token_details.cached_tokens += n(&input["cached_tokens"]);
        let output = &usage["output_token_details"];
        self.output_token_details.text_tokens += n(&output["text_tokens"]);
        self.output_token_details.audio_tokens += n(&output["audio_tokens"]);
    }

    /// Adds one Responses API `usage` (a live agent's backend): tokens, cached input tokens.
    pub fn add_responses(&mut self, usage: &Value) {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        self.responses += 1;
        self.input_tokens += n(&usage["input_tokens"]);
        self.output_tokens += n(&usage["output_tokens"]);
        self.total_tokens += n(&usage["total_tokens"]);
        self.input_token_details.cached_tokens +=
            n(&usage["input_tokens_details"]["cached_tokens"]);
    }
}

/// What an app adds to its call's record while the call runs ([`Call::record`]). Echo and
/// bridge add nothing; the agent adds its name, model, transcript, tool calls and usage.
///
/// [`Call::record`]: crate::call::handler::Call::record
#[derive(Debug, Default, Serialize)]
pub struct AppRecord {
    /// The app's own reason, when it knows better than the session (`model_error`: the agent
    /// hung up because its model failed).
    #[serde(skip)]
    pub end_reason: Option<&'static str>,
    #[serde(skip)]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Vec<Turn>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transcript_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub barge_ins: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Bytes of transcript text kept, and the most allowed (`RECORD_MAX_TRANSCRIPT_KIB`).
    #[serde(skip)]
    transcript_bytes: usize,
    #[serde(skip)]
    transcript_cap: usize,
}

/// Tool calls one record keeps at most (a model looping on a tool must not grow it forever).
pub const MAX_TOOL_CALLS: usize = 256;

impl AppRecord {
    pub fn new(transcript_cap: usize) -> Self {
        AppRecord {
            transcript_cap,
            ..Default::default()
        }
    }

    /// Sets the text of the turn of `item_id` (adding the turn the first time); times widen to
    /// cover both. Past the transcript's cap the text is left out and the record says so.
    pub fn turn(&mut self, role: Role, item_id: &str, text: &str, start_ms: u64, end_ms: u64) {
        let turns = self.transcript.get_or_insert_with(Vec::new);
        let at = turns
            .iter()
            .rposition(|t| t.item_id == item_id && t.role == role);
        let old_len = at.map_or(0, |i| turns[i].text.len());
        let fits = self.transcript_bytes - old_len + text.len() <= self.transcript_cap;
        if !fits {
            self.transcript_truncated = true;
        }
        match at {
            Some(i) => {
                let turn = &mut turns[i];
                if fits {
                    turn.text = text.to_string();
                    self.transcript_bytes = self.transcript_bytes - old_len + text.len();
                }
                turn.start_ms = turn.start_ms.min(start_ms);
                turn.end_ms = turn.end_ms.max(end_ms);
            }
            None if fits => {
                self.transcript_bytes += text.len();
                turns.push(Turn {
                    role,
                    text: text.to_string(),
                    start_ms,
                    end_ms: end_ms.max(start_ms),
                    interrupted: false,
                    heard_ms: None,
                    item_id: item_id.to_string(),
                });
            }
            None => {}
        }
    }

    /// The agent turn of `item_id` was talked over after `heard_ms` of it.
    pub fn interrupted(&mut self, item_id: &str, start_ms: u64, heard_ms: u64) {
        if self
            .transcript
            .as_ref()
            .is_none_or(|t| !t.iter().any(|t| t.item_id == item_id))
        {
            self.turn(Role::Agent, item_id, "", start_ms, start_ms + heard_ms);
        }
        if let Some(turn) = self
            .transcript
            .as_mut()
            .and_then(|t| t.iter_mut().rfind(|t| t.item_id == item_id))
        {
            turn.interrupted = true;
            turn.heard_ms = Some(heard_ms);
            turn.end_ms = turn.start_ms + heard_ms;
        }
    }

    pub fn tool_call(&mut self, call: ToolCallRecord) {
        let calls = self.tool_calls.get_or_insert_with(Vec::new);
        if calls.len() < MAX_TOOL_CALLS {
            calls.push(call);
        }
    }

    /// The turns in call order (by start; a caller's transcript arrives after the agent's
    /// answer has begun).
    pub fn finish(&mut self) {
        if let Some(turns) = &mut self.transcript {
            turns.sort_by_key(|t| t.start_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_259_723_456);
        assert_eq!(rfc3339_ms(t), "2026-12-03T01:02:03.456Z");
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn turns_are_upserted_capped_and_sorted() {
        let mut r = AppRecord::new(20);
        r.turn(Role::Agent, "a1", "Hello there", 100, 900);
        r.turn(Role::Caller, "c1", "Hi", 50, 80);
        // The final transcript replaces the deltas' text.
        r.turn(Role::Agent, "a1", "Hello there!", 100, 1000);
        // Past the cap: left out, and said so.
        r.turn(Role::Caller, "c2", "a long sentence...", 2000, 2500);
        r.interrupted("a1", 100, 400);
        r.finish();
        let turns = r.transcript.as_ref().unwrap();
        assert_eq!(turns.len(), 2);
        assert_eq!(
            (turns[0].role, turns[0].text.as_str()),
            (Role::Caller, "Hi")
        );
        assert_eq!(turns[1].text, "Hello there!");
        assert!(turns[1].interrupted);
        assert_eq!((turns[1].end_ms, turns[1].heard_ms), (500, Some(400)));
        assert!(r.transcript_truncated);
    }

    #[test]
    fn usage_sums_every_part() {
        let mut u = Usage::default();
        let one = serde_json::json!({"total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
            "input_token_details": {"text_tokens": 5, "audio_tokens": 15, "cached_tokens": 4},
            "output_token_details": {"text_tokens": 3, "audio_tokens": 7}});
        u.add(&one);
        u.add(&one);
        assert_eq!(u.responses, 2);
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens),
            (40, 20, 60)
        );
        assert_eq!(u.input_token_details.cached_tokens, 8);
        assert_eq!(u.output_token_details.audio_tokens, 14);
    }
}
