//! Call records (docs/records.md): every stream callvisor serves gets a `call.started` record when
//! it starts and a `call.ended` one when it ends, delivered signed to `CALL_EVENTS_URL`.
//!
//! - `record.rs`: what a record says (the JSON contract) and what apps add to it;
//! - `delivery.rs`: the queue, the retries, the give-up log line;
//! - `spool.rs`: `CALL_EVENTS_SPOOL_DIR`, records on disk until delivered.

pub mod delivery;
pub mod record;
pub mod recording;
mod spool;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub use delivery::{Deliveries, DeliverySettings, Record};
pub use record::{AppRecord, CallIdentity, Frames, Role, ToolCallRecord, ToolOutcome, Turn, Usage};

use crate::config::ConfigError;
use crate::webhooks::WebhookSecret;

pub const ENV_CALL_EVENTS_URL: &str = "CALL_EVENTS_URL";
pub const ENV_CALL_EVENTS_TIMEOUT_MS: &str = "CALL_EVENTS_TIMEOUT_MS";
pub const ENV_CALL_EVENTS_MAX_AGE_SECS: &str = "CALL_EVENTS_MAX_AGE_SECS";
pub const ENV_CALL_EVENTS_QUEUE: &str = "CALL_EVENTS_QUEUE";
pub const ENV_CALL_EVENTS_SPOOL_DIR: &str = "CALL_EVENTS_SPOOL_DIR";
pub const ENV_RECORD_MAX_TRANSCRIPT_KIB: &str = "RECORD_MAX_TRANSCRIPT_KIB";
pub const DEFAULT_CALL_EVENTS_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_CALL_EVENTS_MAX_AGE_SECS: u64 = 86_400;
pub const DEFAULT_CALL_EVENTS_QUEUE: usize = 10_000;
pub const DEFAULT_RECORD_MAX_TRANSCRIPT_KIB: usize = 256;

/// `CALL_EVENTS_*` and `RECORD_MAX_TRANSCRIPT_KIB`; `None` without `CALL_EVENTS_URL` (no record
/// is made). `secret` is `WEBHOOK_SECRET`, required with the URL.
pub fn settings_from(
    get: &dyn Fn(&str) -> Option<String>,
    secret: Option<&WebhookSecret>,
) -> Result<Option<RecordSettings>, ConfigError> {
    let Some(url) = get(ENV_CALL_EVENTS_URL).map(|v| v.trim().to_string()) else {
        return Ok(None);
    };
    if !crate::config::valid_base_url(&url) {
        return Err(ConfigError {
            variable: ENV_CALL_EVENTS_URL,
            value: url,
            expected: "an http:// or https:// URL without a query".into(),
        });
    }
    let Some(secret) = secret else {
        return Err(ConfigError {
            variable: crate::config::ENV_WEBHOOK_SECRET,
            value: String::new(),
            expected: format!(
                "{ENV_CALL_EVENTS_URL} gets every call record signed with it (Standard \
                 Webhooks): set whsec_ and the base64 of at least {} random bytes \
                 (docs/records.md)",
                crate::webhooks::MIN_KEY_BYTES
            )
            .into(),
        });
    };
    let number = |name, default, range| crate::config::whole_number(get, name, default, range);
    let timeout = number(
        ENV_CALL_EVENTS_TIMEOUT_MS,
        DEFAULT_CALL_EVENTS_TIMEOUT_MS,
        100..=60_000,
    )?;
    let max_age = number(
        ENV_CALL_EVENTS_MAX_AGE_SECS,
        DEFAULT_CALL_EVENTS_MAX_AGE_SECS,
        1..=30 * 86_400,
    )?;
    let queue = number(
        ENV_CALL_EVENTS_QUEUE,
        DEFAULT_CALL_EVENTS_QUEUE as u64,
        1..=1_000_000,
    )?;
    let transcript_kib = number(
        ENV_RECORD_MAX_TRANSCRIPT_KIB,
        DEFAULT_RECORD_MAX_TRANSCRIPT_KIB as u64,
        1..=16 * 1024,
    )?;
    let spool_dir = get(ENV_CALL_EVENTS_SPOOL_DIR).map(|v| PathBuf::from(v.trim()));
    Ok(Some(RecordSettings {
        delivery: DeliverySettings {
            url,
            secret: secret.clone(),
            timeout: Duration::from_millis(timeout),
            max_age: Duration::from_secs(max_age),
            queue: queue as usize,
            spool_dir,
        },
        transcript_cap: transcript_kib as usize * 1024,
    }))
}

