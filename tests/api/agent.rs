//! `HANDLER=openai` against the strict fake of the Realtime API (`callvisor::fakes::realtime`)
//! and a fake of Twilio's REST API. Every test ends by checking the fake model refused nothing:
//! an event the real API would answer with `error` fails the test.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use callvisor::call::handlers::openai::agents::{Agent, Agents, Destination, TransferTarget};
use callvisor::call::handlers::openai::settings::AgentConfig;
use callvisor::fakes::realtime::{FakeRealtime, STALE_AUDIO_BYTE};
use serde_json::{json, Value};

use crate::helpers::*;
use callvisor::fakes::twilio_rest::FakeTwilio;

const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";

async fn agent(model: &FakeRealtime, twilio: &FakeTwilio, key: &str) -> TestApp {
    agent_with(model, twilio, key, |_| {}).await
}

/// The agent of `agent_config()`, changed by `configure`, as the one (default) agent.
async fn agent_with(
    model: &FakeRealtime,
    twilio: &FakeTwilio,
    key: &str,
    configure: impl FnOnce(&mut Agent),
) -> TestApp {
    let mut config = AgentConfig {
        api_key: key.to_string().into(),
        ..agent_config(&model.url)
    };
    let mut agent = (**config.agents.iter().next().unwrap()).clone();
    configure(&mut agent);
    config.agents = Arc::new(Agents::single(agent));
    let base = twilio.base.clone();
    spawn_app_with(move |c| {
        c.handler = Arc::new(config);
        c.twilio_api_base_url = base;
        c.twilio_api_key = Some((KEY_SID.into(), "key-secret".to_string().into()));
    })
    .await
}

/// `ms` milliseconds of the fake model's audio (mu-law 0x7f) as base64 (8 bytes a millisecond).
fn audio_ms(ms: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![0x7f_u8; ms * 8])
}

async fn started(app: &TestApp, model: &FakeRealtime, call_sid: &str) -> TestStream {
    started_with(app, model, call_sid, &[]).await
}

async fn started_with(
    app: &TestApp,
    model: &FakeRealtime,
    call_sid: &str,
    params: &[(&str, &str)],
) -> TestStream {
    let mut call = app.open_stream().await;
    let mut parameters = vec![("From".to_string(), "+14155550100".to_string())];
    parameters.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    call.connected_and_start(call_sid, &stream_sid_for(call_sid), &parameters)
        .await;
    model.wait_for("session.update", 1).await;
    call
}

/// Sends a caller frame and waits until the model has it: everything the call's actor got
/// before it has been handled.
async fn sync(call: &mut TestStream, model: &FakeRealtime, sid: &str, n: usize) {
    call.media(sid, n as u64, "AAAA").await;
    model.wait_for("input_audio_buffer.append", n).await;
}

/// The next `n` frames to Twilio: the media payloads and the mark names, in order.
async fn frames(call: &mut TestStream, n: usize) -> (Vec<String>, Vec<String>) {
    let (mut media, mut marks) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let frame = call.next_json().await;
        match frame["event"].as_str().unwrap() {
            "media" => media.push(frame["media"]["payload"].as_str().unwrap().to_string()),
            "mark" => marks.push(frame["mark"]["name"].as_str().unwrap().to_string()),
            other => panic!("expected media or mark, got {other}: {frame}"),
        }
    }
    (media, marks)
}

fn count(model: &FakeRealtime, kind: &str) -> usize {
    model.types().iter().filter(|t| *t == kind).count()
}

/// The strict fake refused nothing the agent sent.
fn nothing_refused(model: &FakeRealtime) {
    let errors: Vec<Value> = model.errors();
    assert!(errors.is_empty(), "the real API would refuse: {errors:#?}");
}

