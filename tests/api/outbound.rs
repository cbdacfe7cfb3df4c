//! Outbound calls (issue 22): `POST /calls` through the real binary, against the strict fake of
//! Twilio's Calls API and a Twilio emulator of the test's own ([`Emulator`]) that does what
//! Twilio does once a call is created: requests its `Url` signed, follows the TwiML to the
//! stream, and posts signed status and answering-machine callbacks. The model is the strict
//! Realtime fake; the records go to a receiver that verifies every signature.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callvisor::fakes::live::FakeLive;
use callvisor::fakes::realtime::FakeRealtime;
use callvisor::fakes::twilio_rest::{FakeTwilio, PlacedCall, INVALID_NUMBER};
use callvisor::twilio::signature::sign;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::routing::{routed_binary, signature_ok, stream_for, KEY_SID, TOKEN, WEBHOOK_SECRET};

pub(crate) const API_TOKEN: &str = "outbound-test-api-token-0123456789";
pub(crate) const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
/// The business's number (a number of the account), and the sales agent's.
const OURS: &str = "+15550002222";
const CALLEE: &str = "+14155550123";

const AGENTS: &str = r#"
[agents.support]
numbers = ["+15550001111"]
default = true
instructions = "Support for {{From}}."
greeting = "Support here."

[agents.sales]
numbers = ["+15550002222"]
instructions = "You call {{customer}} about their {{topic}}."
greeting = "Hi {{customer}}, this is Acme."
"#;

/// The business's receiver of call records: every record's JSON whose signature verified.
fn record_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let addr = serve_peer(move |cfg| {
        let sink = sink.clone();
        cfg.route(
            "/records",
            actix_web::web::post().to(
                move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                    let sink = sink.clone();
                    async move {
                        if !signature_ok(&req, &body) {
                            return actix_web::HttpResponse::Unauthorized().finish();
                        }
                        sink.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        actix_web::HttpResponse::NoContent().finish()
                    }
                },
            ),
        );
    });
    (format!("http://{addr}/records"), got)
}

/// The record of `kind` for `call_sid`, once it arrives.
async fn record(got: &Mutex<Vec<Value>>, kind: &str, call_sid: &str) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let found = got
            .lock()
            .unwrap()
            .iter()
            .find(|r| r["type"] == kind && r["call_sid"] == call_sid)
            .cloned();
        if let Some(record) = found {
            return record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} for {call_sid}: {:#?}",
            got.lock().unwrap()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary with the agents above, `POST /calls` open with [`API_TOKEN`], records to
/// `records_url`, plus `extra`.
async fn outbound_binary(
    test: &str,
    model: &FakeRealtime,
    twilio: &FakeTwilio,
    records_url: &str,
    extra: &[(&str, &str)],
) -> BinaryApp {
    let mut env = vec![
        ("API_TOKEN", API_TOKEN),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("CALL_EVENTS_URL", records_url),
        // Long enough that only the tests of the wait itself ever reach it.
        ("AMD_GREETING_WAIT_MS", "15000"),
    ];
    env.extend_from_slice(extra);
    routed_binary(&format!("outbound-{test}"), model, twilio, AGENTS, &env).await
}

/// Twilio, as an outbound call meets it: the API that creates calls, then the callee's side.
pub(crate) struct Emulator<'a> {
    pub(crate) app: &'a TestApp,
    pub(crate) twilio: &'a FakeTwilio,
}

