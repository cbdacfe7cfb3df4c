//! `RECORD_CALLS`: Twilio records each call once, through its REST API. The strict fake of the
//! Recordings list first, then the once-per-call rule against it, then the real binary: a call's
//! stream start makes one request with the right form, a hand-off to another replica none, and a
//! failure leaves the call alone.

use std::sync::{Arc, Mutex};

use callvisor::call::session::{ensure_recording, RecordingOutcome};
use callvisor::fakes::twilio_rest::FakeTwilio;
use callvisor::metrics::Metrics;
use callvisor::records::recording::{Channels, RecordingSettings};
use callvisor::twilio::rest::{CallControl, Credentials};
use callvisor::twilio::signature::sign;
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
const TOKEN: &str = "recordings-auth-token";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STATUS_URL: &str = "https://example.com/rec-status";
const FORM: &str = "application/x-www-form-urlencoded";

/// A form, as written in a test.
type Fields<'a> = &'a [(&'a str, &'a str)];

fn dual() -> RecordingSettings {
    RecordingSettings {
        channels: Channels::Dual,
        status_url: Some(STATUS_URL.into()),
    }
}

fn control(twilio: &FakeTwilio) -> CallControl {
    CallControl::new(
        &twilio.base,
        Credentials::ApiKey {
            sid: KEY_SID.into(),
            secret: SecretString::from("key-secret".to_string()),
        },
        None,
        Metrics::new(),
    )
}

/// The methods of the call's recording requests, in order.
fn methods(twilio: &FakeTwilio, call_sid: &str) -> Vec<&'static str> {
    twilio
        .recording_requests(call_sid)
        .iter()
        .map(|r| r.method)
        .collect()
}

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One raw request to the call's Recordings list: the status, Twilio's error code (when it is
/// one) and the JSON body.
async fn raw(
    twilio: &FakeTwilio,
    call_sid: &str,
    form: Option<&[(&str, &str)]>,
) -> (u16, Option<u64>, Value) {
    let url = format!(
        "{}/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}/Recordings.json",
        twilio.base
    );
    let client = awc::Client::default();
    let mut resp = match form {
        Some(fields) => client
            .post(url)
            .basic_auth(KEY_SID, "key-secret")
            .insert_header(("content-type", FORM))
            .send_body(serde_urlencoded::to_string(fields).unwrap())
            .await
            .unwrap(),
        None => client
            .get(url)
            .basic_auth(KEY_SID, "key-secret")
            .send()
            .await
            .unwrap(),
    };
    let json: Value = resp.json().await.unwrap();
    (resp.status().as_u16(), json["code"].as_u64(), json)
}

#[actix_web::test]
async fn the_fake_records_a_live_call_as_twilio_does_and_refuses_what_twilio_refuses() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    twilio.live_call("CArec");
    let bad: [(Fields, u16, u64); 8] = [
        (&[("RecordingChannel", "dual")], 400, 20001),
        (
            &[("RecordingChannels", "dual"), ("RecordingChannels", "dual")],
            400,
            20001,
        ),
        (&[("RecordingChannels", "stereo")], 400, 21200),
        (&[("RecordingTrack", "caller")], 400, 21200),
        (
            &[("RecordingStatusCallbackEvent", "completed ready")],
            400,
            21200,
        ),
        (&[("RecordingStatusCallbackMethod", "PUT")], 400, 21200),
        (&[("RecordingStatusCallback", "/rec-status")], 400, 21205),
        (&[("RecordingStatusCallback", "https://")], 400, 21205),
    ];
    for (fields, status, code) in bad {
        let (got, got_code, json) = raw(&twilio, "CArec", Some(fields)).await;
        assert_eq!((got, got_code), (status, Some(code)), "{fields:?}: {json}");
    }
    assert!(
        twilio.recordings("CArec").is_empty(),
        "no refused request records"
    );

    // Twilio's documented form: 201, the recording in progress.
    let form = [
        ("RecordingChannels", "dual"),
        ("RecordingStatusCallback", STATUS_URL),
        ("RecordingStatusCallbackEvent", "completed absent"),
    ];
    let (status, _, created) = raw(&twilio, "CArec", Some(&form)).await;
    assert_eq!(status, 201, "{created}");
    let sid = created["sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("RE") && sid.len() == 34, "{sid}");
    assert_eq!(created["status"], "in-progress");
    assert_eq!(created["channels"], 2);
    assert_eq!(created["call_sid"], "CArec");
    assert_eq!(created["source"], "StartCallRecordingAPI");
    // Twilio takes a second one on the same call: the double recording callvisor must avoid.
    let (status, _, second) = raw(&twilio, "CArec", Some(&[])).await;
    assert_eq!((status, second["channels"].as_u64()), (201, Some(1)));
    let (status, _, list) = raw(&twilio, "CArec", None).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sid"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [second["sid"].as_str().unwrap(), &sid],
        "newest first"
    );
    assert_eq!(twilio.recordings("CArec")[0].form, owned(&form));

    // The call ends: its recordings with it; a new one is refused (Twilio's 21220).
    twilio.call_ended("CArec");
    assert!(twilio
        .recordings("CArec")
        .iter()
        .all(|r| r.status == "completed"));
    assert_eq!(raw(&twilio, "CArec", Some(&[])).await.1, Some(21220));
    assert_eq!(raw(&twilio, "CArec", None).await.0, 200, "still listed");
    // A call Twilio never had: 404 both ways.
    assert_eq!(raw(&twilio, "CAnever", Some(&[])).await.1, Some(20404));
    assert_eq!(raw(&twilio, "CAnever", None).await.1, Some(20404));
    assert_eq!(
        methods(&twilio, "CArec").len(),
        8 + 3 + 2,
        "every request is kept"
    );
}