#[actix_web::test]
async fn the_agent_talks_pcmu_both_ways_and_truncates_at_what_the_caller_heard() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    assert_eq!(app.health().await["handler"], "openai");
    let sid = stream_sid_for("CAagent");
    let mut call = started(&app, &model, "CAagent").await;

    let update = model.wait_for("session.update", 1).await;
    assert_eq!(update["session"]["instructions"], "You help +14155550100.");
    assert_eq!(update["session"]["audio"]["output"]["voice"], "alloy");
    assert_eq!(update["session"]["tools"][0]["name"], "end_call");

    // Caller audio goes out unchanged.
    call.media(&sid, 1, "f39/fw==").await;
    let append = model.wait_for("input_audio_buffer.append", 1).await;
    assert_eq!(append["audio"], "f39/fw==");

    // The caller stops speaking; the model answers with two 100 ms deltas of one item: each
    // reaches the caller, followed by a mark.
    model.speech_stopped().await;
    model.audio("item1", 100).await;
    model.audio("item1", 100).await;
    let (media, marks) = frames(&mut call, 4).await;
    assert_eq!(media, [audio_ms(100), audio_ms(100)]);
    assert_eq!(marks.len(), 2);
    // The caller heard the first 100 ms (its mark came back), then talks over the rest.
    call.mark(&sid, &marks[0]).await;
    sync(&mut call, &model, &sid, 2).await;
    model.speech_started().await;
    assert_eq!(
        call.next_json().await,
        json!({"event": "clear", "streamSid": sid})
    );
    let truncate = model.wait_for("conversation.item.truncate", 1).await;
    assert_eq!(
        truncate,
        json!({"type": "conversation.item.truncate", "item_id": "item1", "content_index": 0, "audio_end_ms": 100})
    );

    let m = scrape(&app).await;
    assert_eq!(metric(&m, "callvisor_agent_barge_ins_total"), 1.0);
    assert_eq!(metric(&m, "callvisor_agent_connect_seconds_count"), 1.0);
    assert_eq!(metric(&m, "callvisor_agent_first_audio_seconds_count"), 1.0);

    // A key press reaches the model as text, and asks for a response (none is active: the
    // interrupted one is done).
    call.dtmf(&sid, "5").await;
    let item = model.wait_for("conversation.item.create", 1).await;
    assert_eq!(item["item"]["content"][0]["text"], "The caller pressed 5");
    model.wait_for("response.create", 1).await;

    // The caller hangs up: the model's socket is closed at once.
    call.stop(&sid, "CAagent").await;
    assert_eq!(call.expect_close().await.0, 1000);
    assert_eq!(model.wait_closed().await, 1000);
    app.wait_for_active(0).await;
    nothing_refused(&model);
}

#[actix_web::test]
async fn deltas_in_flight_when_the_caller_barges_in_never_reach_the_caller() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    let sid = stream_sid_for("CAstale");
    let mut call = started(&app, &model, "CAstale").await;
    model.speech_stopped().await;
    model.audio("item1", 100).await;
    frames(&mut call, 2).await;
    // The fake sends the deltas already on their way after `speech_started`, then
    // `response.done` cancelled: what Twilio gets next is the clear, then the next answer.
    model.speech_started().await;
    assert_eq!(call.next_json().await["event"], "clear");
    model.wait_for("conversation.item.truncate", 1).await;
    model.speech_stopped().await;
    model.audio("item2", 40).await;
    let (media, _) = frames(&mut call, 2).await;
    assert_eq!(media, [audio_ms(40)], "stale audio reached the caller");
    let stale = base64::engine::general_purpose::STANDARD.encode([STALE_AUDIO_BYTE; 800]);
    assert_ne!(media[0], stale);
    call.stop(&sid, "CAstale").await;
    assert_eq!(call.expect_close().await.0, 1000);
    nothing_refused(&model);
}

#[actix_web::test]
async fn a_key_press_while_the_agent_talks_waits_for_the_response_to_finish() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    twilio.live_call("CAkeys");
    let sid = stream_sid_for("CAkeys");
    let mut call = started(&app, &model, "CAkeys").await;
    model.speech_stopped().await;
    model.audio("item1", 100).await;
    frames(&mut call, 2).await;

    // The item goes in at once; the response waits: the API allows one at a time.
    call.dtmf(&sid, "5").await;
    model.wait_for("conversation.item.create", 1).await;
    sync(&mut call, &model, &sid, 1).await;
    assert_eq!(count(&model, "response.create"), 0);
    model.finish_response().await;
    model.wait_for("response.create", 1).await;

    // The call goes on: no REST request, the stream is open.
    sync(&mut call, &model, &sid, 2).await;
    assert!(twilio.updates().is_empty());
    assert!(twilio.answers("CAkeys").is_empty());
    call.stop(&sid, "CAkeys").await;
    assert_eq!(call.expect_close().await, (1000, "stop".into()));
    nothing_refused(&model);
}

