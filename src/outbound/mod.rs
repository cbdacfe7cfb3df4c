//! Outbound calls (docs/apps.md, *Outbound calls*): `POST /calls` places a call through Twilio's
//! REST API with an agent, its parameters and answering-machine detection; the answered call runs
//! like an inbound one.
//!
//! Replicas share nothing, so what a call needs travels in the URLs Twilio is given, which Twilio
//! signs whole (query included) on every request it makes to them:
//!
//! - the call's `Url`: `/incoming-call?direction=outbound&agent=NAME&amd=MODE&p.NAME=VALUE…`
//!   ([`OutboundCall`]): the webhook binds that agent into the stream token and hands the rest to
//!   the stream as `<Parameter>`s (`direction`, `amd`, and each parameter under its own name);
//! - `StatusCallback`: `/call-status?created=MS&agent=NAME`: when the call was placed (time to
//!   answer) and who would have answered (the record of a call nobody answered);
//! - `AsyncAmdStatusCallback`: `/amd-status?mode=MODE&message=TEXT`: what to do with a machine,
//!   wherever the callback lands.
//!
//! - `request.rs`: `POST /calls`'s body, checked field by field, and Twilio's form from it;
//! - `metrics.rs`: `callvisor_outbound_*`.

pub mod metrics;
pub mod request;

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;

use crate::config::ConfigError;

pub const ENV_API_TOKEN: &str = "API_TOKEN";
pub const ENV_OUTBOUND_TIMEOUT_SECS: &str = "OUTBOUND_TIMEOUT_SECS";
pub const ENV_AMD_GREETING_WAIT_MS: &str = "AMD_GREETING_WAIT_MS";
pub const DEFAULT_OUTBOUND_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_AMD_GREETING_WAIT_MS: u64 = 3000;
/// A bearer token shorter than this is refused at start: it guards placing calls on the
/// account's bill.
pub const MIN_API_TOKEN_CHARS: usize = 16;

/// The stream parameter that says a call is outbound (`outbound`; absent: inbound).
pub const DIRECTION_PARAM: &str = "direction";
/// The stream parameter with the call's answering-machine detection mode (`hangup`, `message`;
/// absent: off).
pub const AMD_PARAM: &str = "amd";
/// The query prefix of a request's parameters in the call's `Url` (`p.customer=Ada`).
const PARAM_PREFIX: &str = "p.";

/// `API_TOKEN`, `OUTBOUND_TIMEOUT_SECS`, `AMD_GREETING_WAIT_MS`.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// `POST /calls`'s bearer token; `None`: the route answers 404.
    pub api_token: Option<SecretString>,
    /// How long `POST /calls` keeps retrying Twilio's 429 before answering 503.
    pub timeout: Duration,
    /// How long the stream of an outbound call with detection waits for its answer before the
    /// agent greets anyway.
    pub amd_greeting_wait: Duration,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            api_token: None,
            timeout: Duration::from_secs(DEFAULT_OUTBOUND_TIMEOUT_SECS),
            amd_greeting_wait: Duration::from_millis(DEFAULT_AMD_GREETING_WAIT_MS),
        }
    }
}

/// The outbound variables, checked (exit 2 naming the variable). What placing calls needs from
/// the rest of the configuration (`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`) is checked by
/// `Config::from_lookup`.
pub fn settings_from(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<OutboundSettings, ConfigError> {
    let number = |name, default, range| crate::config::whole_number(get, name, default, range);
    let timeout = number(
        ENV_OUTBOUND_TIMEOUT_SECS,
        DEFAULT_OUTBOUND_TIMEOUT_SECS,
        1..=60,
    )?;
    let wait = number(
        ENV_AMD_GREETING_WAIT_MS,
        DEFAULT_AMD_GREETING_WAIT_MS,
        0..=60_000,
    )?;
    let api_token = match get(ENV_API_TOKEN).map(|v| v.trim().to_string()) {
        None => None,
        Some(token)
            if token.chars().count() >= MIN_API_TOKEN_CHARS
                && token.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(SecretString::from(token))
        }
        Some(_) => {
            return Err(ConfigError {
                variable: ENV_API_TOKEN,
                value: "(hidden)".into(),
                expected: format!(
                    "at least {MIN_API_TOKEN_CHARS} visible ASCII characters (no spaces): a \
                     random string, e.g. `openssl rand -hex 32`"
                )
                .into(),
            })
        }
    };
    Ok(OutboundSettings {
        api_token,
        timeout: Duration::from_secs(timeout),
        amd_greeting_wait: Duration::from_millis(wait),
    })
}

