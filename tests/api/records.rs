//! Call records (`CALL_EVENTS_URL`): the real binary, real calls, and a receiver of the test's
//! own that verifies every signature independently (routing.rs's `signature_ok`), answers as it
//! is told (fine, flaky, slow) and keeps what it got.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use callvisor::fakes::realtime::FakeRealtime;
use callvisor::fakes::twilio_rest::FakeTwilio;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::routing::{
    routed_binary, signature_ok, stream_for, webhook_for, AGENTS, WEBHOOK_SECRET,
};

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Fine,
    /// Every other request 500; every fifth waits past callvisor's timeout, then 503; a record's
    /// third try always goes through.
    Flaky,
}

#[derive(Default)]
struct Received {
    /// Every request: its webhook-id, body and the status answered.
    attempts: Vec<(String, String, u16)>,
    bad_signatures: usize,
    seq: u64,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<Received>>,
}

const SLOW: Duration = Duration::from_millis(1500);

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        let state = Arc::new(Mutex::new(Received::default()));
        let shared = state.clone();
        let addr = serve_peer(move |cfg| {
            cfg.app_data(web::Data::new((shared.clone(), mode)))
                .route("/events", web::post().to(receive));
        });
        Receiver {
            url: format!("http://{addr}/events"),
            state,
        }
    }

    /// The records answered 2xx, by webhook-id.
    fn delivered(&self) -> HashMap<String, Value> {
        let state = self.state.lock().unwrap();
        state
            .attempts
            .iter()
            .filter(|(_, _, status)| (200..300).contains(status))
            .map(|(id, body, _)| (id.clone(), serde_json::from_str(body).unwrap()))
            .collect()
    }

    /// Waits until `n` records are delivered.
    async fn wait_for(&self, n: usize) -> HashMap<String, Value> {
        let deadline = std::time::Instant::now() + PATIENCE * 4;
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} records delivered",
                delivered.len()
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `call.ended` record of `call_sid` (waiting for it).
    async fn ended(&self, call_sid: &str) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(record) = self
                .delivered()
                .into_values()
                .find(|r| r["type"] == "call.ended" && r["call_sid"] == call_sid)
            {
                return record;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no call.ended for {call_sid}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    data: web::Data<(Arc<Mutex<Received>>, Mode)>,
) -> HttpResponse {
    let (state, mode) = (&data.0, data.1);
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = String::from_utf8(body.to_vec()).unwrap();
    if !signature_ok(&req, &body) {
        let mut state = state.lock().unwrap();
        state.bad_signatures += 1;
        state.attempts.push((id, text, 401));
        return HttpResponse::Unauthorized().finish();
    }
    let (n, tries) = {
        let mut state = state.lock().unwrap();
        state.seq += 1;
        let tries = state.attempts.iter().filter(|(i, _, _)| *i == id).count();
        (state.seq, tries)
    };
    let status = match mode {
        Mode::Fine => 200,
        // A record's third try goes through: the test's time stays bounded (retries wait 1 s,
        // then 2 s).
        Mode::Flaky if tries >= 2 => 204,
        Mode::Flaky if n % 5 == 0 => {
            actix_web::rt::time::sleep(SLOW).await;
            503
        }
        Mode::Flaky if n % 2 == 0 => 500,
        Mode::Flaky => 204,
    };
    state.lock().unwrap().attempts.push((id, text, status));
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}

fn records_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("CALL_EVENTS_URL", receiver.url.clone()),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("CALL_EVENTS_TIMEOUT_MS", "500".to_string()),
    ]
}

