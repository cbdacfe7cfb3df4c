//! Twilio's Calls list: `CreateCall` (`POST /2010-04-01/Accounts/{AccountSid}/Calls.json`) and
//! `FetchCall` (`GET …/Calls/{CallSid}.json`), strict like the rest of the fake.
//!
//! A create is checked in this order, with Twilio's status and code:
//!
//! | check | answer |
//! |---|---|
//! | HTTP Basic with the expected pair | 401, 20003 `Authenticate` |
//! | (a 429 the test asked for: [`FakeTwilio::rate_limit_calls`]) | 429, 20429 `Too Many Requests` |
//! | an `application/x-www-form-urlencoded` body | 400, 20001 |
//! | only the parameters Twilio documents for `CreateCall` ([`CALL_PARAMETERS`]), each once but `StatusCallbackEvent` | 400, 20001 `Unknown parameters` |
//! | `To` given | 400, 21201 `No 'To' number is specified` |
//! | `To` E.164 or a `sip:` URI, and not Twilio's magic invalid number [`INVALID_NUMBER`] | 400, 21211 `The 'To' number … is not a valid phone number.` |
//! | `From` given | 400, 21213 `No 'From' number is specified` |
//! | `From` E.164 | 400, 21212 `The 'From' number … is not a valid phone number…` |
//! | exactly one of `Url`, `Twiml`, `ApplicationSid` | 400, 21205 (`Url`) |
//! | `Url`, `FallbackUrl`, `StatusCallback`, `AsyncAmdStatusCallback`: absolute http(s) URLs | 400, 21205 |
//! | `Twiml` that Twilio's TwiML reference allows (the strict reader) | 400, 12100 |
//! | `…Method`s `GET` or `POST`; each `StatusCallbackEvent` (repeated, or space-separated) `initiated`, `ringing`, `answered` or `completed`; `Timeout` a whole number from 5 to 600; `MachineDetection` `Enable` or `DetectMessageEnd`; `AsyncAmd` `true` or `false` | 400, 21200 |
//! | `AsyncAmd`, `AsyncAmdStatusCallback` only with `MachineDetection` | 400, 21200 |
//!
//! and answered 201 with the call (`CA` + 32 hex digits, `status` `queued`, `direction`
//! `outbound-api`, `answered_by` `null`, Twilio's other fields). `FetchCall` answers a call this
//! fake created (or knows as live, or ended) with its current `status` and `answered_by`; any
//! other is 404, 20404. Both go through the fake's per-call counting, delay, injected 500s and
//! lost answers like the other requests (`fail_first`, `delay`, `lose_answers` by CallSid).
//!
//! Decisions where Twilio does not say: the codes for a bad parameter value (21200, as for
//! updates), for a bad URL (21205, whichever parameter), and refusing async AMD fields without
//! `MachineDetection` (Twilio ignores them: a request that sends them alone has a bug).

use actix_web::{web, HttpRequest, HttpResponse};

use super::{admitted, form_of, refused, twilio_error, FakeTwilio, Refused};

/// Twilio's magic test number that is "not a valid phone number" (21211).
pub const INVALID_NUMBER: &str = "+15005550001";

/// The parameters Twilio documents for `CreateCall`.
pub const CALL_PARAMETERS: [&str; 35] = [
    "To",
    "From",
    "Url",
    "Twiml",
    "ApplicationSid",
    "Method",
    "FallbackUrl",
    "FallbackMethod",
    "StatusCallback",
    "StatusCallbackEvent",
    "StatusCallbackMethod",
    "SendDigits",
    "Timeout",
    "Record",
    "RecordingChannels",
    "RecordingStatusCallback",
    "RecordingStatusCallbackMethod",
    "RecordingStatusCallbackEvent",
    "RecordingTrack",
    "SipAuthUsername",
    "SipAuthPassword",
    "MachineDetection",
    "MachineDetectionTimeout",
    "MachineDetectionSpeechThreshold",
    "MachineDetectionSpeechEndThreshold",
    "MachineDetectionSilenceTimeout",
    "AsyncAmd",
    "AsyncAmdStatusCallback",
    "AsyncAmdStatusCallbackMethod",
    "Trim",
    "CallerId",
    "Byoc",
    "CallReason",
    "CallToken",
    "TimeLimit",
];

/// A call created through the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedCall {
    /// `CA` and 32 hex digits.
    pub sid: String,
    pub account_sid: String,
    /// The form as sent, in order.
    pub form: Vec<(String, String)>,
    /// `queued`, then `in-progress` once answered ([`FakeTwilio::live_call`]), `completed` once
    /// ended, or what [`FakeTwilio::set_call_status`] says.
    pub status: String,
    pub answered_by: Option<String>,
}