#[actix_web::test]
async fn the_first_stream_of_a_call_starts_one_recording_with_one_request() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    twilio.live_call("CAfirst");
    let outcome = ensure_recording(&control(&twilio), ACCOUNT, "CAfirst", &dual(), 1).await;
    let recordings = twilio.recordings("CAfirst");
    assert_eq!(recordings.len(), 1);
    assert_eq!(
        outcome,
        RecordingOutcome::Started(recordings[0].sid.clone())
    );
    assert_eq!(methods(&twilio, "CAfirst"), ["POST"]);
    assert_eq!(recordings[0].account_sid, ACCOUNT);
    assert_eq!(
        recordings[0].form,
        owned(&[
            ("RecordingChannels", "dual"),
            ("RecordingStatusCallback", STATUS_URL),
            ("RecordingStatusCallbackEvent", "completed absent"),
        ])
    );
}

#[actix_web::test]
async fn a_later_stream_reuses_the_calls_recording_and_records_a_bounced_call() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let control = control(&twilio);

    // Handed off: the first stream's recording goes on; one GET, no second POST.
    twilio.live_call("CAhanded");
    let RecordingOutcome::Started(sid) =
        ensure_recording(&control, ACCOUNT, "CAhanded", &dual(), 1).await
    else {
        panic!("not started")
    };
    let again = ensure_recording(&control, ACCOUNT, "CAhanded", &dual(), 2).await;
    assert_eq!(again, RecordingOutcome::Exists(sid));
    assert_eq!(methods(&twilio, "CAhanded"), ["POST", "GET"]);
    assert_eq!(twilio.recordings("CAhanded").len(), 1);

    // Bounced: no stream was served before, nothing records the call: GET, then POST.
    twilio.live_call("CAbounced");
    let outcome = ensure_recording(&control, ACCOUNT, "CAbounced", &dual(), 3).await;
    assert!(
        matches!(outcome, RecordingOutcome::Started(_)),
        "{outcome:?}"
    );
    assert_eq!(methods(&twilio, "CAbounced"), ["GET", "POST"]);

    // Stopped mid-call by the business: not restarted by a later stream.
    twilio.live_call("CAstopped");
    ensure_recording(&control, ACCOUNT, "CAstopped", &dual(), 1).await;
    twilio.stop_recordings("CAstopped");
    let outcome = ensure_recording(&control, ACCOUNT, "CAstopped", &dual(), 2).await;
    assert!(
        matches!(outcome, RecordingOutcome::Exists(_)),
        "{outcome:?}"
    );
    assert_eq!(twilio.recordings("CAstopped").len(), 1);
}