impl Emulator<'_> {
    /// `POST /calls` with `body` and the bearer `token`: the status and the JSON answer.
    pub(crate) async fn place_with(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut request = self
            .app
            .client
            .post(format!("{}/calls", self.app.base))
            .insert_header(("content-type", "application/json"));
        if let Some(token) = token {
            request = request.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let mut resp = request.send_body(body.to_string()).await.unwrap();
        let bytes = resp.body().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (resp.status().as_u16(), json)
    }

    /// Places a call that Twilio creates: its CallSid.
    pub(crate) async fn place(&self, body: Value) -> String {
        let (status, answer) = self.place_with(Some(API_TOKEN), &body.to_string()).await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["status"], "queued");
        answer["call_sid"].as_str().unwrap().to_string()
    }

    pub(crate) fn placed(&self, call_sid: &str) -> PlacedCall {
        self.twilio
            .placed_calls()
            .into_iter()
            .find(|c| c.sid == call_sid)
            .expect("the call was created")
    }

    /// A request Twilio makes to one of the call's URLs: signed over the whole URL and `form`.
    async fn post_signed(&self, url: &str, form: &[(&str, &str)]) -> (u16, String) {
        let params: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut resp = self
            .app
            .client
            .post(url)
            .insert_header(("X-Twilio-Signature", sign(TOKEN, url, &params)))
            .send_form(&params)
            .await
            .unwrap();
        let body = resp.body().await.unwrap();
        (
            resp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// The callee picks up: Twilio requests the call's `Url` (`To` the callee, `From` our
    /// number), runs the TwiML and opens its stream: the TwiML and the started stream.
    pub(crate) async fn answer(&self, call_sid: &str) -> (Twiml, TestStream) {
        let call = self.placed(call_sid);
        self.twilio.live_call(call_sid);
        let url = call.param("Url").unwrap();
        let (from, to) = (call.param("From").unwrap(), call.param("To").unwrap());
        let (status, body) = self
            .post_signed(
                url,
                &[
                    ("CallSid", call_sid),
                    ("AccountSid", ACCOUNT),
                    ("From", from),
                    ("To", to),
                    ("CallStatus", "in-progress"),
                    ("Direction", "outbound-api"),
                    ("ApiVersion", "2010-04-01"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let twiml = parse_twiml(&body);
        let stream = stream_for(self.app, call_sid, &twiml, |_| {}).await;
        (twiml, stream)
    }

    /// Twilio's status callback for `status` (`initiated`, `ringing`, `in-progress`, …).
    pub(crate) async fn status(&self, call_sid: &str, status: &str) -> u16 {
        let call = self.placed(call_sid);
        let url = call.param("StatusCallback").unwrap();
        let (from, to) = (call.param("From").unwrap(), call.param("To").unwrap());
        self.post_signed(
            url,
            &[
                ("CallSid", call_sid),
                ("AccountSid", ACCOUNT),
                ("From", from),
                ("To", to),
                ("CallStatus", status),
                ("Direction", "outbound-api"),
                ("ApiVersion", "2010-04-01"),
                ("CallbackSource", "call-progress-events"),
                ("SequenceNumber", "0"),
            ],
        )
        .await
        .0
    }

    /// Answering-machine detection found `answered_by`: the Call resource shows it, and
    /// `AsyncAmdStatusCallback` is told.
    pub(crate) async fn amd(&self, call_sid: &str, answered_by: &str) -> u16 {
        self.twilio.set_answered_by(call_sid, answered_by);
        let call = self.placed(call_sid);
        let url = call.param("AsyncAmdStatusCallback").unwrap();
        self.post_signed(
            url,
            &[
                ("CallSid", call_sid),
                ("AccountSid", ACCOUNT),
                ("AnsweredBy", answered_by),
                ("MachineDetectionDuration", "2410"),
            ],
        )
        .await
        .0
    }
}

/// Waits for a log line holding every one of `needles`.
pub(crate) async fn wait_for_log_with(bin: &BinaryApp, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(line) = bin
            .log_lines()
            .into_iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {needles:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The updates the app (or `/amd-status`) made to `call_sid`, once there is one.
pub(crate) async fn updates_of(twilio: &FakeTwilio, call_sid: &str) -> Vec<Vec<(String, String)>> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let forms: Vec<_> = twilio
            .updates()
            .into_iter()
            .filter(|u| u.call_sid == call_sid)
            .map(|u| u.form)
            .collect();
        if !forms.is_empty() {
            return forms;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no update of {call_sid}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(model: &FakeRealtime, kind: &str) -> usize {
    model.types().iter().filter(|t| *t == kind).count()
}

#[actix_web::test]
async fn without_api_token_there_is_no_route_and_with_it_every_request_is_checked() {
    // No API_TOKEN: no route, whatever is sent.
    let plain = spawn_binary(&[]).await;
    let closed = Emulator {
        app: &plain.app,
        twilio: &FakeTwilio::start(KEY_SID, "key-secret"),
    };
    let body = json!({"to": CALLEE, "from": OURS}).to_string();
    assert_eq!(closed.place_with(Some(API_TOKEN), &body).await.0, 404);
    assert_eq!(closed.place_with(None, &body).await.0, 404);

    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let (records_url, _) = record_receiver();
    let bin = outbound_binary("checks", &model, &twilio, &records_url, &[]).await;
    let twilio_side = Emulator {
        app: &bin.app,
        twilio: &twilio,
    };
    // No token, a wrong one, one of another scheme: 401 with a JSON error.
    for token in [None, Some("outbound-test-api-token-012345678X"), Some("")] {
        let (status, answer) = twilio_side.place_with(token, &body).await;
        assert_eq!(status, 401, "{token:?}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("bearer"),
            "{answer}"
        );
    }
    let mut resp = bin
        .app
        .client
        .post(format!("{}/calls", bin.app.base))
        .insert_header(("Authorization", format!("Basic {API_TOKEN}")))
        .send_body(body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap(),
        "Bearer"
    );
    let _ = resp.body().await;

    // A bad body: 422 naming the field.
    for (body, field) in [
        (json!({"from": OURS}), Some("to")),
        (json!({"to": "555-0123", "from": OURS}), Some("to")),
        (json!({"to": CALLEE, "from": "Acme"}), Some("from")),
        (
            json!({"to": CALLEE, "from": OURS, "agent": "nobody"}),
            Some("agent"),
        ),
        (
            json!({"to": CALLEE, "from": OURS, "parameters": {"customer": 7}}),
            Some("parameters.customer"),
        ),
        (
            json!({"to": CALLEE, "from": OURS, "parameters": {"To": "+1"}}),
            Some("parameters.To"),
        ),
        (
            json!({"to": CALLEE, "from": OURS, "machine_detection": "sometimes"}),
            Some("machine_detection"),
        ),
        (
            json!({"to": CALLEE, "from": OURS, "machine_detection": "message"}),
            Some("voicemail_message"),
        ),
        (
            json!({"to": CALLEE, "from": OURS, "timeout_secs": 3}),
            Some("timeout_secs"),
        ),
        (json!({"to": CALLEE, "from": OURS, "ring": 3}), Some("ring")),
        (json!(["not", "an", "object"]), None),
    ] {
        let (status, answer) = twilio_side
            .place_with(Some(API_TOKEN), &body.to_string())
            .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), field, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert!(
        twilio.create_answers().is_empty(),
        "nothing refused reached Twilio"
    );

    // Callbacks Twilio did not sign (or signed for another URL) are refused.
    let form = [
        ("CallSid", "CA00000000000000000000000000000009"),
        ("AccountSid", ACCOUNT),
        ("AnsweredBy", "machine_end_beep"),
        ("CallStatus", "no-answer"),
    ];
    for path in [
        "/amd-status?mode=hangup",
        "/call-status?created=1",
        "/incoming-call?direction=outbound&agent=sales",
    ] {
        let url = format!("{}{path}", bin.app.base);
        let mut unsigned = bin.app.client.post(&url).send_form(&form).await.unwrap();
        assert_eq!(unsigned.status(), 403, "{path}");
        let _ = unsigned.body().await;
        // Signed for the URL without its query: the query is what it would change.
        let params: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bare = url.split('?').next().unwrap().to_string();
        let mut forged = bin
            .app
            .client
            .post(&url)
            .insert_header(("X-Twilio-Signature", sign(TOKEN, &bare, &params)))
            .send_form(&form)
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{path}");
        let _ = forged.body().await;
    }
    assert!(
        twilio.updates().is_empty(),
        "a forged callback hung nothing up"
    );
}

#[actix_web::test]
async fn a_placed_call_reaches_the_stream_with_the_requests_agent_and_parameters() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let (records_url, records) = record_receiver();
    let bin = outbound_binary("placed", &model, &twilio, &records_url, &[]).await;
    let app = &bin.app;
    let twilio_side = Emulator {
        app,
        twilio: &twilio,
    };
    let call_sid = twilio_side
        .place(
            json!({"to": CALLEE, "from": OURS, "agent": "sales", "timeout_secs": 20,
                      "parameters": {"customer": "Ada Lovelace", "topic": "renewal & billing"}}),
        )
        .await;

    // What Twilio was asked: the call's context in its URLs, callbacks with their events.
    let placed = twilio_side.placed(&call_sid);
    assert_eq!(placed.account_sid, ACCOUNT);
    assert_eq!(placed.param("To"), Some(CALLEE));
    assert_eq!(placed.param("From"), Some(OURS));
    assert_eq!(
        placed.param("Url"),
        Some(
            format!(
                "{}/incoming-call?direction=outbound&agent=sales&p.customer=Ada+Lovelace&p.topic=renewal+%26+billing",
                app.base
            )
            .as_str()
        )
    );
    let status_url = placed.param("StatusCallback").unwrap();
    assert!(
        status_url.starts_with(&format!("{}/call-status?created=", app.base))
            && status_url.ends_with("&agent=sales"),
        "{status_url}"
    );
    assert_eq!(
        placed.params("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    assert_eq!(placed.param("Timeout"), Some("20"));
    assert_eq!(placed.param("MachineDetection"), None, "detection is off");

    assert_eq!(twilio_side.status(&call_sid, "initiated").await, 204);
    assert_eq!(twilio_side.status(&call_sid, "ringing").await, 204);
    let (twiml, mut stream) = twilio_side.answer(&call_sid).await;
    assert_eq!(twilio_side.status(&call_sid, "in-progress").await, 204);
    let has = |name: &str, value: &str| {
        twiml
            .parameters
            .contains(&(name.to_string(), value.to_string()))
    };
    assert!(has("agent", "sales"), "{twiml:?}");
    assert!(has("direction", "outbound"), "{twiml:?}");
    assert!(has("customer", "Ada Lovelace") && has("topic", "renewal & billing"));
    assert!(
        has("From", OURS) && has("To", CALLEE),
        "as Twilio gives them"
    );
    assert!(!twiml.parameters.iter().any(|(k, _)| k == "amd"));
    // A bounce keeps the call's context.
    let redirect = twiml.redirect.as_deref().unwrap();
    assert!(
        redirect.contains("direction=outbound&agent=sales&p.customer=Ada+Lovelace")
            && redirect.ends_with("&attempt=2"),
        "{redirect}"
    );

    // The request's agent (not the one for the callee's number), its placeholders filled from
    // the request's parameters; detection off: it greets at once.
    let update = model.wait_for("session.update", 1).await;
    assert_eq!(
        update["session"]["instructions"],
        "You call Ada Lovelace about their renewal & billing."
    );
    let greeting = model.wait_for("conversation.item.create", 1).await;
    let said = greeting["item"]["content"][0]["text"].as_str().unwrap();
    assert!(said.contains("Hi Ada Lovelace, this is Acme."), "{said}");

    let stream_sid = stream_sid_for(&call_sid);
    stream.stop(&stream_sid, &call_sid).await;
    assert_eq!(stream.expect_close().await.0, 1000);
    twilio.call_ended(&call_sid);
    assert_eq!(twilio_side.status(&call_sid, "completed").await, 204);

    let started = record(&records, "call.started", &call_sid).await;
    assert_eq!(started["direction"], "outbound");
    assert_eq!(started["agent"], "sales");
    assert_eq!(
        (started["from"].as_str(), started["to"].as_str()),
        (Some(OURS), Some(CALLEE))
    );
    let ended = record(&records, "call.ended", &call_sid).await;
    assert_eq!(ended["direction"], "outbound");
    assert_eq!(ended["end_reason"], "caller_hung_up");
    assert!(ended.get("answered_by").is_none(), "{ended}");
    assert_eq!(
        records.lock().unwrap().len(),
        2,
        "an answered call: its stream's two records"
    );

    let m = scrape(app).await;
    assert_eq!(
        metric(&m, "callvisor_outbound_calls_total{outcome=created}"),
        1.0
    );
    assert_eq!(
        metric(&m, "callvisor_outbound_time_to_answer_seconds_count"),
        1.0
    );
    for status in ["initiated", "ringing", "in-progress", "completed"] {
        let key = format!("callvisor_outbound_call_status_total{{status={status}}}");
        assert_eq!(metric(&m, &key), 1.0, "{status}");
    }
    assert!(model.errors().is_empty(), "{:#?}", model.errors());
}

#[actix_web::test]
async fn a_machine_gets_the_message_or_a_hang_up_and_never_the_greeting_and_a_person_is_greeted() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let (records_url, records) = record_receiver();
    let bin = outbound_binary("amd", &model, &twilio, &records_url, &[]).await;
    let app = &bin.app;
    let twilio_side = Emulator {
        app,
        twilio: &twilio,
    };
    const VOICEMAIL: &str = "Hi, this is Acme about your renewal. Please call us back.";
    let with_message = json!({"to": CALLEE, "from": OURS,
        "parameters": {"customer": "Ada", "topic": "renewal"},
        "machine_detection": "message", "voicemail_message": VOICEMAIL});

    // A voicemail: the message after its beep, through REST, and not a word from the agent.
    let machine = twilio_side.place(with_message.clone()).await;
    let placed = twilio_side.placed(&machine);
    assert_eq!(placed.param("MachineDetection"), Some("DetectMessageEnd"));
    assert_eq!(placed.param("AsyncAmd"), Some("true"));
    assert_eq!(
        placed.param("AsyncAmdStatusCallback"),
        Some(
            format!(
                "{}/amd-status?mode=message&message=Hi%2C+this+is+Acme+about+your+renewal.+Please+call+us+back.",
                app.base
            )
            .as_str()
        )
    );
    assert!(placed.param("Url").unwrap().contains("&amd=message&"));
    let (twiml, mut stream) = twilio_side.answer(&machine).await;
    assert!(twiml
        .parameters
        .contains(&("amd".to_string(), "message".to_string())));
    model.wait_for("session.update", 1).await;
    // The voicemail's own greeting plays: the model must not hear it (it would answer it).
    let sid = stream_sid_for(&machine);
    stream.media(&sid, 1, "AAAA").await;
    assert_eq!(twilio_side.amd(&machine, "machine_end_beep").await, 204);
    let forms = updates_of(&twilio, &machine).await;
    assert_eq!(
        forms,
        [vec![(
            "Twiml".to_string(),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>{}</Say><Hangup/></Response>",
                VOICEMAIL
            )
        )]]
    );
    wait_for_log_with(
        &bin,
        &[&machine, "answering-machine detection: machine_end_beep"],
    )
    .await;
    // Twilio runs the new TwiML: the stream ends.
    stream.stop(&sid, &machine).await;
    assert_eq!(stream.expect_close().await.0, 1000);
    let ended = record(&records, "call.ended", &machine).await;
    assert_eq!(ended["answered_by"], "machine_end_beep");
    assert_eq!(ended["direction"], "outbound");
    for never in [
        "conversation.item.create",
        "response.create",
        "input_audio_buffer.append",
    ] {
        assert_eq!(count(&model, never), 0, "{never}: {:?}", model.types());
    }

    // A person: the greeting waits for the result, then goes; the model hears the callee from
    // then on.
    let person = twilio_side.place(with_message).await;
    let (_, mut stream) = twilio_side.answer(&person).await;
    model.wait_for("session.update", 2).await;
    let sid = stream_sid_for(&person);
    stream.media(&sid, 1, "AAAA").await;
    wait_for_log_with(&bin, &[&person, "agent: sales answers"]).await;
    assert_eq!(
        count(&model, "conversation.item.create"),
        0,
        "no greeting yet"
    );
    assert_eq!(twilio_side.amd(&person, "human").await, 204);
    let greeting = model.wait_for("conversation.item.create", 1).await;
    let said = greeting["item"]["content"][0]["text"].as_str().unwrap();
    assert!(said.contains("Hi Ada, this is Acme."), "{said}");
    stream.media(&sid, 2, "AQID").await;
    let heard = model.wait_for("input_audio_buffer.append", 1).await;
    assert_eq!(heard["audio"], "AQID", "only what came after the answer");
    stream.stop(&sid, &person).await;
    assert_eq!(stream.expect_close().await.0, 1000);
    assert_eq!(
        record(&records, "call.ended", &person).await["answered_by"],
        "human"
    );
    assert!(
        !twilio.updates().iter().any(|u| u.call_sid == person),
        "a person is left alone"
    );

    // hangup mode: a machine is hung up on as soon as it is detected.
    let hung_up = twilio_side
        .place(json!({"to": CALLEE, "from": OURS, "machine_detection": "hangup"}))
        .await;
    let placed = twilio_side.placed(&hung_up);
    assert_eq!(placed.param("MachineDetection"), Some("Enable"));
    assert_eq!(
        placed.param("AsyncAmdStatusCallback"),
        Some(format!("{}/amd-status?mode=hangup", app.base).as_str())
    );
    let (_, mut stream) = twilio_side.answer(&hung_up).await;
    model.wait_for("session.update", 3).await;
    assert_eq!(twilio_side.amd(&hung_up, "machine_start").await, 204);
    assert_eq!(
        updates_of(&twilio, &hung_up).await,
        [vec![("Status".to_string(), "completed".to_string())]]
    );
    assert!(!twilio.is_live(&hung_up));
    wait_for_log_with(
        &bin,
        &[&hung_up, "answering-machine detection: machine_start"],
    )
    .await;
    let sid = stream_sid_for(&hung_up);
    stream.stop(&sid, &hung_up).await;
    assert_eq!(stream.expect_close().await.0, 1000);
    assert_eq!(
        count(&model, "conversation.item.create"),
        1,
        "only the person's greeting"
    );

    let m = scrape(app).await;
    for (answered_by, n) in [
        ("machine_end_beep", 1.0),
        ("human", 1.0),
        ("machine_start", 1.0),
    ] {
        let key = format!("callvisor_outbound_answered_by_total{{answered_by={answered_by}}}");
        assert_eq!(metric(&m, &key), n, "{answered_by}");
    }
    assert_eq!(
        metric(&m, "callvisor_outbound_amd_wait_total{outcome=known}"),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "callvisor_call_control_total{action=say_hangup,outcome=ok}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "callvisor_call_control_total{action=hangup,outcome=ok}"),
        1.0
    );
    assert!(model.errors().is_empty(), "{:#?}", model.errors());
}

#[actix_web::test]
async fn without_a_result_in_time_the_agent_greets_anyway() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let (records_url, records) = record_receiver();
    // The wait is what this test is about: short, and nothing else here depends on time.
    let bin = outbound_binary(
        "amd-wait",
        &model,
        &twilio,
        &records_url,
        &[("AMD_GREETING_WAIT_MS", "400")],
    )
    .await;
    let twilio_side = Emulator {
        app: &bin.app,
        twilio: &twilio,
    };
    let call_sid = twilio_side
        .place(
            json!({"to": CALLEE, "from": OURS, "machine_detection": "hangup",
                      "parameters": {"customer": "Ada", "topic": "renewal"}}),
        )
        .await;
    let (_, mut stream) = twilio_side.answer(&call_sid).await;
    let greeting = model.wait_for("conversation.item.create", 1).await;
    assert!(greeting["item"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Hi Ada"));
    wait_for_log_with(
        &bin,
        &[
            &call_sid,
            "answering-machine detection: no result within 400 ms",
        ],
    )
    .await;
    let sid = stream_sid_for(&call_sid);
    stream.stop(&sid, &call_sid).await;
    assert_eq!(stream.expect_close().await.0, 1000);
    let ended = record(&records, "call.ended", &call_sid).await;
    assert!(ended.get("answered_by").is_none(), "{ended}");
    let m = scrape(&bin.app).await;
    assert_eq!(
        metric(&m, "callvisor_outbound_amd_wait_total{outcome=timed_out}"),
        1.0
    );
}

#[actix_web::test]
async fn twilios_refusals_are_retried_or_answered_and_an_unanswered_call_gets_its_record() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let (records_url, records) = record_receiver();
    let bin = outbound_binary(
        "refusals",
        &model,
        &twilio,
        &records_url,
        &[("OUTBOUND_TIMEOUT_SECS", "2")],
    )
    .await;
    let app = &bin.app;
    let twilio_side = Emulator {
        app,
        twilio: &twilio,
    };
    let call = json!({"to": CALLEE, "from": OURS}).to_string();

    // Two 429s (the account's calls per second): retried, then created.
    twilio.rate_limit_calls(2);
    let (status, answer) = twilio_side.place_with(Some(API_TOKEN), &call).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(twilio.create_answers(), [429, 429, 201]);
    assert_eq!(twilio.placed_calls().len(), 1, "one call, not three");

    // Twilio's magic invalid number: its code and message, as a 502.
    let invalid = json!({"to": INVALID_NUMBER, "from": OURS}).to_string();
    let (status, answer) = twilio_side.place_with(Some(API_TOKEN), &invalid).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["code"], 21211);
    assert_eq!(
        answer["message"],
        format!("The 'To' number {INVALID_NUMBER} is not a valid phone number.")
    );

    // 429 past OUTBOUND_TIMEOUT_SECS: 503, and nothing created.
    twilio.rate_limit_calls(1000);
    let (status, answer) = twilio_side.place_with(Some(API_TOKEN), &call).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["code"], 20429);
    twilio.rate_limit_calls(0);
    assert_eq!(twilio.placed_calls().len(), 1);

    // An answered call's end is its stream's to record, not the callback's.
    let first = twilio.placed_calls()[0].sid.clone();
    assert_eq!(twilio_side.status(&first, "completed").await, 204);

    // Nobody answers: Twilio's status callback makes the call's only record.
    let unanswered = twilio_side
        .place(json!({"to": CALLEE, "from": OURS, "agent": "sales"}))
        .await;
    for status in ["initiated", "ringing"] {
        assert_eq!(twilio_side.status(&unanswered, status).await, 204);
    }
    twilio.set_call_status(&unanswered, "no-answer");
    assert_eq!(twilio_side.status(&unanswered, "no-answer").await, 204);
    let ended = record(&records, "call.ended", &unanswered).await;
    for (key, value) in [
        ("direction", json!("outbound")),
        ("end_reason", json!("no_answer")),
        ("duration_ms", json!(0)),
        ("stream_sid", Value::Null),
        ("close_code", Value::Null),
        ("from", json!(OURS)),
        ("to", json!(CALLEE)),
        ("agent", json!("sales")),
        ("app", json!("openai")),
        ("account_sid", json!(ACCOUNT)),
        ("attempt", json!(0)),
        ("handed_off", json!(false)),
    ] {
        assert_eq!(ended[key], value, "{key} in {ended}");
    }
    let at = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    assert!(
        at(&ended["started_at"]) <= at(&ended["ended_at"]),
        "{ended}"
    );
    // Busy is recorded too; by then, had the completed call's callback made a record (sent
    // before both), it would be there.
    let busy = twilio_side.place(json!({"to": CALLEE, "from": OURS})).await;
    assert_eq!(twilio_side.status(&busy, "busy").await, 204);
    assert_eq!(
        record(&records, "call.ended", &busy).await["end_reason"],
        "busy"
    );
    let got = records.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:#?}");

    let m = scrape(app).await;
    assert_eq!(
        metric(&m, "callvisor_outbound_calls_total{outcome=created}"),
        3.0
    );
    assert_eq!(
        metric(&m, "callvisor_outbound_calls_total{outcome=failed_21xxx}"),
        1.0
    );
    assert_eq!(
        metric(&m, "callvisor_outbound_calls_total{outcome=rate_limited}"),
        1.0
    );
    assert!(metric(&m, "callvisor_outbound_rate_limited_retries_total") >= 2.0);
    assert_eq!(
        metric(&m, "callvisor_outbound_call_status_total{status=no-answer}"),
        1.0
    );
    assert!(model.received().is_empty(), "no call reached the agent");
}

/// The GPT-Live engine holds its greeting the same way: a person known while `session.start` is
/// still unanswered is greeted once the session starts; a machine never hears a word.
#[actix_web::test]
async fn an_outbound_live_agent_greets_a_person_only_and_never_a_machine() {
    let (model, twilio) = (
        FakeLive::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let dir = std::env::temp_dir().join(format!("callvisor-outbound-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agents.toml");
    std::fs::write(
        &file,
        r#"
[agents.desk]
default = true
engine = "live"
backend_model = "gpt-5.5"
instructions = "You call {{customer}} for Acme."
greeting = "Hello {{customer}}, this is Acme."
"#,
    )
    .unwrap();
    let bin = spawn_binary(&[
        ("HANDLER", "openai"),
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_LIVE_URL", model.url.as_str()),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_API_BASE_URL", twilio.base.as_str()),
        ("TWILIO_API_KEY_SID", KEY_SID),
        ("TWILIO_API_KEY_SECRET", "key-secret"),
        ("AGENTS_FILE", file.to_str().unwrap()),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("API_TOKEN", API_TOKEN),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("AMD_GREETING_WAIT_MS", "15000"),
    ])
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let twilio_side = Emulator {
        app: &bin.app,
        twilio: &twilio,
    };
    let body = json!({"to": CALLEE, "from": OURS, "parameters": {"customer": "Ada"},
        "machine_detection": "message", "voicemail_message": "Please call Acme back."});

    // A person, known while session.start is still unanswered: the greeting goes once it is.
    model.hold_start();
    let person = twilio_side.place(body.clone()).await;
    let (_, mut call) = twilio_side.answer(&person).await;
    let start = model.wait_for("session.start", 1).await;
    assert_eq!(start["session"]["instructions"], "You call Ada for Acme.");
    let sid = stream_sid_for(&person);
    call.media(&sid, 1, "AAAA").await;
    assert_eq!(twilio_side.amd(&person, "human").await, 204);
    wait_for_log_with(&bin, &[&person, "answering-machine detection: human"]).await;
    assert_eq!(model.types(), ["session.start"], "nothing before it starts");
    model.release_start().await;
    let greeting = model.wait_for("session.commentary.append", 1).await;
    assert!(
        greeting["content"]
            .as_str()
            .unwrap()
            .contains("Hello Ada, this is Acme."),
        "{greeting}"
    );
    call.media(&sid, 2, "AQID").await;
    let heard = model.wait_for("session.input_audio.append", 1).await;
    assert_eq!(heard["audio"], "AQID", "not what was said during the wait");
    call.stop(&sid, &person).await;
    assert_eq!(call.expect_close().await.0, 1000);

    // A machine: the session starts, the agent neither speaks nor hears; the message replaces
    // it after the beep.
    let machine = twilio_side.place(body).await;
    let (_, mut call) = twilio_side.answer(&machine).await;
    model.wait_for("session.start", 2).await;
    let sid = stream_sid_for(&machine);
    call.media(&sid, 1, "AAAA").await;
    assert_eq!(twilio_side.amd(&machine, "machine_end_beep").await, 204);
    let forms = updates_of(&twilio, &machine).await;
    assert!(
        forms[0][0]
            .1
            .contains("<Say>Please call Acme back.</Say><Hangup/>"),
        "{forms:?}"
    );
    wait_for_log_with(
        &bin,
        &[&machine, "answering-machine detection: machine_end_beep"],
    )
    .await;
    call.stop(&sid, &machine).await;
    assert_eq!(call.expect_close().await.0, 1000);
    let types = model.types();
    let n = |kind: &str| types.iter().filter(|t| *t == kind).count();
    assert_eq!(
        n("session.commentary.append"),
        1,
        "the person only: {types:?}"
    );
    assert_eq!(
        n("session.input_audio.append"),
        1,
        "the machine unheard: {types:?}"
    );
    assert!(model.errors().is_empty(), "{:#?}", model.errors());
}
