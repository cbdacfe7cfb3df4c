//! `--callee`: callsim on the other end of outbound calls. It places each call through the
//! target's `POST /calls` (its `API_TOKEN`), and plays Twilio and the callee for it: the
//! `--twilio-api` stand-in takes the server's *create a call*, then callsim posts the signed
//! status callbacks (`initiated`, `ringing`, `in-progress`), requests the call's `Url` signed and
//! runs its TwiML and stream as for any call ([`caller::run`]), posts the answering-machine
//! callback (a person or a machine, by `--humans`), and `completed` at the end.
//!
//! Every call is accounted for: a person must stay connected until the caller hangs up
//! (`--duration`), a machine must be ended by the server through the REST API (the voicemail
//! message said, or a hang-up), and every call the stand-in created must have been answered.

use std::rc::Rc;
use std::time::Duration;

use callvisor::fakes::twilio_rest::{FakeTwilio, PlacedCall};
use callvisor::twilio::signature::sign;
use serde::Serialize;
use serde_json::{json, Value};

use crate::caller::{self, Ctx};
use crate::report::{CallRecord, Outcome};

/// What `--callee` places and how its callees answer.
pub struct Options {
    /// `POST /calls`'s URL on the target.
    pub calls_url: String,
    pub api_token: String,
    /// The share of callees that are people (the rest are machines).
    pub humans: f64,
    /// `off`, `hangup` or `message`.
    pub detection: String,
    pub voicemail_message: String,
    pub agent: Option<String>,
}

/// How long after the answer Twilio's detection says a person / a machine answered.
const HUMAN_AFTER: Duration = Duration::from_millis(800);
const MACHINE_AFTER: Duration = Duration::from_millis(1500);

impl Options {
    /// Whether call number `i` is answered by a person: exactly `humans` of any run's calls,
    /// spread evenly.
    pub fn human(&self, i: usize) -> bool {
        let share = self.humans.clamp(0.0, 1.0);
        ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
    }

    /// What Twilio's detection reports for a machine in this mode.
    fn machine_answer(&self) -> &'static str {
        if self.detection == "hangup" {
            "machine_start"
        } else {
            "machine_end_beep"
        }
    }
}

/// Places call number `i` and answers it; its record once it has ended.
pub async fn place_and_answer(ctx: Rc<Ctx>, opts: Rc<Options>, i: usize) -> CallRecord {
    let api = ctx.api.clone().expect("--callee needs --twilio-api");
    let human = opts.human(i);
    let failed = |reason: String| {
        let mut record = empty_record(format!("call #{i}"));
        record.reason = Some(reason);
        record.callee = Some(if human { "human" } else { "machine" });
        record
    };
    let mut body = json!({"to": ctx.to, "from": ctx.from, "machine_detection": opts.detection});
    if opts.detection == "message" {
        body["voicemail_message"] = json!(opts.voicemail_message);
    }
    if let Some(agent) = &opts.agent {
        body["agent"] = json!(agent);
    }
    let response = ctx
        .client
        .post(&opts.calls_url)
        .insert_header(("Authorization", format!("Bearer {}", opts.api_token)))
        .send_json(&body)
        .await;
    let mut response = match response {
        Ok(response) => response,
        Err(_) => return failed("POST /calls failed".into()),
    };
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if response.status().as_u16() != 201 {
        let code = answer["code"]
            .as_u64()
            .map_or(String::new(), |c| format!(" (Twilio {c})"));
        return failed(format!(
            "POST /calls HTTP {}{code}",
            response.status().as_u16()
        ));
    }
    let Some(call_sid) = answer["call_sid"].as_str().map(str::to_string) else {
        return failed("POST /calls answered no call_sid".into());
    };
    let Some(placed) = api.placed_calls().into_iter().find(|c| c.sid == call_sid) else {
        return failed("the call never reached the Twilio API stand-in".into());
    };
    let callbacks = Callbacks {
        ctx: ctx.clone(),
        placed: placed.clone(),
    };
    for status in ["initiated", "ringing"] {
        if let Err(why) = callbacks.status(status).await {
            return failed(why);
        }
    }
    // Twilio's detection runs beside the call, and reports while the stream goes on.
    let detection = (opts.detection != "off").then(|| {
        let (answered_by, after) = if human {
            ("human", HUMAN_AFTER)
        } else {
            (opts.machine_answer(), MACHINE_AFTER)
        };
        let (callbacks, api) = (callbacks.clone(), api.clone());
        actix_web::rt::spawn(async move {
            tokio::time::sleep(after).await;
            callbacks.amd(&api, answered_by).await
        })
    });
    let _ = callbacks.status("in-progress").await;
    let url = placed.param("Url").unwrap_or_default().to_string();
    let mut record = caller::run(&ctx, call_sid, None, Some(url)).await;
    record.callee = Some(if human { "human" } else { "machine" });
    if let Some(detection) = detection {
        // A call that ended before its detection reported still gets the callback, as on Twilio
        // (the server must not mind).
        if let Ok(Err(why)) = detection.await {
            if record.outcome != Outcome::Failed {
                record.outcome = Outcome::Failed;
                record.reason = Some(why);
            }
        }
    }
    let _ = callbacks.status("completed").await;
    record
}