impl PlacedCall {
    /// The form's value of `name` (its first).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order (`StatusCallbackEvent` repeats).
    pub fn params(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub(super) async fn create_call(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    fake: web::Data<FakeTwilio>,
) -> HttpResponse {
    let account_sid = path.into_inner();
    let response = created(&req, &account_sid, &body, &fake);
    fake.lock().create_answers.push(response.status().as_u16());
    response
}

fn created(req: &HttpRequest, account_sid: &str, body: &[u8], fake: &FakeTwilio) -> HttpResponse {
    // Credentials first (the account's own SID as user, with the auth token), then the rate
    // limit, then the form: Twilio's order.
    if let Err(refusal) = admitted(req, account_sid, "", fake) {
        return refusal.answer();
    }
    {
        let mut state = fake.lock();
        if state.rate_limit > 0 {
            state.rate_limit -= 1;
            return twilio_error(429, 20429, "Too Many Requests");
        }
    }
    let form = match form_of(req, body).and_then(|form| check(&form).map(|()| form)) {
        Ok(form) => form,
        Err(refusal) => return refusal.answer(),
    };
    let call = PlacedCall {
        sid: new_call_sid(),
        account_sid: account_sid.into(),
        form,
        status: "queued".into(),
        answered_by: None,
    };
    let json = call_json(&call);
    fake.lock().placed.push(call);
    HttpResponse::Created().json(json)
}

/// Twilio's 400 for a `CreateCall` form it would not take (see the module's doc).
fn check(form: &[(String, String)]) -> Result<(), Refused> {
    for (n, (key, _)) in form.iter().enumerate() {
        if !CALL_PARAMETERS.contains(&key.as_str()) {
            return Err(refused(400, 20001, &format!("Unknown parameters: {key}")));
        }
        if key != "StatusCallbackEvent" && form[..n].iter().any(|(k, _)| k == key) {
            return Err(refused(400, 20001, &format!("{key} given more than once")));
        }
    }
    let value = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let to = value("To").ok_or_else(|| refused(400, 21201, "No 'To' number is specified"))?;
    if !(crate::config::is_e164(to) || is_sip(to)) || to == INVALID_NUMBER {
        return Err(refused(
            400,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    let from = value("From").ok_or_else(|| refused(400, 21213, "No 'From' number is specified"))?;
    if !crate::config::is_e164(from) {
        return Err(refused(
            400,
            21212,
            &format!(
                "The 'From' number {from} is not a valid phone number, shortcode, or alphanumeric sender ID."
            ),
        ));
    }
    let instructions = ["Url", "Twiml", "ApplicationSid"]
        .iter()
        .filter(|k| value(k).is_some())
        .count();
    if instructions != 1 {
        return Err(refused(
            400,
            21205,
            "Exactly one of Url, Twiml or ApplicationSid must be given",
        ));
    }
    for key in [
        "Url",
        "FallbackUrl",
        "StatusCallback",
        "AsyncAmdStatusCallback",
    ] {
        if value(key).is_some_and(|url| !absolute_url(url)) {
            return Err(refused(
                400,
                21205,
                &format!("{key} is not a valid absolute URL"),
            ));
        }
    }
    if let Some(twiml) = value("Twiml") {
        if let Err(refusal) = super::strict_twiml::read(twiml) {
            return Err(refused(400, refusal.code(), &refusal.to_string()));
        }
    }
    let one_of = |key: &str, allowed: &[&str]| match value(key) {
        Some(v) if !allowed.contains(&v) => Err(refused(
            400,
            21200,
            &format!("{key} {v:?} is not one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    };
    for key in [
        "Method",
        "FallbackMethod",
        "StatusCallbackMethod",
        "AsyncAmdStatusCallbackMethod",
    ] {
        one_of(key, &["GET", "POST"])?;
    }
    one_of("MachineDetection", &["Enable", "DetectMessageEnd"])?;
    one_of("AsyncAmd", &["true", "false"])?;
    for events in form
        .iter()
        .filter(|(k, _)| k == "StatusCallbackEvent")
        .map(|(_, v)| v)
    {
        if let Some(bad) = events
            .split(' ')
            .find(|e| !matches!(*e, "initiated" | "ringing" | "answered" | "completed"))
        {
            return Err(refused(
                400,
                21200,
                &format!(
                    "StatusCallbackEvent {bad:?} is not initiated, ringing, answered or completed"
                ),
            ));
        }
    }
    if let Some(timeout) = value("Timeout") {
        if !timeout.parse::<u32>().is_ok_and(|t| (5..=600).contains(&t)) {
            return Err(refused(
                400,
                21200,
                &format!("Timeout {timeout:?} is not a whole number of seconds from 5 to 600"),
            ));
        }
    }
    if value("MachineDetection").is_none()
        && (value("AsyncAmd").is_some() || value("AsyncAmdStatusCallback").is_some())
    {
        return Err(refused(
            400,
            21200,
            "AsyncAmd and AsyncAmdStatusCallback need MachineDetection",
        ));
    }
    Ok(())
}

pub(super) async fn fetch_call(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    fake: web::Data<FakeTwilio>,
) -> HttpResponse {
    let (account_sid, call) = path.into_inner();
    let Some(call_sid) = call.strip_suffix(".json").map(str::to_string) else {
        return twilio_error(404, 20404, "The requested resource was not found");
    };
    fake.arrived(&call_sid).await;
    let response = match admitted(&req, &account_sid, &call_sid, &fake) {
        Err(refusal) => refusal.answer(),
        Ok(()) => {
            let state = fake.lock();
            let known = state.placed.iter().find(|c| c.sid == call_sid).cloned();
            match known {
                Some(call) => HttpResponse::Ok().json(call_json(&call)),
                // A call the test made live without creating it here (an inbound one).
                None if state.live.contains(&call_sid) || state.ended.contains(&call_sid) => {
                    let status = if state.live.contains(&call_sid) {
                        "in-progress"
                    } else {
                        "completed"
                    };
                    HttpResponse::Ok().json(call_json(&PlacedCall {
                        sid: call_sid.clone(),
                        account_sid: account_sid.clone(),
                        form: Vec::new(),
                        status: status.into(),
                        answered_by: None,
                    }))
                }
                None => twilio_error(404, 20404, "The requested resource was not found"),
            }
        }
    };
    let response = fake.delivered(&call_sid, response);
    fake.lock()
        .answers
        .push((call_sid, response.status().as_u16()));
    response
}

/// A call as Twilio's API shows it.
fn call_json(call: &PlacedCall) -> serde_json::Value {
    let now = jiff::Timestamp::now()
        .strftime("%a, %d %b %Y %H:%M:%S +0000")
        .to_string();
    serde_json::json!({
        "sid": call.sid,
        "account_sid": call.account_sid,
        "to": call.param("To"),
        "to_formatted": call.param("To"),
        "from": call.param("From"),
        "from_formatted": call.param("From"),
        "status": call.status,
        "direction": "outbound-api",
        "answered_by": call.answered_by,
        "api_version": "2010-04-01",
        "caller_name": null,
        "date_created": now,
        "date_updated": now,
        "start_time": null,
        "end_time": null,
        "duration": null,
        "forwarded_from": null,
        "group_sid": null,
        "parent_call_sid": null,
        "phone_number_sid": null,
        "price": null,
        "price_unit": "USD",
        "queue_time": "0",
        "trunk_sid": null,
        "uri": format!("/2010-04-01/Accounts/{}/Calls/{}.json", call.account_sid, call.sid),
        "subresource_uris": {
            "recordings": format!(
                "/2010-04-01/Accounts/{}/Calls/{}/Recordings.json",
                call.account_sid, call.sid
            ),
        },
    })
}

fn absolute_url(url: &str) -> bool {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !url.contains(char::is_whitespace)
}

fn is_sip(to: &str) -> bool {
    to.strip_prefix("sip:")
        .and_then(|rest| rest.split_once('@'))
        .is_some_and(|(user, host)| !user.is_empty() && !host.is_empty())
}

/// `CA` and 32 hex digits, unique in this process.
fn new_call_sid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("CA{nanos:016x}{n:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn code(pairs: &[(&str, &str)]) -> Option<u32> {
        check(&form(pairs)).err().map(|Refused(_, code, _)| code)
    }

    #[test]
    fn a_create_is_checked_like_twilio() {
        let base = [
            ("To", "+14155550123"),
            ("From", "+15550001111"),
            (
                "Url",
                "https://example.com/incoming-call?direction=outbound",
            ),
        ];
        assert_eq!(code(&base), None);
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            code(&all)
        };
        assert_eq!(
            with(&[
                ("StatusCallback", "https://example.com/call-status"),
                ("StatusCallbackEvent", "initiated"),
                ("StatusCallbackEvent", "ringing answered completed"),
                ("Timeout", "30"),
                ("MachineDetection", "DetectMessageEnd"),
                ("AsyncAmd", "true"),
                (
                    "AsyncAmdStatusCallback",
                    "https://example.com/amd-status?mode=message"
                ),
            ]),
            None
        );
        assert_eq!(with(&[("Bogus", "1")]), Some(20001));
        assert_eq!(with(&[("Timeout", "30"), ("Timeout", "40")]), Some(20001));
        assert_eq!(with(&[("StatusCallbackEvent", "queued")]), Some(21200));
        assert_eq!(with(&[("Timeout", "4")]), Some(21200));
        assert_eq!(with(&[("Timeout", "601")]), Some(21200));
        assert_eq!(with(&[("MachineDetection", "Detect")]), Some(21200));
        assert_eq!(
            with(&[("MachineDetection", "Enable"), ("AsyncAmd", "yes")]),
            Some(21200)
        );
        assert_eq!(with(&[("AsyncAmd", "true")]), Some(21200));
        assert_eq!(with(&[("StatusCallback", "/call-status")]), Some(21205));
        assert_eq!(with(&[("Twiml", "<Response/>")]), Some(21205));
        assert_eq!(code(&base[1..]), Some(21201));
        assert_eq!(code(&[base[0], base[2]]), Some(21213));
        assert_eq!(
            code(&[("To", INVALID_NUMBER), base[1], base[2]]),
            Some(21211)
        );
        assert_eq!(code(&[("To", "4155550123"), base[1], base[2]]), Some(21211));
        assert_eq!(code(&[base[0], ("From", "Acme"), base[2]]), Some(21212));
        assert_eq!(code(&[base[0], base[1]]), Some(21205));
        assert_eq!(
            code(&[("To", "sip:alice@pbx.example.com"), base[1], base[2]]),
            None
        );
    }
}