/// `machine_detection`: what happens when a machine answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detection {
    /// No detection: the agent greets whoever answers at once.
    #[default]
    Off,
    /// A machine (or a fax) is hung up on.
    HangUp,
    /// A machine gets `voicemail_message` after its beep, then the call ends; a fax is hung up on.
    Message,
}

impl Detection {
    pub fn as_str(self) -> &'static str {
        match self {
            Detection::Off => "off",
            Detection::HangUp => "hangup",
            Detection::Message => "message",
        }
    }

    pub fn parse(s: &str) -> Option<Detection> {
        match s {
            "off" => Some(Detection::Off),
            "hangup" => Some(Detection::HangUp),
            "message" => Some(Detection::Message),
            _ => None,
        }
    }

    /// Twilio's `MachineDetection` for this mode: `Enable` answers as soon as it knows (a
    /// machine is hung up at once), `DetectMessageEnd` waits for the end of the machine's
    /// greeting (the message goes after the beep).
    pub fn twilio_mode(self) -> Option<&'static str> {
        match self {
            Detection::Off => None,
            Detection::HangUp => Some("Enable"),
            Detection::Message => Some("DetectMessageEnd"),
        }
    }
}

/// Whether a stream with these parameters is an outbound call whose answer (person or machine)
/// is being detected: its agent waits for it before greeting.
pub fn awaits_detection(params: &BTreeMap<String, String>) -> bool {
    params.get(DIRECTION_PARAM).map(String::as_str) == Some("outbound")
        && params
            .get(AMD_PARAM)
            .and_then(|m| Detection::parse(m))
            .is_some_and(|d| d != Detection::Off)
}

/// Whether `AnsweredBy` names a person (or Twilio could not tell, which counts as one: a person
/// must never be left in silence).
pub fn is_person(answered_by: &str) -> bool {
    matches!(answered_by, "human" | "unknown")
}

/// What the call's `Url` carries: the webhook's context for an outbound call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundCall {
    /// The agent that talks (bound into the stream token); `None` for apps without agents.
    pub agent: Option<String>,
    pub detection: Detection,
    /// The request's `parameters`, sorted by name: the stream's `<Parameter>`s.
    pub parameters: Vec<(String, String)>,
}

impl OutboundCall {
    /// The query of the call's `Url` (and of its `<Redirect>`s), without `attempt`.
    pub fn query(&self) -> Vec<(String, String)> {
        let mut query = vec![(DIRECTION_PARAM.to_string(), "outbound".to_string())];
        if let Some(agent) = &self.agent {
            query.push((crate::twilio::signature::BOUND_PARAM.into(), agent.clone()));
        }
        if self.detection != Detection::Off {
            query.push((AMD_PARAM.into(), self.detection.as_str().into()));
        }
        for (name, value) in &self.parameters {
            query.push((format!("{PARAM_PREFIX}{name}"), value.clone()));
        }
        query
    }

    /// Reads a webhook's query: `None` for an inbound call (no `direction=outbound`).
    pub fn from_query(query: &[(String, String)]) -> Option<Result<OutboundCall, String>> {
        let value = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if value(DIRECTION_PARAM).map(String::as_str) != Some("outbound") {
            return None;
        }
        let detection = match value(AMD_PARAM) {
            None => Detection::Off,
            Some(mode) => match Detection::parse(mode) {
                Some(d) => d,
                None => return Some(Err(format!("amd={mode:?} is not hangup or message"))),
            },
        };
        let mut parameters: Vec<(String, String)> = query
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(PARAM_PREFIX)?.to_string(), v.clone())))
            .collect();
        parameters.sort();
        Some(Ok(OutboundCall {
            agent: value(crate::twilio::signature::BOUND_PARAM).cloned(),
            detection,
            parameters,
        }))
    }
}