/// Twilio's signed requests about one placed call.
#[derive(Clone)]
struct Callbacks {
    ctx: Rc<Ctx>,
    placed: PlacedCall,
}

impl Callbacks {
    async fn post(&self, url: &str, form: &[(&str, &str)]) -> Result<(), String> {
        let params: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut request = self.ctx.client.post(url);
        if let Some(token) = &self.ctx.auth_token {
            request = request.insert_header(("X-Twilio-Signature", sign(token, url, &params)));
        }
        match request.send_form(&params).await {
            Ok(mut response) => {
                let _ = response.body().await;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} HTTP {}",
                        url.split('?')
                            .next()
                            .unwrap_or(url)
                            .rsplit('/')
                            .next()
                            .unwrap_or(url),
                        response.status().as_u16()
                    ))
                }
            }
            Err(_) => Err("a Twilio callback failed".into()),
        }
    }

    async fn status(&self, status: &str) -> Result<(), String> {
        let Some(url) = self.placed.param("StatusCallback") else {
            return Ok(());
        };
        let call = &self.placed;
        self.post(
            url,
            &[
                ("CallSid", &call.sid),
                ("AccountSid", &call.account_sid),
                ("From", call.param("From").unwrap_or("")),
                ("To", call.param("To").unwrap_or("")),
                ("CallStatus", status),
                ("Direction", "outbound-api"),
                ("ApiVersion", "2010-04-01"),
                ("CallbackSource", "call-progress-events"),
            ],
        )
        .await
    }

    async fn amd(&self, api: &FakeTwilio, answered_by: &str) -> Result<(), String> {
        let Some(url) = self.placed.param("AsyncAmdStatusCallback") else {
            return Ok(());
        };
        api.set_answered_by(&self.placed.sid, answered_by);
        self.post(
            url,
            &[
                ("CallSid", &self.placed.sid),
                ("AccountSid", &self.placed.account_sid),
                ("AnsweredBy", answered_by),
                ("MachineDetectionDuration", "1500"),
            ],
        )
        .await
    }
}

fn empty_record(call_sid: String) -> CallRecord {
    CallRecord {
        call_sid,
        outcome: Outcome::Failed,
        reason: None,
        redirects: 0,
        handoffs: 0,
        streams: 0,
        frames_sent: 0,
        frames_echoed: 0,
        frames_lost_at_close: 0,
        said: None,
        stream_ends: Vec::new(),
        chaos: None,
        reply_ms: Vec::new(),
        callee: None,
    }
}