#[actix_web::test]
async fn an_error_about_one_event_leaves_the_call_up() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    twilio.live_call("CAoops");
    let sid = stream_sid_for("CAoops");
    let mut call = started(&app, &model, "CAoops").await;
    for (kind, code) in [
        ("invalid_request_error", "invalid_value"),
        (
            "invalid_request_error",
            "conversation_already_has_active_response",
        ),
        ("server_error", "server_error"),
    ] {
        model
            .send(
                json!({"type": "error", "event_id": "event_9", "error": {"type": kind, "code": code,
                "message": "refused", "param": "session.voice", "event_id": "ev_1"}}),
            )
            .await;
    }
    // The model keeps talking, the caller keeps hearing it (and, the model's socket being in
    // order, the agent has handled every error before this audio).
    model.speech_stopped().await;
    model.audio("item1", 20).await;
    let (media, _) = frames(&mut call, 2).await;
    assert_eq!(media, [audio_ms(20)]);
    let m = scrape(&app).await;
    for kind in ["invalid_request", "active_response", "server_error"] {
        let key = format!("callvisor_agent_model_errors_total{{type={kind}}}");
        assert_eq!(metric(&m, &key), 1.0, "{kind}");
    }
    assert!(twilio.answers("CAoops").is_empty(), "no hang-up");
    call.stop(&sid, "CAoops").await;
    assert_eq!(call.expect_close().await, (1000, "stop".into()));
}

#[actix_web::test]
async fn with_two_items_queued_a_barge_in_truncates_the_one_playing_at_its_returned_marks() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    let sid = stream_sid_for("CAtwo");
    let mut call = started(&app, &model, "CAtwo").await;
    model.speech_stopped().await;
    model.audio("first", 100).await;
    model.audio("first", 60).await;
    model.audio("second", 100).await;
    let (_, marks) = frames(&mut call, 6).await;
    // The first 100 ms of `first` played; the second item has not begun.
    call.mark(&sid, &marks[0]).await;
    sync(&mut call, &model, &sid, 1).await;
    model.speech_started().await;
    assert_eq!(call.next_json().await["event"], "clear");
    let truncate = model.wait_for("conversation.item.truncate", 1).await;
    assert_eq!(truncate["item_id"], "first");
    assert_eq!(truncate["audio_end_ms"], 100);
    // Twilio returns the cleared marks: they are not pending, nothing changes.
    for name in &marks[1..] {
        call.mark(&sid, name).await;
    }
    sync(&mut call, &model, &sid, 2).await;
    assert_eq!(count(&model, "conversation.item.truncate"), 1);
    call.stop(&sid, "CAtwo").await;
    assert_eq!(call.expect_close().await.0, 1000);
    nothing_refused(&model);
}

#[actix_web::test]
async fn end_call_lets_the_goodbye_play_then_hangs_up() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    twilio.live_call("CAbye");
    let sid = stream_sid_for("CAbye");
    let mut call = started(&app, &model, "CAbye").await;
    // An earlier answer, cut off: its mark is cleared and will come back late.
    model.speech_stopped().await;
    model.audio("earlier", 100).await;
    let (_, cleared) = frames(&mut call, 2).await;
    model.speech_started().await;
    assert_eq!(call.next_json().await["event"], "clear");

    // The goodbye, then end_call, in one response.
    model.speech_stopped().await;
    model.audio("bye", 300).await;
    model.tool_call("end_call", "c1").await;
    model.finish_response().await;
    let (_, goodbye) = frames(&mut call, 2).await;
    // Twilio echoes the cleared mark: the goodbye has not played yet, no hang-up.
    call.mark(&sid, &cleared[0]).await;
    sync(&mut call, &model, &sid, 1).await;
    assert!(
        twilio.answers("CAbye").is_empty(),
        "hung up before the goodbye played"
    );
    call.mark(&sid, &goodbye[0]).await;
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    assert_eq!(
        twilio.updates()[0].form,
        [("Status".into(), "completed".into())]
    );
    app.wait_for_active(0).await;
    let m = scrape(&app).await;
    assert_eq!(
        metric(&m, "callvisor_agent_tool_calls_total{name=end_call}"),
        1.0
    );
    nothing_refused(&model);
}

