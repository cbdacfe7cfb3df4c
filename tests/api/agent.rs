//! `HANDLER=openai` against a fake Realtime API and a fake of Twilio's REST API.

use std::sync::Arc;

use base64::Engine;
use callvisor::config::{AgentConfig, HandlerKind};
use serde_json::json;

use crate::fake_openai::FakeOpenAi;
use crate::helpers::*;
use callvisor::fakes::twilio_rest::FakeTwilio;

const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";

async fn agent(model: &FakeOpenAi, twilio: &FakeTwilio, key: &str) -> TestApp {
    agent_with(model, twilio, key, |_| {}).await
}

async fn agent_with(
    model: &FakeOpenAi,
    twilio: &FakeTwilio,
    key: &str,
    configure: impl FnOnce(&mut AgentConfig),
) -> TestApp {
    let mut config = AgentConfig {
        api_key: key.to_string().into(),
        ..agent_config(&model.url)
    };
    configure(&mut config);
    let base = twilio.base.clone();
    spawn_app_with(move |c| {
        c.handler = HandlerKind::OpenAi(Arc::new(config));
        c.twilio_api_base_url = base;
        c.twilio_api_key = Some((KEY_SID.into(), "key-secret".to_string().into()));
    })
    .await
}

/// `ms` milliseconds of mu-law as base64 (8 bytes a millisecond).
fn audio_ms(ms: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(vec![0x7f_u8; ms * 8])
}

async fn started(app: &TestApp, model: &FakeOpenAi, call_sid: &str) -> TestStream {
    let mut call = app.open_stream().await;
    call.connected_and_start(
        call_sid,
        &stream_sid_for(call_sid),
        &[("From".into(), "+14155550100".into())],
    )
    .await;
    model.wait_for("session.update", 1).await;
    call
}

/// Sends a caller frame and waits until the model has it: everything the call's actor got
/// before it has been handled.
async fn sync(call: &mut TestStream, model: &FakeOpenAi, sid: &str, n: usize) {
    call.media(sid, n as u64, "AAAA").await;
    model.wait_for("input_audio_buffer.append", n).await;
}