/// What became of the outbound calls of a `--callee` run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboundSummary {
    /// `POST /calls` answered 201, and the calls the Twilio stand-in created.
    pub placed: usize,
    pub created_at_twilio: usize,
    /// People who stayed connected until they hung up, of those answered by one.
    pub humans: usize,
    pub humans_connected: usize,
    /// Machines, and how the server ended each one: the voicemail message said, or a hang-up.
    pub machines: usize,
    pub messages_left: usize,
    pub machines_hung_up: usize,
    /// Calls that did not end as their callee says they should, or that Twilio created and
    /// callsim never heard of: 0 when every call is accounted for.
    pub unaccounted: usize,
}

/// Every call's record against what its callee should have got.
pub fn summarize(
    records: &[CallRecord],
    created_at_twilio: usize,
    opts: &Options,
) -> OutboundSummary {
    let answered: Vec<&CallRecord> = records
        .iter()
        .filter(|r| r.call_sid.starts_with("CA"))
        .collect();
    let humans = answered
        .iter()
        .filter(|r| r.callee == Some("human"))
        .count();
    let humans_connected = answered
        .iter()
        .filter(|r| r.callee == Some("human") && r.outcome == Outcome::Connected)
        .count();
    let machines = answered
        .iter()
        .filter(|r| r.callee == Some("machine"))
        .count();
    // Without detection nothing tells a machine from a person: it stays connected too.
    let machine_ended = |r: &&&CallRecord| match opts.detection.as_str() {
        "off" => r.outcome == Outcome::Connected,
        _ => r.outcome == Outcome::HungUpByApp,
    };
    let machine_records: Vec<&&CallRecord> = answered
        .iter()
        .filter(|r| r.callee == Some("machine"))
        .collect();
    let messages_left = machine_records
        .iter()
        .filter(|r| machine_ended(r) && r.said.as_deref() == Some(opts.voicemail_message.as_str()))
        .count();
    let machines_hung_up = machine_records
        .iter()
        .filter(|r| machine_ended(r) && r.said.is_none())
        .count();
    let placed = answered.len();
    let accounted = humans_connected + messages_left + machines_hung_up;
    OutboundSummary {
        placed,
        created_at_twilio,
        humans,
        humans_connected,
        machines,
        messages_left,
        machines_hung_up,
        unaccounted: created_at_twilio.max(placed).saturating_sub(accounted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(humans: f64) -> Options {
        Options {
            calls_url: String::new(),
            api_token: String::new(),
            humans,
            detection: "message".into(),
            voicemail_message: "Call back.".into(),
            agent: None,
        }
    }

    #[test]
    fn the_share_of_people_is_exact_and_spread() {
        let opts = options(0.7);
        let people: Vec<bool> = (0..10).map(|i| opts.human(i)).collect();
        assert_eq!(people.iter().filter(|h| **h).count(), 7);
        assert_eq!((0..200).filter(|i| opts.human(*i)).count(), 140);
        assert!((0..10).all(|i| options(1.0).human(i)));
        assert!((0..10).all(|i| !options(0.0).human(i)));
    }

    #[test]
    fn a_call_that_ended_otherwise_than_its_callee_says_is_unaccounted() {
        let opts = options(0.5);
        let record = |sid: &str, callee, outcome, said: Option<&str>| {
            let mut r = empty_record(sid.into());
            r.callee = Some(callee);
            r.outcome = outcome;
            r.said = said.map(String::from);
            r
        };
        let records = vec![
            record("CA1", "human", Outcome::Connected, None),
            record("CA2", "machine", Outcome::HungUpByApp, Some("Call back.")),
            record("CA3", "machine", Outcome::Connected, None),
            record("call #3", "human", Outcome::Failed, None),
        ];
        let summary = summarize(&records, 3, &opts);
        assert_eq!(
            summary,
            OutboundSummary {
                placed: 3,
                created_at_twilio: 3,
                humans: 1,
                humans_connected: 1,
                machines: 2,
                messages_left: 1,
                machines_hung_up: 0,
                unaccounted: 1,
            }
        );
    }
}