#[actix_web::test]
async fn a_model_gone_mid_call_leaves_the_caller_an_apology_not_silence() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    for how in ["closes", "expires"] {
        let model = FakeRealtime::start("sk-test");
        let app = agent(&model, &twilio, "sk-test").await;
        let call_sid = format!("CAgone{how}");
        twilio.live_call(&call_sid);
        let mut call = started(&app, &model, &call_sid).await;
        match how {
            "closes" => model.close(1001, "maximum duration reached").await,
            _ => {
                model
                    .send(json!({"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired", "message": "Your session hit the maximum duration of 60 minutes."}}))
                    .await
            }
        }
        assert_eq!(call.expect_close().await, (1000, "hangup".into()), "{how}");
        let update = twilio
            .updates()
            .into_iter()
            .find(|u| u.call_sid == call_sid)
            .unwrap();
        assert!(
            update.form[0]
                .1
                .contains("<Say>Sorry, the assistant is unavailable")
                && update.form[0].1.contains("<Hangup/>"),
            "{how}: {update:?}"
        );
        app.wait_for_active(0).await;
        if how == "expires" {
            let m = scrape(&app).await;
            assert_eq!(
                metric(
                    &m,
                    "callvisor_agent_model_errors_total{type=session_expired}"
                ),
                1.0
            );
        }
    }
}