/// What the replica that gets `/amd-status` does to the call, by detection mode and Twilio's
/// `AnsweredBy`: hang a machine (or a fax) up, leave the message once a machine's greeting has
/// ended (`machine_end_*`; `machine_start` alone waits for it), nothing for a person.
pub fn amd_action(
    detection: Detection,
    answered_by: &str,
    message: Option<&str>,
) -> Option<crate::twilio::rest::CallUpdate> {
    use crate::twilio::rest::CallUpdate;
    let machine_end = answered_by.starts_with("machine_end_");
    match (detection, answered_by) {
        (_, "fax") if detection != Detection::Off => Some(CallUpdate::HangUp),
        (Detection::HangUp, "machine_start") => Some(CallUpdate::HangUp),
        (Detection::HangUp, _) if machine_end => Some(CallUpdate::HangUp),
        (Detection::Message, _) if machine_end => Some(match message {
            Some(text) => CallUpdate::SayAndHangUp { text: text.into() },
            None => CallUpdate::HangUp,
        }),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::rest::CallUpdate;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<OutboundSettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings_from(&|k: &str| map.get(k).cloned())
    }

    #[test]
    fn every_variable_is_read_and_checked() {
        let defaults = settings(&[]).unwrap();
        assert!(defaults.api_token.is_none());
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        assert_eq!(defaults.amd_greeting_wait, Duration::from_millis(3000));
        let set = settings(&[
            ("API_TOKEN", "0123456789abcdef0123"),
            ("OUTBOUND_TIMEOUT_SECS", "4"),
            ("AMD_GREETING_WAIT_MS", "0"),
        ])
        .unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            set.api_token.as_ref().map(|t| t.expose_secret()),
            Some("0123456789abcdef0123")
        );
        assert_eq!(set.timeout, Duration::from_secs(4));
        assert_eq!(set.amd_greeting_wait, Duration::ZERO);
        assert!(!format!("{set:?}").contains("0123456789abcdef"));
        for (variable, value) in [
            ("API_TOKEN", "short"),
            ("API_TOKEN", "0123456789 abcdef0123"),
            ("OUTBOUND_TIMEOUT_SECS", "0"),
            ("OUTBOUND_TIMEOUT_SECS", "61"),
            ("AMD_GREETING_WAIT_MS", "60001"),
            ("AMD_GREETING_WAIT_MS", "soon"),
        ] {
            let e = settings(&[(variable, value)]).unwrap_err();
            assert_eq!(e.variable, variable);
            if variable == "API_TOKEN" {
                assert_eq!(e.value, "(hidden)", "a token never shows");
            } else {
                assert_eq!(e.value, value);
            }
        }
    }

    #[test]
    fn the_url_query_reads_back_as_written() {
        let call = OutboundCall {
            agent: Some("sales".into()),
            detection: Detection::Message,
            parameters: vec![
                ("customer".into(), "Ada & Co = 100%".into()),
                ("topic".into(), "renewal".into()),
            ],
        };
        let query = serde_urlencoded::to_string(call.query()).unwrap();
        assert_eq!(
            query,
            "direction=outbound&agent=sales&amd=message&p.customer=Ada+%26+Co+%3D+100%25&p.topic=renewal"
        );
        let read: Vec<(String, String)> = serde_urlencoded::from_str(&query).unwrap();
        assert_eq!(OutboundCall::from_query(&read), Some(Ok(call)));
        let inbound: Vec<(String, String)> = vec![("attempt".into(), "2".into())];
        assert_eq!(OutboundCall::from_query(&inbound), None);
        let bad: Vec<(String, String)> =
            serde_urlencoded::from_str("direction=outbound&amd=x").unwrap();
        assert!(matches!(OutboundCall::from_query(&bad), Some(Err(_))));
    }

    #[test]
    fn only_outbound_streams_with_detection_wait_for_the_answer() {
        let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(awaits_detection(&params(&[
            ("direction", "outbound"),
            ("amd", "message")
        ])));
        assert!(awaits_detection(&params(&[
            ("direction", "outbound"),
            ("amd", "hangup")
        ])));
        assert!(!awaits_detection(&params(&[("direction", "outbound")])));
        assert!(!awaits_detection(&params(&[("amd", "hangup")])));
        assert!(!awaits_detection(&params(&[
            ("direction", "outbound"),
            ("amd", "off")
        ])));
    }

    #[test]
    fn a_machine_is_hung_up_on_or_left_the_message_after_its_greeting() {
        let say = Some("Call us back.");
        let leave = Some(CallUpdate::SayAndHangUp {
            text: "Call us back.".into(),
        });
        for (detection, answered_by, expected) in [
            (Detection::HangUp, "machine_start", Some(CallUpdate::HangUp)),
            (
                Detection::HangUp,
                "machine_end_beep",
                Some(CallUpdate::HangUp),
            ),
            (Detection::HangUp, "fax", Some(CallUpdate::HangUp)),
            (Detection::HangUp, "human", None),
            (Detection::HangUp, "unknown", None),
            (Detection::Message, "machine_start", None),
            (Detection::Message, "machine_end_beep", leave.clone()),
            (Detection::Message, "machine_end_silence", leave.clone()),
            (Detection::Message, "machine_end_other", leave.clone()),
            (Detection::Message, "fax", Some(CallUpdate::HangUp)),
            (Detection::Message, "human", None),
            (Detection::Off, "machine_end_beep", None),
            (Detection::Off, "fax", None),
        ] {
            assert_eq!(
                amd_action(detection, answered_by, say),
                expected,
                "{detection:?} {answered_by}"
            );
        }
        assert!(is_person("human") && is_person("unknown"));
        assert!(!is_person("machine_start") && !is_person("fax"));
    }
}