async fn binary(env: &[(&'static str, String)]) -> BinaryApp {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_binary(&env).await
}

fn params(call_sid: &str, attempt: u32) -> Vec<(String, String)> {
    [
        ("CallSid", call_sid.to_string()),
        ("From", "+14155550100".to_string()),
        ("To", "+15550001111".to_string()),
        ("attempt", attempt.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn start(app: &TestApp, call_sid: &str) -> TestStream {
    let mut call = app.open_stream().await;
    call.connected_and_start(call_sid, &stream_sid_for(call_sid), &params(call_sid, 1))
        .await;
    call
}

#[actix_web::test]
async fn an_echo_call_gets_both_records_signed_with_every_field() {
    let receiver = Receiver::start(Mode::Fine);
    let bin = binary(&records_env(&receiver)).await;
    let app = &bin.app;
    let sid = stream_sid_for("CArec1");
    let mut call = start(app, "CArec1").await;
    for payload in ["AAAA", "AQID", "AgME"] {
        call.echo_round_trip(&sid, payload).await;
    }
    call.stop(&sid, "CArec1").await;
    assert_eq!(call.expect_close().await.0, 1000);

    let delivered = receiver.wait_for(2).await;
    let started = &delivered["rec_MZrec1_started"];
    assert_eq!(started["type"], "call.started");
    for (key, value) in [
        ("call_sid", "CArec1"),
        ("stream_sid", "MZrec1"),
        ("account_sid", "ACtest"),
        ("from", "+14155550100"),
        ("to", "+15550001111"),
        ("app", "echo"),
    ] {
        assert_eq!(started[key], value, "{key} in {started}");
    }
    assert_eq!(started["agent"], Value::Null);
    assert_eq!(started["attempt"], 1);
    assert!(started["replica"].as_str().is_some_and(|r| !r.is_empty()));

    let ended = &delivered["rec_MZrec1_ended"];
    assert_eq!(ended["type"], "call.ended");
    assert_eq!(ended["end_reason"], "caller_hung_up");
    assert_eq!(ended["close_code"], 1000);
    assert_eq!(ended["handed_off"], false);
    assert_eq!(ended["started_at"], started["started_at"]);
    assert_eq!(
        ended["frames"],
        json!({"in": 3, "out": 3, "dropped_out": 0, "upstream_in": 0, "upstream_out": 0,
               "upstream_dropped": 0})
    );
    // RFC 3339, UTC, milliseconds; the end after the start, as long as the duration says.
    let at = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let (from, to) = (at(&ended["started_at"]), at(&ended["ended_at"]));
    assert!(ended["ended_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ended["started_at"].as_str().unwrap().len(), 24);
    let span = to.duration_since(from).as_millis() as i64;
    let duration = ended["duration_ms"].as_i64().unwrap();
    assert!((span - duration).abs() <= 5, "{span} vs {duration}");
    assert!(ended.get("transcript").is_none(), "echo has no transcript");

    let state = receiver.state.lock().unwrap();
    assert_eq!(state.bad_signatures, 0);
    assert_eq!(state.attempts.len(), 2, "one request per record");
}

/// Stop, superseded, idle timeout, not reading and a drain's hand-off: each ends its stream with
/// its own `end_reason`, and the hand-off's record goes out before the process exits.
#[actix_web::test]
async fn the_session_s_end_reasons_reach_the_records() {
    let receiver = Receiver::start(Mode::Fine);
    let mut env = records_env(&receiver);
    env.extend([
        ("IDLE_TIMEOUT_SECS", "1".to_string()),
        ("DRAIN_TIMEOUT_SECS", "2".to_string()),
        ("OUTBOUND_BUFFER_KIB", "16".to_string()),
    ]);
    let mut bin = binary(&env).await;
    let app = &bin.app;

    // Superseded: a second stream of the same call takes over.
    let mut first = start(app, "CAsup").await;
    first
        .echo_round_trip(&stream_sid_for("CAsup"), "AAAA")
        .await;
    let mut second = app.open_stream().await;
    second
        .connected_and_start("CAsup", "MZsup2", &params("CAsup", 2))
        .await;
    assert_eq!(first.expect_close().await, (1000, "superseded".into()));
    second.stop("MZsup2", "CAsup").await;
    assert_eq!(second.expect_close().await.0, 1000);

    // Idle: nothing more after the start.
    let mut idle = start(app, "CAidle").await;
    assert_eq!(idle.expect_close().await.0, 1001);

    // Not reading: echoes pile up unread until the 16 KiB queue overflows.
    let flood_sid = stream_sid_for("CAflood");
    let mut flooder = start(app, "CAflood").await;
    let payload = "A".repeat(8000);
    for n in 0..2_000 {
        let frame = callvisor::twilio::messages::TwilioFrame::Media {
            sequence_number: n.to_string(),
            stream_sid: &flood_sid,
            media: callvisor::twilio::messages::Media {
                track: Some("inbound".into()),
                chunk: Some(n.to_string().into()),
                timestamp: Some("0".into()),
                payload: payload.as_str().into(),
            },
        };
        let sent = futures_util::SinkExt::send(
            &mut flooder.ws,
            awc::ws::Message::Text(frame.to_json().into()),
        );
        let done = actix_web::rt::time::timeout(Duration::from_secs(2), sent).await;
        if !matches!(done, Ok(Ok(()))) {
            break;
        }
    }
    let not_reading = receiver.ended("CAflood").await;
    assert_eq!(not_reading["end_reason"], "not_reading");
    assert_eq!(not_reading["close_code"], 1008);
    assert!(not_reading["frames"]["dropped_out"].as_u64().unwrap() > 0);
    drop(flooder);

    // Handed off: live at the drain's deadline.
    let live_sid = stream_sid_for("CAlive");
    let mut live = start(app, "CAlive").await;
    live.echo_round_trip(&live_sid, "AAAA").await;
    bin.signal("TERM");
    // Audio keeps the call from idling out before the drain's deadline hands it over.
    let close = loop {
        live.media(&live_sid, 1, "AAAA").await;
        match actix_web::rt::time::timeout(Duration::from_millis(200), live.next_frame()).await {
            Ok(Some(awc::ws::Frame::Close(reason))) => break reason.unwrap(),
            Ok(Some(_)) | Err(_) => continue,
            Ok(None) => panic!("the connection ended without a close frame"),
        }
    };
    assert_eq!(
        (u16::from(close.code), close.description.unwrap_or_default()),
        (1001, "handoff".to_string())
    );
    assert_eq!(bin.exit_code(PATIENCE).await, 0);

    let superseded = receiver.ended("CAsup").await;
    let records = receiver.delivered();
    let by_stream = |stream: &str| {
        records
            .values()
            .find(|r| r["type"] == "call.ended" && r["stream_sid"] == stream)
            .unwrap_or_else(|| panic!("no call.ended for {stream}"))
            .clone()
    };
    let superseded = if superseded["stream_sid"] == "MZsup" {
        superseded
    } else {
        by_stream("MZsup")
    };
    assert_eq!(superseded["end_reason"], "superseded");
    let taker = by_stream("MZsup2");
    assert_eq!(taker["end_reason"], "caller_hung_up");
    assert_eq!(taker["attempt"], 2);
    assert_eq!(by_stream("MZidle")["end_reason"], "idle_timeout");
    let handed = by_stream("MZlive");
    assert_eq!(handed["end_reason"], "handed_off");
    assert_eq!(handed["handed_off"], true);
    assert_eq!(handed["close_code"], 1001);
    // Every stream: one started and one ended record.
    assert_eq!(records.len(), 2 * 5, "{:?}", records.keys());
    assert_eq!(receiver.state.lock().unwrap().bad_signatures, 0);
}

/// The agent's ways of ending a call: its own hang-up (`end_call`), a transfer (with where to),
/// a hang-up because its model's session ended, and a fail-over when the model cannot be
/// reached.
#[actix_web::test]
async fn the_agent_s_hang_up_transfer_and_fail_over_reach_the_records() {
    let receiver = Receiver::start(Mode::Fine);
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(crate::routing::KEY_SID, "key-secret"),
    );
    let env = records_env(&receiver);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bin = routed_binary("records", &model, &twilio, AGENTS, &env).await;
    let app = &bin.app;

    twilio.live_call("CAbye");
    let twiml = parse_twiml(&webhook_for(app, "CAbye", "+15550002222").await);
    let mut call = stream_for(app, "CAbye", &twiml, |_| {}).await;
    model.wait_for("session.update", 1).await;
    model.speech_stopped().await;
    model.tool_call_with("end_call", "c1", json!({})).await;
    model.finish_response().await;
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    let bye = receiver.ended("CAbye").await;
    assert_eq!(bye["end_reason"], "app_hung_up");
    assert_eq!(bye["agent"], "sales");
    assert_eq!(bye["app"], "openai");

    twilio.live_call("CAxfer");
    let twiml = parse_twiml(&webhook_for(app, "CAxfer", "+15550002222").await);
    let mut call = stream_for(app, "CAxfer", &twiml, |_| {}).await;
    model.wait_for("session.update", 2).await;
    model.speech_stopped().await;
    model
        .tool_call_with("transfer_call", "c2", json!({"target": "desk"}))
        .await;
    assert_eq!(call.expect_close().await, (1000, "transfer".into()));
    let xfer = receiver.ended("CAxfer").await;
    assert_eq!(xfer["end_reason"], "transferred");
    assert_eq!(xfer["transfer_to"], "+15550003333");

    // The model's session ends mid-call: the caller hears the apology, the record says why.
    twilio.live_call("CAlost");
    let twiml = parse_twiml(&webhook_for(app, "CAlost", "+15550002222").await);
    let mut call = stream_for(app, "CAlost", &twiml, |_| {}).await;
    model.wait_for("session.update", 3).await;
    model.close(1011, "server error").await;
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    assert_eq!(receiver.ended("CAlost").await["end_reason"], "model_error");

    // The model's socket refuses: the call is failed over to another replica.
    model.refuse_with(503);
    twilio.live_call("CAfail");
    let twiml = parse_twiml(&webhook_for(app, "CAfail", "+15550001111").await);
    let mut call = stream_for(app, "CAfail", &twiml, |_| {}).await;
    assert_eq!(call.expect_close().await.0, 1011);
    let failed = receiver.ended("CAfail").await;
    assert_eq!(failed["end_reason"], "failed_over");
    assert_eq!(failed["agent"], "support");
    assert_eq!(receiver.state.lock().unwrap().bad_signatures, 0);
}

/// A receiver that fails half its requests and times out some still gets every record, once
/// answered 2xx, each retry with the same id and the same bytes.
#[actix_web::test]
async fn a_flaky_receiver_gets_every_record_with_retries_under_the_same_id() {
    let receiver = Receiver::start(Mode::Flaky);
    let bin = binary(&records_env(&receiver)).await;
    let app = &bin.app;
    const CALLS: usize = 10;
    for i in 0..CALLS {
        let call_sid = format!("CAflaky{i}");
        let sid = stream_sid_for(&call_sid);
        let mut call = start(app, &call_sid).await;
        call.echo_round_trip(&sid, "AAAA").await;
        call.stop(&sid, &call_sid).await;
        assert_eq!(call.expect_close().await.0, 1000);
    }
    let delivered = receiver.wait_for(2 * CALLS).await;
    assert_eq!(delivered.len(), 2 * CALLS);
    let state = receiver.state.lock().unwrap();
    assert_eq!(state.bad_signatures, 0);
    let mut by_id: HashMap<&str, Vec<(&str, u16)>> = HashMap::new();
    for (id, body, status) in &state.attempts {
        by_id.entry(id).or_default().push((body, *status));
    }
    assert_eq!(by_id.len(), 2 * CALLS, "one webhook-id per record");
    let mut retried = 0;
    for (id, attempts) in &by_id {
        let ok = attempts
            .iter()
            .filter(|(_, s)| (200..300).contains(s))
            .count();
        assert_eq!(ok, 1, "{id}: delivered once, never again after a 2xx");
        assert!(
            attempts.iter().all(|(body, _)| *body == attempts[0].0),
            "{id}: every retry sends the same record"
        );
        retried += usize::from(attempts.len() > 1);
    }
    assert!(retried > 0, "the receiver's failures were retried");
    let slow = state.attempts.iter().filter(|(_, _, s)| *s == 503).count();
    assert!(slow > 0, "some attempts timed out");
}

/// A receiver that is down through a whole drain: every record ends up in an ERROR line, whole.
#[actix_web::test]
async fn records_undelivered_when_a_drain_ends_are_logged_whole() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", closed.local_addr().unwrap());
    drop(closed);
    let mut bin = binary(&[
        ("CALL_EVENTS_URL", url),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("DRAIN_TIMEOUT_SECS", "1".to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ])
    .await;
    let app = &bin.app;
    let mut ended = start(app, "CAgone").await;
    ended.stop(&stream_sid_for("CAgone"), "CAgone").await;
    assert_eq!(ended.expect_close().await.0, 1000);
    let mut live = start(app, "CAstay").await;
    live.echo_round_trip(&stream_sid_for("CAstay"), "AAAA")
        .await;
    bin.signal("TERM");
    assert_eq!(live.expect_close().await.0, 1001);
    assert_eq!(bin.exit_code(PATIENCE).await, 0);

    let logged: Vec<Value> = bin
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["level"] == "ERROR"
                && l["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("call record undelivered"))
        })
        .collect();
    let mut ids: Vec<&str> = logged
        .iter()
        .map(|l| l["record_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "rec_MZgone_ended",
            "rec_MZgone_started",
            "rec_MZstay_ended",
            "rec_MZstay_started"
        ]
    );
    // Whole: the record itself, as JSON, in the line.
    let handed = logged
        .iter()
        .find(|l| l["record_id"] == "rec_MZstay_ended")
        .unwrap();
    assert_eq!(handed["record"]["end_reason"], "handed_off");
    assert_eq!(handed["record"]["call_sid"], "CAstay");
}

/// With a spool, records survive a SIGKILL: the next start delivers them.
#[actix_web::test]
async fn a_spooled_record_survives_sigkill_and_is_delivered_at_the_next_start() {
    let spool = std::env::temp_dir().join(format!("callvisor-spool-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/events", closed.local_addr().unwrap());
    drop(closed);
    let spool_env = ("CALL_EVENTS_SPOOL_DIR", spool.to_str().unwrap().to_string());
    {
        let bin = binary(&[
            ("CALL_EVENTS_URL", down),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
            spool_env.clone(),
        ])
        .await;
        let app = &bin.app;
        for call_sid in ["CAkill1", "CAkill2"] {
            let sid = stream_sid_for(call_sid);
            let mut call = start(app, call_sid).await;
            call.stop(&sid, call_sid).await;
            assert_eq!(call.expect_close().await.0, 1000);
        }
        // Each record's first attempt failed: each is on disk.
        for id in ["MZkill1_ended", "MZkill2_ended"] {
            bin.wait_for_log(&format!("call record rec_{id} not delivered"))
                .await;
        }
        bin.signal("KILL");
    }
    let receiver = Receiver::start(Mode::Fine);
    let mut env = records_env(&receiver);
    env.push(spool_env);
    let bin = binary(&env).await;
    bin.wait_for_log("delivered first").await;
    let delivered = receiver.wait_for(4).await;
    let mut ids: Vec<&String> = delivered.keys().collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "rec_MZkill1_ended",
            "rec_MZkill1_started",
            "rec_MZkill2_ended",
            "rec_MZkill2_started"
        ]
    );
    assert_eq!(
        delivered["rec_MZkill2_ended"]["end_reason"],
        "caller_hung_up"
    );
    drop(bin);
    std::fs::remove_dir_all(&spool).unwrap();
}

/// The next `n` frames to Twilio: the mark names among them (media is counted, not kept).
async fn marks_in(call: &mut TestStream, n: usize) -> Vec<String> {
    let mut marks = Vec::new();
    for _ in 0..n {
        let frame = call.next_json().await;
        match frame["event"].as_str().unwrap() {
            "media" => {}
            "mark" => marks.push(frame["mark"]["name"].as_str().unwrap().to_string()),
            other => panic!("expected media or mark, got {other}: {frame}"),
        }
    }
    marks
}

/// Sends a caller frame and waits until the model has it: what the call got before is handled.
async fn sync(call: &mut TestStream, model: &FakeRealtime, sid: &str, n: usize) {
    call.media(sid, n as u64, "AAAA").await;
    model.wait_for("input_audio_buffer.append", n).await;
}

async fn lookup_order(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if !signature_ok(&req, &body) {
        return HttpResponse::Unauthorized().finish();
    }
    HttpResponse::Ok().json(json!({"status": "shipped"}))
}

/// An agent call against the strict Realtime fake: the record has the caller's and the agent's
/// turns in call order, the turn the caller talked over marked with what was heard of it, the
/// tool call with its arguments and answer, the barge-in, and the usage of every response.
#[actix_web::test]
async fn an_agent_call_s_record_has_its_transcript_tool_calls_and_usage() {
    let receiver = Receiver::start(Mode::Fine);
    let tools = serve_peer(|cfg| {
        cfg.route("/lookup_order", web::post().to(lookup_order));
    });
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(crate::routing::KEY_SID, "key-secret"),
    );
    let agents = format!(
        r#"
[agents.desk]
default = true
model = "gpt-realtime-2.1"
instructions = "You answer for Acme."
greeting = "Hello, how can I help?"

[[agents.desk.tools]]
name = "lookup_order"
description = "Look up an order."
url = "http://{tools}/lookup_order"
parameters = {{ type = "object", properties = {{ order_number = {{ type = "string" }} }} }}
"#
    );
    let env = records_env(&receiver);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bin = routed_binary("transcript", &model, &twilio, &agents, &env).await;
    let app = &bin.app;
    twilio.live_call("CAtalk");
    let sid = stream_sid_for("CAtalk");
    let twiml = parse_twiml(&webhook_for(app, "CAtalk", "+15550001111").await);
    let mut call = stream_for(app, "CAtalk", &twiml, |_| {}).await;

    // The caller's words are transcribed, with the SDK's current model.
    let update = model.wait_for("session.update", 1).await;
    assert_eq!(
        update["session"]["audio"]["input"]["transcription"],
        json!({"model": "gpt-live-transcribe"})
    );

    // The greeting.
    model.wait_for("response.create", 1).await;
    model.say("item_a1", "Hello, how can I help?", 200).await;
    model.finish_response().await;
    let greeted = marks_in(&mut call, 2).await;
    call.mark(&sid, &greeted[0]).await;

    // The caller asks; the model looks the order up.
    model.speech_started().await;
    model.speech_stopped().await;
    model.caller_said("Where is my order 1234?").await;
    model
        .tool_call_with("lookup_order", "call_1", json!({"order_number": "1234"}))
        .await;
    model.finish_response().await;
    model.wait_for("response.create", 2).await;

    // The answer: 400 ms in two deltas; the caller hears the first 200 ms, then talks over it.
    model
        .say("item_a2", "Your order shipped yesterday.", 200)
        .await;
    model.audio("item_a2", 200).await;
    let answer = marks_in(&mut call, 4).await;
    call.mark(&sid, &answer[0]).await;
    sync(&mut call, &model, &sid, 1).await;
    model.speech_started().await;
    model.wait_for("conversation.item.truncate", 1).await;
    model.speech_stopped().await;
    model.caller_said("Can I talk to sales?").await;
    // The caller hangs up while the model answers.
    sync(&mut call, &model, &sid, 2).await;
    call.stop(&sid, "CAtalk").await;
    assert_eq!(call.expect_close().await.0, 1000);

    let ended = receiver.ended("CAtalk").await;
    assert_eq!(ended["end_reason"], "caller_hung_up");
    assert_eq!(ended["agent"], "desk");
    assert_eq!(ended["engine"], "realtime");
    assert_eq!(ended["model"], "gpt-realtime-2.1");
    let turns: Vec<(String, String, bool)> = ended["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["role"].as_str().unwrap().to_string(),
                t["text"].as_str().unwrap().to_string(),
                t["interrupted"].as_bool().unwrap(),
            )
        })
        .collect();
    let turn = |role: &str, text: &str, interrupted| (role.into(), text.into(), interrupted);
    assert_eq!(
        turns,
        [
            turn("agent", "Hello, how can I help?", false),
            turn("caller", "Where is my order 1234?", false),
            turn("agent", "Your order shipped yesterday.", true),
            turn("caller", "Can I talk to sales?", false),
        ]
    );
    let cut = &ended["transcript"][2];
    assert_eq!(cut["heard_ms"], 200);
    assert_eq!(
        cut["end_ms"].as_u64(),
        Some(cut["start_ms"].as_u64().unwrap() + 200)
    );
    let times: Vec<u64> = ended["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["start_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(ended["barge_ins"], 1);

    let tools = ended["tool_calls"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!(tools[0]["name"], "lookup_order");
    assert_eq!(tools[0]["call_id"], "call_1");
    assert_eq!(tools[0]["arguments"], json!({"order_number": "1234"}));
    assert_eq!(tools[0]["outcome"], "ok");
    assert_eq!(tools[0]["status"], 200);

    // Three responses ended (the greeting, the tool call's, the one talked over): the fake
    // counts 150 input tokens (120 text, 30 audio, 64 cached) each, and output tokens from the
    // audio sent (10 a second) and the words of the transcript.
    let usage = &ended["usage"];
    assert_eq!(usage["responses"], 3);
    assert_eq!(usage["input_tokens"], 450);
    assert_eq!(
        usage["input_token_details"],
        json!({"text_tokens": 360, "audio_tokens": 90, "cached_tokens": 192})
    );
    // Greeting: 200 ms, 5 words; the cut answer: 400 ms + 2 × 100 ms in flight, 4 words.
    assert_eq!(
        usage["output_token_details"],
        json!({"text_tokens": 9, "audio_tokens": 8})
    );
    assert_eq!(usage["output_tokens"], 17);
    assert_eq!(usage["total_tokens"], 467);
    assert!(model.errors().is_empty(), "{:?}", model.errors());
}

/// Two streams claiming one stream_sid (a forged or buggy peer; Twilio's are unique) share a
/// webhook-id: each record is still delivered, each answer is applied to its own record.
#[actix_web::test]
async fn records_sharing_a_webhook_id_are_each_delivered() {
    let receiver = Receiver::start(Mode::Flaky);
    let bin = binary(&records_env(&receiver)).await;
    let app = &bin.app;
    for call_sid in ["CAtwinA", "CAtwinB"] {
        let mut call = app.open_stream().await;
        call.connected_and_start(call_sid, "MZtwin", &params(call_sid, 1))
            .await;
        call.stop("MZtwin", call_sid).await;
        assert_eq!(call.expect_close().await.0, 1000);
    }
    let deadline = std::time::Instant::now() + PATIENCE * 2;
    loop {
        let bodies: std::collections::HashSet<String> = receiver
            .state
            .lock()
            .unwrap()
            .attempts
            .iter()
            .filter(|(_, _, status)| (200..300).contains(status))
            .map(|(_, body, _)| body.clone())
            .collect();
        if bodies.len() == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 4 records delivered",
            bodies.len()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}