#[actix_web::test]
async fn a_lost_answer_is_looked_up_not_sent_again_and_a_5xx_is_retried_once_after_a_look() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let control = control(&twilio);

    // The recording started but its answer was lost: the list finds it.
    twilio.live_call("CAlost");
    twilio.lose_answers("CAlost", 1);
    let outcome = ensure_recording(&control, ACCOUNT, "CAlost", &dual(), 1).await;
    let recordings = twilio.recordings("CAlost");
    assert_eq!(recordings.len(), 1, "recorded once");
    assert_eq!(
        outcome,
        RecordingOutcome::Started(recordings[0].sid.clone())
    );
    assert_eq!(methods(&twilio, "CAlost"), ["POST", "GET"]);

    // A 500 that did nothing: the list is empty, the POST goes once more.
    twilio.live_call("CAflaky");
    twilio.fail_first("CAflaky", 1);
    let outcome = ensure_recording(&control, ACCOUNT, "CAflaky", &dual(), 1).await;
    assert!(
        matches!(outcome, RecordingOutcome::Started(_)),
        "{outcome:?}"
    );
    assert_eq!(methods(&twilio, "CAflaky"), ["POST", "GET", "POST"]);
    assert_eq!(twilio.answers("CAflaky"), [500, 200, 201]);

    // Twilio down: bounded (a POST, a GET and its one retry), never a blind second POST.
    twilio.live_call("CAdown");
    twilio.fail_first("CAdown", 10);
    let outcome = ensure_recording(&control, ACCOUNT, "CAdown", &dual(), 1).await;
    assert!(
        matches!(&outcome, RecordingOutcome::Failed(why) if why.contains("HTTP 500")),
        "{outcome:?}"
    );
    assert_eq!(methods(&twilio, "CAdown"), ["POST", "GET", "GET"]);

    // A call Twilio does not know: one request, Twilio's reason.
    let outcome = ensure_recording(&control, ACCOUNT, "CAunknown", &dual(), 1).await;
    assert_eq!(
        outcome,
        RecordingOutcome::Failed(
            "HTTP 404: Twilio error 20404: The requested resource was not found".into()
        )
    );
    assert_eq!(methods(&twilio, "CAunknown"), ["POST"]);
}

/// The business's receiver of call records: every record's JSON, in arrival order.
fn record_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let addr = serve_peer(move |cfg| {
        let sink = sink.clone();
        cfg.route(
            "/records",
            actix_web::web::post().to(move |body: actix_web::web::Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    actix_web::HttpResponse::NoContent().finish()
                }
            }),
        );
    });
    (format!("http://{addr}/records"), got)
}