#[actix_web::test]
async fn a_refused_key_gives_the_apology_at_once_instead_of_failing_over() {
    let (model, twilio) = (
        FakeRealtime::start("sk-right"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-wrong").await;
    twilio.live_call("CAkey");
    let mut call = app.start_call("CAkey").await;
    // Not 1011: every replica would get the same 401.
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    app.wait_for_active(0).await;
    assert_eq!(twilio.answers("CAkey"), [200], "one REST request");
    assert!(twilio.updates()[0].form[0]
        .1
        .contains("<Say>Sorry, the assistant is unavailable"));
    let m = scrape(&app).await;
    assert_eq!(
        metric(&m, "callvisor_agent_model_errors_total{type=auth}"),
        1.0
    );
    assert_eq!(
        metric(&m, "callvisor_calls_ended_total{reason=hangup}"),
        1.0
    );
}

#[actix_web::test]
async fn caller_audio_before_the_model_opens_reaches_it_after_the_session_update() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    model.delay_handshake(Duration::from_millis(500));
    let app = agent(&model, &twilio, "sk-test").await;
    let sid = stream_sid_for("CAhello");
    let mut call = app.open_stream().await;
    call.connected_and_start("CAhello", &sid, &[]).await;
    // "Hello?" before the model's socket is open.
    call.media(&sid, 1, "f39/fw==").await;
    call.media(&sid, 2, "AAAA").await;
    model.wait_for("input_audio_buffer.append", 2).await;
    let received = model.received();
    assert_eq!(
        model.types(),
        [
            "session.update",
            "input_audio_buffer.append",
            "input_audio_buffer.append"
        ]
    );
    assert_eq!(received[1]["audio"], "f39/fw==");
    assert_eq!(received[2]["audio"], "AAAA");
    call.stop(&sid, "CAhello").await;
    assert_eq!(call.expect_close().await.0, 1000);
    nothing_refused(&model);
}

#[actix_web::test]
async fn a_greeting_goes_first_and_the_transfer_tool_dials_the_number() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent_with(&model, &twilio, "sk-test", |c| {
        c.greeting = Some("Thanks for calling Acme.".into());
        c.transfer_targets = vec![TransferTarget {
            name: "desk".into(),
            destination: Destination::Number("+14155550123".into()),
        }];
    })
    .await;
    twilio.live_call("CAxfer");
    let mut call = started(&app, &model, "CAxfer").await;
    model.wait_for("response.create", 1).await;
    // The session is set up first, then the greeting is asked for.
    assert_eq!(
        model.types(),
        [
            "session.update",
            "conversation.item.create",
            "response.create"
        ]
    );
    let received = model.received();
    let tools: Vec<_> = received[0]["session"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tools, ["end_call", "transfer_call"]);
    assert!(received[1]["item"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Thanks for calling Acme."));

    model.tool_call("transfer_call", "c1").await;
    assert_eq!(call.expect_close().await, (1000, "transfer".into()));
    let update = &twilio.updates()[0];
    assert_eq!(update.call_sid, "CAxfer");
    assert_eq!(update.form[0].0, "Twiml");
    assert!(
        update.form[0]
            .1
            .contains("<Dial><Number>+14155550123</Number></Dial>"),
        "{update:?}"
    );
    assert_eq!(model.wait_closed().await, 1000);
    app.wait_for_active(0).await;
    nothing_refused(&model);
}

#[actix_web::test]
async fn a_call_back_after_a_hand_off_is_not_greeted_again() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent_with(&model, &twilio, "sk-test", |c| {
        c.greeting = Some("Thanks for calling Acme.".into());
    })
    .await;
    let sid = stream_sid_for("CAagain");
    let mut call = started_with(&app, &model, "CAagain", &[("attempt", "2")]).await;
    sync(&mut call, &model, &sid, 1).await;
    assert_eq!(
        model.types(),
        ["session.update", "input_audio_buffer.append"]
    );
    call.stop(&sid, "CAagain").await;
    assert_eq!(call.expect_close().await.0, 1000);
}

#[actix_web::test]
async fn a_failed_transfer_is_followed_by_the_end_asked_for_meanwhile() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent_with(&model, &twilio, "sk-test", |c| {
        c.transfer_targets = vec![TransferTarget {
            name: "desk".into(),
            destination: Destination::Number("+14155550123".into()),
        }];
    })
    .await;
    twilio.live_call("CAqueue");
    // Both tries of the transfer fail, slowly: the model's socket closes meanwhile.
    twilio.fail_first("CAqueue", 2);
    twilio.delay("CAqueue", Duration::from_millis(300));
    let mut call = started(&app, &model, "CAqueue").await;
    model.speech_stopped().await;
    model.tool_call("transfer_call", "c1").await;
    model.close(1011, "server error").await;
    // The apology the closed socket asked for is not dropped: it runs once the transfer fails.
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    assert_eq!(twilio.answers("CAqueue"), [500, 500, 200]);
    let said = &twilio.updates()[0].form[0].1;
    assert!(
        said.contains("<Say>Sorry, the assistant is unavailable"),
        "{said}"
    );
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn without_a_number_the_model_hears_it_cannot_transfer_and_keys_can_stay_private() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent_with(&model, &twilio, "sk-test", |a| a.dtmf_to_model = false).await;
    let sid = stream_sid_for("CAnoxfer");
    let mut call = started(&app, &model, "CAnoxfer").await;
    let tools = &model.received()[0]["session"]["tools"];
    assert_eq!(tools.as_array().unwrap().len(), 1, "{tools}");
    // AGENT_DTMF=off: a key press stays with callvisor.
    call.dtmf(&sid, "7").await;
    sync(&mut call, &model, &sid, 1).await;
    model.speech_stopped().await;
    model.tool_call("transfer_call", "c9").await;
    let output = model.wait_for("conversation.item.create", 1).await;
    assert_eq!(
        output["item"],
        json!({"type": "function_call_output", "call_id": "c9", "output": r#"{"error":"no transfer target is configured"}"#})
    );
    // The tool's answer asks for a response once the one that called it is done.
    sync(&mut call, &model, &sid, 2).await;
    assert_eq!(count(&model, "response.create"), 0);
    model.finish_response().await;
    model.wait_for("response.create", 1).await;
    assert!(twilio.updates().is_empty());
    call.stop(&sid, "CAnoxfer").await;
    assert_eq!(call.expect_close().await.0, 1000);
    app.wait_for_active(0).await;
    nothing_refused(&model);
}

#[actix_web::test]
async fn a_rate_limited_or_unreachable_model_fails_the_call_over() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let model = FakeRealtime::start("sk-test");
    model.refuse_with(429);
    let app = agent(&model, &twilio, "sk-test").await;
    let mut call = app.start_call("CA429").await;
    assert_eq!(
        call.expect_close().await,
        (1011, "model unavailable".into())
    );
    app.wait_for_active(0).await;

    // Nothing listens at the model's address.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let app = spawn_app_with(move |c| {
        c.handler = Arc::new(agent_config(&format!("ws://{gone}/v1/realtime")));
        c.twilio_api_base_url = twilio.base.clone();
        c.twilio_api_key = Some((KEY_SID.into(), "key-secret".to_string().into()));
    })
    .await;
    let mut call = app.start_call("CAgone").await;
    assert_eq!(
        call.expect_close().await,
        (1011, "model unavailable".into())
    );
    app.wait_for_active(0).await;
    let m = scrape(&app).await;
    assert_eq!(
        metric(&m, "callvisor_calls_ended_total{reason=failed_over}"),
        1.0
    );
}