/// What records need from the configuration.
#[derive(Clone, Debug)]
pub struct RecordSettings {
    pub delivery: DeliverySettings,
    /// Bytes of transcript text one record keeps at most.
    pub transcript_cap: usize,
}

/// What a call needs to make its records: where they go, and what every record of this
/// replica says.
#[derive(Clone)]
pub struct Recorder {
    pub deliveries: Deliveries,
    pub replica: String,
    pub app: &'static str,
    pub transcript_cap: usize,
}

/// An outbound call that never reached a stream, as Twilio's status callback tells it.
pub struct Unanswered<'a> {
    pub call_sid: &'a str,
    pub account_sid: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub agent: Option<&'a str>,
    /// When it was placed (from the callback's URL); `None`: now.
    pub placed_at: Option<SystemTime>,
    /// Twilio's `CallStatus`: `busy`, `no-answer`, `failed` or `canceled`.
    pub status: &'a str,
}

/// The `end_reason` of an outbound call Twilio ended with `status` before anyone answered;
/// `None` for any other status.
pub fn unanswered_reason(status: &str) -> Option<&'static str> {
    match status {
        "busy" => Some("busy"),
        "no-answer" => Some("no_answer"),
        "failed" => Some("failed"),
        "canceled" => Some("canceled"),
        _ => None,
    }
}

impl Recorder {
    /// `call.ended` for an outbound call that never reached a stream (`webhook-id`
    /// `rec_<CallSid>_ended`: the same when Twilio repeats its callback). `None` (nothing sent)
    /// when its status is not one of an unanswered call.
    pub fn unanswered(&self, call: &Unanswered<'_>) -> Option<&'static str> {
        let reason = unanswered_reason(call.status)?;
        let now = SystemTime::now();
        let body = serde_json::to_string(&record::UnansweredEnded {
            kind: "call.ended",
            call_sid: call.call_sid,
            stream_sid: None,
            account_sid: call.account_sid,
            from: call.from,
            to: call.to,
            app: self.app,
            agent: call.agent,
            replica: &self.replica,
            attempt: 0,
            direction: "outbound",
            started_at: record::rfc3339_ms(call.placed_at.unwrap_or(now).min(now)),
            ended_at: record::rfc3339_ms(now),
            duration_ms: 0,
            end_reason: reason,
            close_code: None,
            handed_off: false,
            frames: Frames::default(),
        })
        .expect("records serialize");
        let sid: String = call
            .call_sid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(100)
            .collect();
        self.deliveries
            .send(Record::new(format!("rec_{sid}_ended"), "call.ended", body));
        Some(reason)
    }
}

/// One call's records in the making (held by its session).
pub struct CallRecords {
    recorder: Recorder,
    identity: CallIdentity,
    started_at: SystemTime,
    started: Instant,
    /// What the app adds as the call goes.
    pub app: AppRecord,
    pub recording_sid: Option<String>,
    /// An outbound call's `AnsweredBy`, once the stream knows it.
    pub answered_by: Option<String>,
}

/// Everything the session knows when the call ends.
pub struct Ending {
    pub reason: crate::call::handler::EndReason,
    pub code: u16,
    pub transfer_to: Option<String>,
    pub frames: Frames,
}

impl CallRecords {
    /// The call's records, from its `start`.
    pub fn new(recorder: &Recorder, identity: CallIdentity) -> CallRecords {
        CallRecords {
            recorder: recorder.clone(),
            identity,
            started_at: SystemTime::now(),
            started: Instant::now(),
            app: AppRecord::new(recorder.transcript_cap),
            recording_sid: None,
            answered_by: None,
        }
    }

    /// The app has started the call: `call.started` goes out, with the agent it chose.
    pub fn started(&mut self) {
        if let Some(agent) = &self.app.agent {
            self.identity.agent = Some(agent.clone());
        }
        let body = serde_json::to_string(&record::CallStarted {
            kind: "call.started",
            call: &self.identity,
            started_at: record::rfc3339_ms(self.started_at),
        })
        .expect("records serialize");
        self.recorder
            .deliveries
            .send(Record::new(self.id("started"), "call.started", body));
    }