/// The `call.ended` record of `call_sid` whose `handed_off` is `handed_off`, once it arrives.
async fn ended_record(got: &Mutex<Vec<Value>>, call_sid: &str, handed_off: bool) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let found = got.lock().unwrap().iter().find_map(|r| {
            (r["type"] == "call.ended"
                && r["call_sid"] == call_sid
                && r["handed_off"] == handed_off)
                .then(|| r.clone())
        });
        if let Some(record) = found {
            return record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no call.ended for {call_sid}: {:#?}",
            got.lock().unwrap()
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The real binary recording calls (`RECORD_CALLS=dual`), Twilio's REST API the fake, Twilio's
/// requests signed, records sent to `records_url`, plus `extra`.
async fn recording_binary(
    twilio: &FakeTwilio,
    records_url: &str,
    extra: &[(&str, &str)],
) -> BinaryApp {
    let mut env = vec![
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_API_BASE_URL", twilio.base.as_str()),
        ("TWILIO_API_KEY_SID", KEY_SID),
        ("TWILIO_API_KEY_SECRET", "key-secret"),
        ("RECORD_CALLS", "dual"),
        ("RECORDING_STATUS_URL", STATUS_URL),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("CALL_EVENTS_URL", records_url),
    ];
    env.extend_from_slice(extra);
    spawn_binary(&env).await
}

/// Twilio's webhook for try `attempt` of `call_sid`, signed; the TwiML it got.
async fn webhook(app: &TestApp, call_sid: &str, attempt: u32) -> Twiml {
    let params: Vec<(String, String)> = [
        ("CallSid", call_sid),
        ("AccountSid", ACCOUNT),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
        ("CallStatus", "in-progress"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let url = match attempt {
        1 => format!("{}/incoming-call", app.base),
        n => format!("{}/incoming-call?attempt={n}", app.base),
    };
    let mut resp = app
        .client
        .post(&url)
        .insert_header(("X-Twilio-Signature", sign(TOKEN, &url, &params)))
        .send_form(&params)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.body().await.unwrap();
    parse_twiml(std::str::from_utf8(&body).unwrap())
}

/// The stream Twilio opens from `twiml`, signed, started with its parameters.
async fn stream(app: &TestApp, call_sid: &str, twiml: &Twiml) -> TestStream {
    let url = twiml.stream_url.clone().expect("a <Stream>");
    let mut call = app
        .open_stream_with_header(&url, ("X-Twilio-Signature", sign(TOKEN, &url, &[])))
        .await;
    call.connected_and_start(call_sid, &stream_sid_for(call_sid), &twiml.parameters)
        .await;
    call
}

#[actix_web::test]
async fn the_binary_records_a_call_once_with_the_configured_form_and_says_so_in_its_record() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let (records_url, records) = record_receiver();
    let bin = recording_binary(&twilio, &records_url, &[]).await;
    let call_sid = "CA00000000000000000000000000000001";
    twilio.live_call(call_sid);

    let twiml = webhook(&bin.app, call_sid, 1).await;
    let mut call = stream(&bin.app, call_sid, &twiml).await;
    let logged = bin.wait_for_log("recording started: RE").await;
    assert!(logged.contains(call_sid), "{logged}");
    call.echo_round_trip(&stream_sid_for(call_sid), "AAAA")
        .await;

    let requests = twilio.recording_requests(call_sid);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(
        (requests[0].method, requests[0].status),
        ("POST", 201),
        "{requests:#?}"
    );
    assert_eq!(
        requests[0].form,
        owned(&[
            ("RecordingChannels", "dual"),
            ("RecordingStatusCallback", STATUS_URL),
            ("RecordingStatusCallbackEvent", "completed absent"),
        ])
    );
    let sid = twilio.recordings(call_sid)[0].sid.clone();
    assert!(logged.contains(&sid), "{logged}");
    let m = scrape(&bin.app).await;
    assert_eq!(
        metric(&m, "callvisor_recordings_total{outcome=started}"),
        1.0
    );

    call.stop(&stream_sid_for(call_sid), call_sid).await;
    assert_eq!(call.expect_close().await.0, 1000);
    let ended = ended_record(&records, call_sid, false).await;
    assert_eq!(ended["recording_sid"], sid.as_str(), "{ended:#}");
    assert_eq!(twilio.recording_requests(call_sid).len(), 1);
}

#[actix_web::test]
async fn a_call_handed_off_to_another_replica_is_not_recorded_twice() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let (records_url, records) = record_receiver();
    let call_sid = "CA00000000000000000000000000000002";
    twilio.live_call(call_sid);

    // Replica A takes the call's first try, records it, and hands it off at its drain deadline.
    let mut a = recording_binary(&twilio, &records_url, &[("DRAIN_TIMEOUT_SECS", "1")]).await;
    let twiml = webhook(&a.app, call_sid, 1).await;
    let mut first = stream(&a.app, call_sid, &twiml).await;
    a.wait_for_log("recording started: RE").await;
    let sid = twilio.recordings(call_sid)[0].sid.clone();
    a.signal("TERM");
    assert_eq!(first.expect_close().await, (1001, "handoff".into()));
    assert_eq!(a.exit_code(PATIENCE).await, 0);
    let handed = ended_record(&records, call_sid, true).await;
    assert_eq!(handed["recording_sid"], sid.as_str(), "{handed:#}");

    // Twilio runs the Redirect: try 2 lands on replica B, which shares nothing with A.
    let b = recording_binary(&twilio, &records_url, &[]).await;
    let twiml = webhook(&b.app, call_sid, 2).await;
    assert!(
        twiml.parameters.contains(&("attempt".into(), "2".into())),
        "{twiml:?}"
    );
    let mut second = stream(&b.app, call_sid, &twiml).await;
    b.wait_for_log("already there").await;
    second
        .echo_round_trip(&stream_sid_for(call_sid), "AAAA")
        .await;
    assert_eq!(methods(&twilio, call_sid), ["POST", "GET"]);
    assert_eq!(twilio.recordings(call_sid).len(), 1, "one recording");
    let m = scrape(&b.app).await;
    assert_eq!(
        metric(&m, "callvisor_recordings_total{outcome=exists}"),
        1.0
    );

    second.stop(&stream_sid_for(call_sid), call_sid).await;
    assert_eq!(second.expect_close().await.0, 1000);
    let ended = ended_record(&records, call_sid, false).await;
    assert_eq!(ended["recording_sid"], sid.as_str(), "{ended:#}");
    assert_eq!(ended["attempt"], 2);
}

#[actix_web::test]
async fn a_recording_that_cannot_start_is_logged_and_counted_and_the_call_goes_on() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let (records_url, records) = record_receiver();
    let bin = recording_binary(&twilio, &records_url, &[]).await;
    // A call Twilio does not know as live (a stale CallSid): 404.
    let call_sid = "CA00000000000000000000000000000003";
    let twiml = webhook(&bin.app, call_sid, 1).await;
    let mut call = stream(&bin.app, call_sid, &twiml).await;
    let warned = bin.wait_for_log("recording not started").await;
    assert!(warned.contains("WARN"), "{warned}");
    assert!(warned.contains(call_sid), "{warned}");
    assert!(warned.contains("HTTP 404"), "{warned}");
    for secret in ["key-secret", TOKEN, WEBHOOK_SECRET] {
        assert!(
            bin.log_lines().iter().all(|l| !l.contains(secret)),
            "{secret} logged"
        );
    }
    // The call is untouched.
    let sid = stream_sid_for(call_sid);
    call.echo_round_trip(&sid, "AAAA").await;
    call.echo_round_trip(&sid, "AQID").await;
    let m = scrape(&bin.app).await;
    assert_eq!(
        metric(&m, "callvisor_recordings_total{outcome=failed}"),
        1.0
    );
    assert_eq!(methods(&twilio, call_sid), ["POST"]);

    // Twilio failing (500 on everything) is the same: bounded, counted, the call goes on.
    let flaky = "CA00000000000000000000000000000004";
    twilio.live_call(flaky);
    twilio.fail_first(flaky, 10);
    let twiml = webhook(&bin.app, flaky, 1).await;
    let mut other = stream(&bin.app, flaky, &twiml).await;
    other.echo_round_trip(&stream_sid_for(flaky), "AAAA").await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while metric(
        &scrape(&bin.app).await,
        "callvisor_recordings_total{outcome=failed}",
    ) < 2.0
    {
        assert!(std::time::Instant::now() < deadline, "not counted");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(methods(&twilio, flaky), ["POST", "GET", "GET"]);
    other.echo_round_trip(&stream_sid_for(flaky), "AQID").await;
    assert!(twilio.recordings(flaky).is_empty());

    call.stop(&sid, call_sid).await;
    assert_eq!(call.expect_close().await.0, 1000);
    let ended = ended_record(&records, call_sid, false).await;
    assert!(ended.get("recording_sid").is_none(), "{ended:#}");
}