#[actix_web::test]
async fn the_agent_talks_pcmu_both_ways_and_truncates_at_what_the_caller_heard() {
    let (model, twilio) = (
        FakeOpenAi::start("sk-test"),
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
    assert_eq!(model.models(), ["gpt-realtime"]);

    // Caller audio goes out unchanged.
    call.media(&sid, 1, "f39/fw==").await;
    let append = model.wait_for("input_audio_buffer.append", 1).await;
    assert_eq!(append["audio"], "f39/fw==");

    // The caller stops speaking; the agent answers with two 100 ms deltas of one item: each
    // reaches the caller, followed by a mark.
    model
        .send(json!({"type": "input_audio_buffer.speech_stopped"}))
        .await;
    for _ in 0..2 {
        model
            .send(json!({"type": "response.output_audio.delta", "item_id": "item1", "delta": audio_ms(100)}))
            .await;
    }
    let mut marks = Vec::new();
    for _ in 0..4 {
        let frame = call.next_json().await;
        assert_eq!(frame["streamSid"], sid.as_str());
        match frame["event"].as_str().unwrap() {
            "media" => assert_eq!(frame["media"]["payload"], audio_ms(100)),
            "mark" => marks.push(frame["mark"]["name"].as_str().unwrap().to_string()),
            other => panic!("{other}"),
        }
    }
    assert_eq!(marks.len(), 2);
    // The caller heard the first 100 ms (its mark came back), then talks over the rest.
    call.mark(&sid, &marks[0]).await;
    sync(&mut call, &model, &sid, 2).await;
    model
        .send(json!({"type": "input_audio_buffer.speech_started"}))
        .await;
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

    // A key press reaches the model as text.
    call.dtmf(&sid, "5").await;
    let item = model.wait_for("conversation.item.create", 1).await;
    assert_eq!(item["item"]["content"][0]["text"], "The caller pressed 5");

    // The caller hangs up: the model's socket is closed at once.
    call.stop(&sid, "CAagent").await;
    assert_eq!(call.expect_close().await.0, 1000);
    assert_eq!(model.wait_closed().await, 1000);
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn end_call_lets_the_goodbye_play_then_hangs_up() {
    let (model, twilio) = (
        FakeOpenAi::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-test").await;
    twilio.live_call("CAbye");
    let sid = stream_sid_for("CAbye");
    let mut call = started(&app, &model, "CAbye").await;
    model
        .send(json!({"type": "response.output_audio.delta", "item_id": "bye", "delta": audio_ms(300)}))
        .await;
    model
        .send(json!({"type": "response.output_item.done", "item": {"type": "function_call", "name": "end_call", "call_id": "c1", "arguments": "{}"}}))
        .await;
    assert_eq!(call.next_json().await["event"], "media");
    let mark = call.next_json().await;
    assert_eq!(mark["event"], "mark");
    // The goodbye has not played yet: no hang-up.
    sync(&mut call, &model, &sid, 1).await;
    assert!(
        twilio.updates().is_empty(),
        "hung up before the goodbye played"
    );
    call.mark(&sid, mark["mark"]["name"].as_str().unwrap())
        .await;
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
}

#[actix_web::test]
async fn a_model_gone_mid_call_leaves_the_caller_an_apology_not_silence() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    for how in ["closes", "errors"] {
        let model = FakeOpenAi::start("sk-test");
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
        if how == "errors" {
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
async fn a_wrong_key_fails_the_call_over() {
    let (model, twilio) = (
        FakeOpenAi::start("sk-right"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent(&model, &twilio, "sk-wrong").await;
    let mut call = app.start_call("CAkey").await;
    assert_eq!(
        call.expect_close().await,
        (1011, "model unavailable".into())
    );
    app.wait_for_active(0).await;
    assert!(
        twilio.updates().is_empty(),
        "another replica may reach the model"
    );
}

#[actix_web::test]
async fn a_greeting_goes_first_and_the_transfer_tool_dials_the_number() {
    let (model, twilio) = (
        FakeOpenAi::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent_with(&model, &twilio, "sk-test", |c| {
        c.greeting = Some("Thanks for calling Acme.".into());
        c.transfer_number = Some("+14155550123".into());
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

    model
        .send(json!({"type": "response.output_item.done", "item": {"type": "function_call", "name": "transfer_call", "call_id": "c1", "arguments": "{}"}}))
        .await;
    assert_eq!(call.expect_close().await, (1000, "transfer".into()));
    let update = &twilio.updates()[0];
    assert_eq!(update.call_sid, "CAxfer");
    assert_eq!(update.form[0].0, "Twiml");
    assert!(
        update.form[0].1.contains("<Dial>+14155550123</Dial>"),
        "{update:?}"
    );
    assert_eq!(model.wait_closed().await, 1000);
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn without_a_number_the_model_hears_it_cannot_transfer_and_keys_can_stay_private() {
    let (model, twilio) = (
        FakeOpenAi::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let app = agent_with(&model, &twilio, "sk-test", |c| c.dtmf_to_model = false).await;
    let sid = stream_sid_for("CAnoxfer");
    let mut call = started(&app, &model, "CAnoxfer").await;
    let tools = &model.received()[0]["session"]["tools"];
    assert_eq!(tools.as_array().unwrap().len(), 1, "{tools}");
    // AGENT_DTMF=off: a key press stays with callvisor.
    call.dtmf(&sid, "7").await;
    sync(&mut call, &model, &sid, 1).await;
    model
        .send(json!({"type": "response.output_item.done", "item": {"type": "function_call", "name": "transfer_call", "call_id": "c9", "arguments": "{}"}}))
        .await;
    let output = model.wait_for("conversation.item.create", 1).await;
    assert_eq!(
        output["item"],
        json!({"type": "function_call_output", "call_id": "c9", "output": "no transfer number is configured"})
    );
    model.wait_for("response.create", 1).await;
    assert!(twilio.updates().is_empty());
    call.stop(&sid, "CAnoxfer").await;
    assert_eq!(call.expect_close().await.0, 1000);
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn a_rate_limited_or_unreachable_model_fails_the_call_over() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let model = FakeOpenAi::start("sk-test");
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
        c.handler =
            HandlerKind::OpenAi(Arc::new(agent_config(&format!("ws://{gone}/v1/realtime"))));
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
        FakeOpenAi::start("sk-test"),
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
async fn each_call_logs_its_model_connect_first_audio_barge_in_and_end_and_never_the_key() {
    let key = "sk-live-5e3c4b2a1f0e";
    let (model, twilio) = (
        FakeOpenAi::start(key),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
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
    model
        .send(json!({"type": "input_audio_buffer.speech_stopped"}))
        .await;
    model
        .send(
            json!({"type": "response.output_audio.delta", "item_id": "i1", "delta": audio_ms(100)}),
        )
        .await;
    assert_eq!(call.next_json().await["event"], "media");
    assert_eq!(call.next_json().await["event"], "mark");
    model
        .send(json!({"type": "input_audio_buffer.speech_started"}))
        .await;
    assert_eq!(call.next_json().await["event"], "clear");
    call.stop(&sid, "CAlogged").await;
    assert_eq!(call.expect_close().await.0, 1000);
    for needle in [
        "agent: model connected in",
        "agent: first audio",
        "agent: barge-in after 0 of 100 ms",
        "agent: call ended (stop), 1 barge-in(s)",
    ] {
        let line = bin.wait_for_log(needle).await;
        assert!(line.contains("CAlogged"), "no call_sid: {line}");
    }
    bin.signal("TERM");
    assert_eq!(bin.exit_code(PATIENCE).await, 0);
    let leaked: Vec<String> = bin
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(key) || l.contains("key-secret"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}