#[actix_web::test]
async fn a_hand_off_closes_the_model_socket_so_no_session_is_left_billing() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    let sid = stream_sid_for("CAmove");
    let mut call = started(&app, &model, "CAmove").await;
    sync(&mut call, &model, &sid, 1).await;
    app.hand_off_all().await;
    assert_eq!(call.expect_close().await, (1001, "handoff".into()));
    assert_eq!(model.wait_closed().await, 1000);
    app.wait_for_active(0).await;
    assert!(twilio.updates().is_empty(), "a hand-off is not a hang-up");
}

#[actix_web::test]
async fn sigterm_while_a_hang_up_is_in_flight_waits_for_it_and_never_hands_the_call_off() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    twilio.live_call("CAdrain");
    twilio.delay("CAdrain", Duration::from_millis(800));
    let mut bin = spawn_binary(&[
        ("HANDLER", "openai"),
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_REALTIME_URL", &model.url),
        ("TWILIO_API_BASE_URL", &twilio.base),
        ("TWILIO_API_KEY_SID", KEY_SID),
        ("TWILIO_API_KEY_SECRET", "key-secret"),
        ("DRAIN_TIMEOUT_SECS", "0"),
    ])
    .await;
    let mut call = started(&bin.app, &model, "CAdrain").await;
    model.speech_stopped().await;
    model.tool_call("end_call", "c1").await;
    model.finish_response().await;
    bin.wait_for_log("call hangup: asking Twilio").await;
    // The drain's deadline is now: every live call is handed off, but not this one.
    bin.signal("TERM");
    bin.wait_for_log("not handed off").await;
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    assert_eq!(bin.exit_code(PATIENCE).await, 0);
    assert_eq!(
        twilio.answers("CAdrain"),
        [200],
        "the hang-up completed once"
    );
    nothing_refused(&model);
}

#[actix_web::test]
async fn each_call_logs_its_model_connect_first_audio_barge_in_and_end_and_never_the_key() {
    let key = "sk-live-5e3c4b2a1f0e";
    let (model, twilio) = (
        FakeRealtime::start(key),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    // No OPENAI_MODEL: the default model.
    let mut bin = spawn_binary(&[
        ("HANDLER", "openai"),
        ("OPENAI_API_KEY", key),
        ("OPENAI_REALTIME_URL", &model.url),
        ("TWILIO_API_BASE_URL", &twilio.base),
        ("TWILIO_API_KEY_SID", KEY_SID),
        ("TWILIO_API_KEY_SECRET", "key-secret"),
        ("RUST_LOG", "debug"),
    ])
    .await;
    let sid = stream_sid_for("CAlogged");
    let mut call = started(&bin.app, &model, "CAlogged").await;
    assert_eq!(model.models(), ["gpt-realtime-2.1"]);
    model.speech_stopped().await;
    model.audio("i1", 100).await;
    frames(&mut call, 2).await;
    model.speech_started().await;
    assert_eq!(call.next_json().await["event"], "clear");
    // The next answer reaches the caller: the agent has handled the cut-off one's in-flight
    // deltas (the model's socket is in order).
    model.speech_stopped().await;
    model.audio("i2", 20).await;
    assert_eq!(frames(&mut call, 2).await.0, [audio_ms(20)]);
    call.stop(&sid, "CAlogged").await;
    assert_eq!(call.expect_close().await.0, 1000);
    for needle in [
        "agent: model connected in",
        "agent: first audio",
        "agent: barge-in after 0 of 100 ms",
        "agent: call ended (stop), 1 barge-in(s), 2 interrupted delta(s) dropped",
    ] {
        let line = bin.wait_for_log(needle).await;
        assert!(line.contains("CAlogged"), "no call_sid: {line}");
        assert!(line.contains(&sid), "no stream_sid: {line}");
    }
    bin.signal("TERM");
    assert_eq!(bin.exit_code(PATIENCE).await, 0);
    let leaked: Vec<String> = bin
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(key) || l.contains("key-secret"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    nothing_refused(&model);
}
