//! `POST /calls`'s body, checked field by field (a 422 names the field and says why), and the
//! form of Twilio's *create a call* built from it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Detection, OutboundCall, AMD_PARAM, DIRECTION_PARAM};
use crate::call::handlers::openai::settings::AgentConfig;
use crate::call::handlers::{CallApp, Route};
use crate::config::is_e164;

/// Ring time when the request says none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Twilio's bounds for `Timeout`.
pub const TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 5..=600;
/// Parameters a call may carry, and their sizes: each becomes a `<Parameter>` (Twilio: name and
/// value under 500 characters) and a part of the call's `Url`.
pub const MAX_PARAMETERS: usize = 32;
pub const MAX_PARAMETER_NAME: usize = 64;
pub const MAX_PARAMETER_VALUE: usize = 400;
/// The call's `Url` query at most (Twilio's URLs are bounded; every parameter travels in it).
pub const MAX_QUERY_CHARS: usize = 3000;
/// `voicemail_message` at most (it travels in `AsyncAmdStatusCallback`'s URL).
pub const MAX_VOICEMAIL_CHARS: usize = 500;
/// Parameter names the stream sets itself.
const RESERVED: [&str; 8] = [
    "CallSid",
    "From",
    "To",
    "attempt",
    "agent",
    "streamToken",
    DIRECTION_PARAM,
    AMD_PARAM,
];
const FIELDS: [&str; 7] = [
    "to",
    "from",
    "agent",
    "parameters",
    "machine_detection",
    "voicemail_message",
    "timeout_secs",
];

/// A body refused: the field (`None`: the body as a whole) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: Option<String>,
    pub error: String,
}

fn invalid(field: &str, error: impl Into<String>) -> Invalid {
    Invalid {
        field: Some(field.to_string()),
        error: error.into(),
    }
}

/// A call to place, every field checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaceCall {
    /// E.164 or a `sip:` URI.
    pub to: String,
    /// E.164: a number of the account.
    pub from: String,
    pub outbound: OutboundCall,
    pub voicemail_message: Option<String>,
    pub timeout_secs: u64,
}

/// Reads and checks `POST /calls`'s JSON body for the running app (`app`: which agents exist,
/// who answers `from`).
pub fn parse(body: &[u8], app: &dyn CallApp) -> Result<PlaceCall, Invalid> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Invalid {
        field: None,
        error: format!("the body is not JSON: {e}"),
    })?;
    let Value::Object(fields) = value else {
        return Err(Invalid {
            field: None,
            error: "the body is not a JSON object".into(),
        });
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(
            unknown,
            format!("unknown field (known: {})", FIELDS.join(", ")),
        ));
    }
    let text = |name: &str| -> Result<Option<&str>, Invalid> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(invalid(name, "must be a string")),
        }
    };
    let to = text("to")?.ok_or_else(|| invalid("to", "required"))?;
    if !(is_e164(to) || is_sip_uri(to)) {
        return Err(invalid(
            "to",
            format!("{to:?} is neither an E.164 number such as +14155550123 nor a sip: URI"),
        ));
    }
    let from = text("from")?.ok_or_else(|| invalid("from", "required"))?;
    if !is_e164(from) {
        return Err(invalid(
            "from",
            format!(
                "{from:?} is not an E.164 number such as +14155550123 (a number of the account)"
            ),
        ));
    }
    let agent = resolve_agent(app, text("agent")?, from)?;
    let parameters = parameters(fields.get("parameters"))?;
    let detection = match text("machine_detection")? {
        None => Detection::Off,
        Some(mode) => Detection::parse(mode).ok_or_else(|| {
            invalid(
                "machine_detection",
                format!("{mode:?} is not off, hangup or message"),
            )
        })?,
    };
    let voicemail_message = match (text("voicemail_message")?, detection) {
        (None, Detection::Message) => {
            return Err(invalid(
                "voicemail_message",
                "required with machine_detection \"message\"",
            ))
        }
        (Some(_), Detection::Off | Detection::HangUp) => {
            return Err(invalid(
                "voicemail_message",
                "only with machine_detection \"message\"",
            ))
        }
        (Some(m), _) if m.trim().is_empty() => return Err(invalid("voicemail_message", "empty")),
        (Some(m), _) if m.chars().count() > MAX_VOICEMAIL_CHARS => {
            return Err(invalid(
                "voicemail_message",
                format!("longer than {MAX_VOICEMAIL_CHARS} characters"),
            ))
        }
        (Some(m), _) if m.chars().any(|c| c.is_control() && c != '\n') => {
            return Err(invalid("voicemail_message", "holds control characters"))
        }
        (m, _) => m.map(str::to_string),
    };
    let timeout_secs = match fields.get("timeout_secs") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_SECS,
        Some(v) => match v.as_u64() {
            Some(n) if TIMEOUT_SECS.contains(&n) => n,
            _ => {
                return Err(invalid(
                    "timeout_secs",
                    format!(
                        "must be a whole number of seconds from {} to {}",
                        TIMEOUT_SECS.start(),
                        TIMEOUT_SECS.end()
                    ),
                ))
            }
        },
    };
    let outbound = OutboundCall {
        agent,
        detection,
        parameters,
    };
    let query_chars = serde_urlencoded::to_string(outbound.query()).map_or(usize::MAX, |q| q.len());
    if query_chars > MAX_QUERY_CHARS {
        return Err(invalid(
            "parameters",
            format!(
                "too long: the call's URL would carry {query_chars} characters of query, more \
                 than {MAX_QUERY_CHARS}"
            ),
        ));
    }
    Ok(PlaceCall {
        to: to.into(),
        from: from.into(),
        outbound,
        voicemail_message,
        timeout_secs,
    })
}