    /// Milliseconds since the stream started (transcript and tool call times).
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The call ended: `call.ended` goes out.
    pub fn end(mut self, ending: Ending) {
        if let Some(agent) = self.app.agent.take() {
            self.identity.agent = Some(agent);
        }
        self.app.finish();
        let reason = self
            .app
            .end_reason
            .filter(|_| {
                // The app's reason refines a hang-up (it hung up because its model failed);
                // a caller who hung up first, a hand-off or a timeout stays what it was.
                ending.reason == crate::call::handler::EndReason::HungUp
            })
            .unwrap_or_else(|| record::end_reason(ending.reason));
        let body = serde_json::to_string(&record::CallEnded {
            kind: "call.ended",
            call: &self.identity,
            started_at: record::rfc3339_ms(self.started_at),
            ended_at: record::rfc3339_ms(SystemTime::now()),
            duration_ms: self.elapsed_ms(),
            end_reason: reason,
            close_code: ending.code,
            transfer_to: ending.transfer_to,
            handed_off: ending.reason == crate::call::handler::EndReason::HandedOff,
            recording_sid: self.recording_sid.clone(),
            answered_by: self.answered_by.clone(),
            frames: ending.frames,
            app: &self.app,
        })
        .expect("records serialize");
        self.recorder
            .deliveries
            .send(Record::new(self.id("ended"), "call.ended", body));
    }

    /// The record's `webhook-id`: one per stream and type, the same on every retry.
    fn id(&self, kind: &str) -> String {
        let sid: String = self
            .identity
            .stream_sid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(100)
            .collect();
        format!("rec_{sid}_{kind}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<RecordSettings>, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| map.get(k).cloned();
        let secret = crate::config::webhook_secret(&get)?;
        settings_from(&get, secret.as_ref())
    }

    const SECRET: (&str, &str) = ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");

    #[test]
    fn every_variable_is_read_and_checked() {
        assert!(settings(&[]).unwrap().is_none(), "no URL, no records");
        let s = settings(&[
            ("CALL_EVENTS_URL", "https://hooks.example.com/calls"),
            SECRET,
            ("CALL_EVENTS_TIMEOUT_MS", "750"),
            ("CALL_EVENTS_MAX_AGE_SECS", "3600"),
            ("CALL_EVENTS_QUEUE", "50"),
            ("CALL_EVENTS_SPOOL_DIR", "/data/spool"),
            ("RECORD_MAX_TRANSCRIPT_KIB", "8"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.delivery.url, "https://hooks.example.com/calls");
        assert_eq!(s.delivery.timeout, Duration::from_millis(750));
        assert_eq!(s.delivery.max_age, Duration::from_secs(3600));
        assert_eq!(s.delivery.queue, 50);
        assert_eq!(s.delivery.spool_dir, Some(PathBuf::from("/data/spool")));
        assert_eq!(s.transcript_cap, 8 * 1024);
        let defaults = settings(&[("CALL_EVENTS_URL", "http://127.0.0.1:9/x"), SECRET])
            .unwrap()
            .unwrap();
        assert_eq!(defaults.delivery.timeout, Duration::from_secs(5));
        assert_eq!(defaults.delivery.max_age, Duration::from_secs(86_400));
        assert_eq!(defaults.delivery.queue, 10_000);
        assert_eq!(defaults.transcript_cap, 256 * 1024);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let url = ("CALL_EVENTS_URL", "https://hooks.example.com/calls");
        let no_secret = settings(&[url]).unwrap_err();
        assert_eq!(no_secret.variable, "WEBHOOK_SECRET");
        for (variable, value) in [
            ("CALL_EVENTS_URL", "ftp://x"),
            ("CALL_EVENTS_TIMEOUT_MS", "0"),
            ("CALL_EVENTS_MAX_AGE_SECS", "forever"),
            ("CALL_EVENTS_QUEUE", "0"),
            ("RECORD_MAX_TRANSCRIPT_KIB", "-1"),
        ] {
            let mut vars = vec![url, SECRET];
            vars.retain(|(k, _)| *k != variable);
            vars.push((variable, value));
            let e = settings(&vars).unwrap_err();
            assert_eq!((e.variable, e.value.as_str()), (variable, value));
        }
    }
}