/// The agent that talks: the one named (it must exist), else the one that answers `from`; apps
/// without agents take none.
fn resolve_agent(
    app: &dyn CallApp,
    named: Option<&str>,
    from: &str,
) -> Result<Option<String>, Invalid> {
    let agents = app.downcast_ref::<AgentConfig>().map(|c| &c.agents);
    match (named, agents) {
        (Some(_), None) => Err(invalid(
            "agent",
            format!("HANDLER={} has no agents", app.name()),
        )),
        (Some(name), Some(agents)) => match agents.by_name(name) {
            Some(agent) => Ok(Some(agent.name.clone())),
            None => Err(invalid(
                "agent",
                format!(
                    "no agent is called {name:?} (agents: {})",
                    agents
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        },
        (None, _) => match app.route(from) {
            Route::Any => Ok(None),
            Route::Agent(name) => Ok(Some(name.to_string())),
            Route::NotInService => Err(invalid(
                "agent",
                format!("no agent answers {from} and there is no default agent: name one"),
            )),
        },
    }
}

/// `parameters`: a string map, each name usable as a `<Parameter>` and a placeholder.
fn parameters(value: Option<&Value>) -> Result<Vec<(String, String)>, Invalid> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(invalid(
                "parameters",
                "must be an object of strings (name: value)",
            ))
        }
    };
    if map.len() > MAX_PARAMETERS {
        return Err(invalid(
            "parameters",
            format!("at most {MAX_PARAMETERS} parameters"),
        ));
    }
    let mut sorted = BTreeMap::new();
    for (name, value) in map {
        let field = format!("parameters.{name}");
        let name_ok = !name.is_empty()
            && name.len() <= MAX_PARAMETER_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(invalid(
                &field,
                format!(
                    "a parameter's name is 1 to {MAX_PARAMETER_NAME} letters, digits, '_' or '-'"
                ),
            ));
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(invalid(
                &field,
                format!(
                    "{name} is set by callvisor (reserved: {})",
                    RESERVED.join(", ")
                ),
            ));
        }
        let Value::String(value) = value else {
            return Err(invalid(&field, "must be a string"));
        };
        if value.chars().count() > MAX_PARAMETER_VALUE {
            return Err(invalid(
                &field,
                format!("longer than {MAX_PARAMETER_VALUE} characters"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(&field, "holds control characters"));
        }
        sorted.insert(name.clone(), value.clone());
    }
    Ok(sorted.into_iter().collect())
}

/// The events `StatusCallback` gets, each one a `StatusCallbackEvent` value.
pub const STATUS_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

impl PlaceCall {
    /// Twilio's *create a call* form for this call, placed at `created_ms` by this deployment
    /// reached at `base` (`https://host`): `Url` (the webhook with the call's query),
    /// `StatusCallback` with its four events, `Timeout`, and with detection the async AMD fields.
    pub fn twilio_form(&self, base: &str, created_ms: u64) -> Vec<(&'static str, String)> {
        let encode = |pairs: Vec<(String, String)>| {
            serde_urlencoded::to_string(pairs).expect("strings encode")
        };
        let url = format!(
            "{base}{}?{}",
            crate::http::webhook::PATH,
            encode(self.outbound.query())
        );
        let mut status = vec![("created".to_string(), created_ms.to_string())];
        if let Some(agent) = &self.outbound.agent {
            status.push(("agent".into(), agent.clone()));
        }
        let mut form = vec![
            ("To", self.to.clone()),
            ("From", self.from.clone()),
            ("Url", url),
            (
                "StatusCallback",
                format!(
                    "{base}{}?{}",
                    crate::http::call_status::PATH,
                    encode(status)
                ),
            ),
        ];
        for event in STATUS_EVENTS {
            form.push(("StatusCallbackEvent", event.to_string()));
        }
        form.push(("Timeout", self.timeout_secs.to_string()));
        if let Some(mode) = self.outbound.detection.twilio_mode() {
            let mut amd = vec![(
                "mode".to_string(),
                self.outbound.detection.as_str().to_string(),
            )];
            if let Some(message) = &self.voicemail_message {
                amd.push(("message".into(), message.clone()));
            }
            form.push(("MachineDetection", mode.to_string()));
            form.push(("AsyncAmd", "true".to_string()));
            form.push((
                "AsyncAmdStatusCallback",
                format!(
                    "{base}{}?{}",
                    crate::http::call_status::AMD_PATH,
                    encode(amd)
                ),
            ));
        }
        form
    }
}

/// `sip:user@host[:port][;params]`: what Twilio dials as a SIP call (its own check decides the
/// rest).
fn is_sip_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("sip:") else {
        return false;
    };
    let Some((user, host)) = rest.split_once('@') else {
        return false;
    };
    !user.is_empty()
        && !host.is_empty()
        && !host.starts_with([':', ';'])
        && !s.contains(|c: char| c.is_whitespace() || c.is_control() || "<>\"".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn echo() -> Config {
        Config::from_lookup(|_| None).unwrap()
    }

    fn check(body: &str) -> Result<PlaceCall, Invalid> {
        parse(body.as_bytes(), echo().handler.as_ref())
    }

    fn field_of(body: &str) -> Option<String> {
        check(body).unwrap_err().field
    }

    #[test]
    fn a_complete_body_is_read_with_defaults_for_what_it_leaves_out() {
        let call = check(r#"{"to": "+14155550123", "from": "+15550001111"}"#).unwrap();
        assert_eq!(call.to, "+14155550123");
        assert_eq!(call.timeout_secs, 30);
        assert_eq!(call.outbound, OutboundCall::default());
        let call = check(
            r#"{"to": "sip:alice@pbx.example.com", "from": "+15550001111",
                "parameters": {"customer": "Ada", "order-id": "A1"},
                "machine_detection": "message", "voicemail_message": "Call us back.",
                "timeout_secs": 45}"#,
        )
        .unwrap();
        assert_eq!(
            call.outbound.parameters,
            [
                ("customer".to_string(), "Ada".to_string()),
                ("order-id".to_string(), "A1".to_string())
            ]
        );
        assert_eq!(call.outbound.detection, Detection::Message);
        assert_eq!(call.voicemail_message.as_deref(), Some("Call us back."));
        assert_eq!(call.timeout_secs, 45);
    }

    #[test]
    fn every_bad_field_is_named() {
        let ok = r#""to": "+14155550123", "from": "+15550001111""#;
        for (body, field) in [
            ("not json".to_string(), None),
            ("[1]".to_string(), None),
            (r#"{"from": "+15550001111"}"#.to_string(), Some("to")),
            (
                r#"{"to": "4155550123", "from": "+15550001111"}"#.to_string(),
                Some("to"),
            ),
            (
                r#"{"to": 14155550123, "from": "+15550001111"}"#.to_string(),
                Some("to"),
            ),
            (
                r#"{"to": "sip:nobody", "from": "+15550001111"}"#.to_string(),
                Some("to"),
            ),
            (r#"{"to": "+14155550123"}"#.to_string(), Some("from")),
            (
                r#"{"to": "+14155550123", "from": "sip:a@b"}"#.to_string(),
                Some("from"),
            ),
            (format!(r#"{{{ok}, "agent": "sales"}}"#), Some("agent")),
            (
                format!(r#"{{{ok}, "parameters": "x"}}"#),
                Some("parameters"),
            ),
            (
                format!(r#"{{{ok}, "parameters": {{"n": 1}}}}"#),
                Some("parameters.n"),
            ),
            (
                format!(r#"{{{ok}, "parameters": {{"To": "x"}}}}"#),
                Some("parameters.To"),
            ),
            (
                format!(r#"{{{ok}, "parameters": {{"a b": "x"}}}}"#),
                Some("parameters.a b"),
            ),
            (
                format!(r#"{{{ok}, "parameters": {{"n": "a\nb"}}}}"#),
                Some("parameters.n"),
            ),
            (
                format!(r#"{{{ok}, "machine_detection": "maybe"}}"#),
                Some("machine_detection"),
            ),
            (
                format!(r#"{{{ok}, "machine_detection": "message"}}"#),
                Some("voicemail_message"),
            ),
            (
                format!(r#"{{{ok}, "voicemail_message": "hi"}}"#),
                Some("voicemail_message"),
            ),
            (
                format!(r#"{{{ok}, "timeout_secs": 4}}"#),
                Some("timeout_secs"),
            ),
            (
                format!(r#"{{{ok}, "timeout_secs": 601}}"#),
                Some("timeout_secs"),
            ),
            (
                format!(r#"{{{ok}, "timeout_secs": "30"}}"#),
                Some("timeout_secs"),
            ),
            (format!(r#"{{{ok}, "callback": "x"}}"#), Some("callback")),
        ] {
            assert_eq!(field_of(&body).as_deref(), field, "{body}");
        }
        let long = "x".repeat(MAX_PARAMETER_VALUE);
        let many: Vec<String> = (0..10).map(|n| format!(r#""p{n}": "{long}""#)).collect();
        let body = format!(r#"{{{ok}, "parameters": {{{}}}}}"#, many.join(","));
        assert_eq!(field_of(&body).as_deref(), Some("parameters"));
    }

    #[test]
    fn twilios_form_carries_the_call_in_its_urls() {
        let call = check(
            r#"{"to": "+14155550123", "from": "+15550001111", "parameters": {"customer": "Ada"},
                "machine_detection": "message", "voicemail_message": "Call us back."}"#,
        )
        .unwrap();
        let form = call.twilio_form("https://calls.example.com", 1_700_000_000_000);
        let get = |k: &str| -> Vec<&str> {
            form.iter()
                .filter(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("To"), ["+14155550123"]);
        assert_eq!(get("From"), ["+15550001111"]);
        assert_eq!(
            get("Url"),
            ["https://calls.example.com/incoming-call?direction=outbound&amd=message&p.customer=Ada"]
        );
        assert_eq!(
            get("StatusCallback"),
            ["https://calls.example.com/call-status?created=1700000000000"]
        );
        assert_eq!(
            get("StatusCallbackEvent"),
            ["initiated", "ringing", "answered", "completed"]
        );
        assert_eq!(get("Timeout"), ["30"]);
        assert_eq!(get("MachineDetection"), ["DetectMessageEnd"]);
        assert_eq!(get("AsyncAmd"), ["true"]);
        assert_eq!(
            get("AsyncAmdStatusCallback"),
            ["https://calls.example.com/amd-status?mode=message&message=Call+us+back."]
        );
        let plain = check(r#"{"to": "+14155550123", "from": "+15550001111"}"#).unwrap();
        let form = plain.twilio_form("https://calls.example.com", 1);
        assert!(form
            .iter()
            .all(|(k, _)| !k.contains("Amd") && *k != "MachineDetection"));
    }
}
