//! The GPT-Live engine: the real binary, an agents file with a live agent, the strict GPT-Live
//! fake (`src/fakes/live.rs`), the strict fake of Twilio's REST API, signed webhooks and streams
//! as Twilio sends them, and a tool server that verifies every signature on its own.

use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use callvisor::fakes::live::FakeLive;
use callvisor::fakes::twilio_rest::{AppAction, FakeTwilio};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::routing::{signature_ok, stream_for, webhook_for, KEY_SID, TOKEN, WEBHOOK_SECRET};

/// The tool server: `/lookup_order` answers at once; every request kept.
#[derive(Default)]
struct Tools {
    requests: Vec<(bool, Value)>,
}

async fn lookup_order(
    req: HttpRequest,
    body: web::Bytes,
    tools: web::Data<Arc<Mutex<Tools>>>,
) -> HttpResponse {
    let ok = signature_ok(&req, &body);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    tools.lock().unwrap().requests.push((ok, parsed.clone()));
    if !ok {
        return HttpResponse::Unauthorized().finish();
    }
    HttpResponse::Ok()
        .json(json!({"status": "shipped", "order": parsed["arguments"]["order_number"]}))
}

struct Live {
    bin: BinaryApp,
    model: FakeLive,
    twilio: FakeTwilio,
    tools: Arc<Mutex<Tools>>,
    events: Arc<Mutex<Vec<Value>>>,
}

/// The binary with one live agent (`desk`, the default) and a tool; records go to a receiver of
/// the test's own (`events`).
async fn live_binary(test: &str, extra: &[(&str, &str)]) -> Live {
    let model = FakeLive::start("sk-test");
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let tools = Arc::new(Mutex::new(Tools::default()));
    let shared = tools.clone();
    let tool_addr = serve_peer(move |cfg| {
        cfg.app_data(web::Data::new(shared.clone()))
            .route("/lookup_order", web::post().to(lookup_order));
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let events_addr = serve_peer(move |cfg| {
        let sink = sink.clone();
        cfg.route(
            "/events",
            web::post().to(move |body: web::Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_slice::<Value>(&body).unwrap());
                    HttpResponse::NoContent().finish()
                }
            }),
        );
    });
    let dir = std::env::temp_dir().join(format!("callvisor-live-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agents.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[agents.desk]
default = true
engine = "live"
backend_model = "gpt-5.5"
instructions = "You answer for Acme, calling {{{{From}}}}."
greeting = "Thanks for calling Acme."
voice = "cedar"
transfer_targets = {{ sales = "+15550002222" }}

[[agents.desk.tools]]
name = "lookup_order"
description = "Look up an order."
url = "http://{tool_addr}/lookup_order"
parameters = {{ type = "object", properties = {{ order_number = {{ type = "string" }} }} }}
"#
        ),
    )
    .unwrap();
    let events_url = format!("http://{events_addr}/events");
    let mut env = vec![
        ("HANDLER", "openai"),
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_LIVE_URL", model.url.as_str()),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_API_BASE_URL", twilio.base.as_str()),
        ("TWILIO_API_KEY_SID", KEY_SID),
        ("TWILIO_API_KEY_SECRET", "key-secret"),
        ("AGENTS_FILE", file.to_str().unwrap()),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("CALL_EVENTS_URL", events_url.as_str()),
    ];
    env.extend_from_slice(extra);
    let bin = spawn_binary(&env).await;
    let _ = std::fs::remove_dir_all(&dir);
    Live {
        bin,
        model,
        twilio,
        tools,
        events,
    }
}

/// A call to the agent, started: its stream.
async fn call(live: &Live, call_sid: &str) -> TestStream {
    live.twilio.live_call(call_sid);
    let twiml = parse_twiml(&webhook_for(&live.bin.app, call_sid, "+15550001111").await);
    stream_for(&live.bin.app, call_sid, &twiml, |_| {}).await
}

/// Sends a caller frame and waits until the model has it: what the call got before is handled.
async fn sync(call: &mut TestStream, model: &FakeLive, sid: &str, n: usize) {
    call.media(sid, n as u64, "AAAA").await;
    model.wait_for("session.input_audio.append", n).await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The next frames to Twilio up to and including the next mark: the media payloads, the mark.
async fn media_until_mark(call: &mut TestStream) -> (Vec<String>, String) {
    let mut media = Vec::new();
    loop {
        let frame = call.next_json().await;
        match frame["event"].as_str().unwrap() {
            "media" => media.push(frame["media"]["payload"].as_str().unwrap().to_string()),
            "mark" => return (media, frame["mark"]["name"].as_str().unwrap().to_string()),
            other => panic!("expected media or mark, got {other}: {frame}"),
        }
    }
}

/// The fake refused nothing the agent sent (the test's own injected error, `client_event_id`
/// "injected", aside).
fn nothing_refused(model: &FakeLive) {
    let errors: Vec<Value> = model
        .errors()
        .into_iter()
        .filter(|e| e["client_event_id"] != "injected")
        .collect();
    assert!(
        errors.is_empty(),
        "the real service would refuse: {errors:#?}"
    );
}

#[actix_web::test]
async fn the_session_starts_first_and_audio_flows_unchanged_both_ways() {
    let live = live_binary("start", &[]).await;
    let model = &live.model;
    model.hold_start();
    let sid = stream_sid_for("CAlive1");
    let mut call = call(&live, "CAlive1").await;

    let start = model.wait_for("session.start", 1).await;
    let handshake = &model.handshakes()[0];
    assert_eq!(handshake.path_and_query, "/v1/live/sessions");
    assert_eq!(handshake.authorization.as_deref(), Some("Bearer sk-test"));
    let agent = handshake.user_agent.as_deref().unwrap_or("");
    assert!(agent.starts_with("callvisor/Rust "), "{agent}");
    let session = &start["session"];
    assert_eq!(session["model"], "gpt-live-1");
    assert_eq!(
        session["audio"]["format"],
        json!({"type": "audio/pcmu", "rate": 8000})
    );
    assert_eq!(session["audio"]["output"]["voice"], "cedar");
    assert_eq!(
        session["instructions"],
        "You answer for Acme, calling +14155550100."
    );
    assert_eq!(session["delegation"]["type"], "responses");
    assert_eq!(session["delegation"]["responses"]["model"], "gpt-5.5");
    let tools: Vec<&str> = session["delegation"]["responses"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["end_call", "transfer_call", "lookup_order"]);

    // The caller talks before session.started: nothing goes out, the audio waits.
    call.media(&sid, 1, "f39/fw==").await;
    call.media(&sid, 2, "AQID").await;
    assert_eq!(model.types(), ["session.start"]);
    model.release_start().await;
    let first = model.wait_for("session.input_audio.append", 1).await;
    assert_eq!(first["audio"], "f39/fw==");
    assert_eq!(
        model.wait_for("session.input_audio.append", 2).await["audio"],
        "AQID"
    );
    let greeting = model.wait_for("session.commentary.append", 1).await;
    assert_eq!(greeting["delegation_id"], Value::Null);
    assert!(greeting["content"]
        .as_str()
        .unwrap()
        .contains("Thanks for calling Acme."));

    // The model's audio reaches Twilio as it came, then a mark.
    let audio = vec![0x7fu8; 1600]; // 200 ms
    model.output_audio(&audio).await;
    let (media, _mark) = media_until_mark(&mut call).await;
    assert_eq!(media, [b64(&audio)]);
    call.stop(&sid, "CAlive1").await;
    assert_eq!(call.expect_close().await.0, 1000);
    // The session is closed when the call ends.
    model.wait_for("session.close", 1).await;
    nothing_refused(model);
}

#[actix_web::test]
async fn delegated_tool_calls_reach_the_business_and_their_outputs_go_back_in_one_batch() {
    let live = live_binary("tools", &[]).await;
    let model = &live.model;
    let sid = stream_sid_for("CAtools");
    let mut call = call(&live, "CAtools").await;
    model.wait_for("session.commentary.append", 1).await;

    // Two calls in one response: the tool server's and an unknown tool's.
    model
        .function_call("lookup_order", "call_1", json!({"order_number": "1234"}))
        .await;
    model.function_call("fly", "call_2", json!({})).await;
    model.finish_delegation().await;
    let first = model.wait_for("response.item.create", 1).await;
    let second = model.wait_for("response.item.create", 2).await;
    let mut outputs = [first, second];
    outputs.sort_by_key(|o| o["item"]["call_id"].as_str().unwrap().to_string());
    assert_eq!(outputs[0]["item"]["type"], "function_call_output");
    let answer: Value =
        serde_json::from_str(outputs[0]["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(answer, json!({"status": "shipped", "order": "1234"}));
    assert!(outputs[1]["item"]["output"]
        .as_str()
        .unwrap()
        .contains("unknown tool"));
    model.wait_for("response.create", 1).await;
    // The request reached the business signed, with the parsed arguments.
    let requests = live.tools.lock().unwrap().requests.clone();
    assert_eq!(requests.len(), 1);
    let (signed, body) = &requests[0];
    assert!(signed);
    assert_eq!(body["tool"], "lookup_order");
    assert_eq!(body["call_id"], "call_1");
    assert_eq!(body["arguments"], json!({"order_number": "1234"}));

    // A command error is logged; the call goes on.
    model
        .send(
            json!({"type": "error", "event_id": "e1", "client_event_id": "injected",
            "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                      "message": "Unknown parameter", "param": "session.voice"}}),
        )
        .await;
    sync(&mut call, model, &sid, 1).await;
    live.bin
        .wait_for_log("the model refused a command (the call goes on): code=unknown_parameter")
        .await;

    // A key press reaches the model as silent context.
    call.dtmf(&sid, "5").await;
    let thinking = model.wait_for("session.thinking.append", 1).await;
    assert_eq!(thinking["delegation_id"], Value::Null);
    assert!(thinking["content"].as_str().unwrap().contains('5'));

    // The record: transcript turns grouped by gaps, the tool calls, the seconds.
    model.input_transcript("Where is ", 1000, 1200).await;
    model.input_transcript("my order?", 1200, 1600).await;
    model.output_transcript("It shipped.", 2000, 2600).await;
    model.input_transcript("Thanks.", 5000, 5400).await;
    model.usage(42.5).await;
    sync(&mut call, model, &sid, 2).await;
    call.stop(&sid, "CAtools").await;
    assert_eq!(call.expect_close().await.0, 1000);
    let ended = loop {
        if let Some(r) = live
            .events
            .lock()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "call.ended")
        {
            break r.clone();
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(ended["engine"], "live");
    assert_eq!(ended["model"], "gpt-live-1");
    let turns: Vec<(&str, &str)> = ended["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["role"].as_str().unwrap(), t["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns,
        [
            ("caller", "Where is my order?"),
            ("agent", "It shipped."),
            ("caller", "Thanks.")
        ]
    );
    assert_eq!(ended["usage"]["seconds"], 42.5);
    let names: Vec<&str> = ended["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"lookup_order") && names.contains(&"fly"),
        "{names:?}"
    );
    nothing_refused(model);
}

#[actix_web::test]
async fn end_call_hangs_up_after_the_goodbye_has_played_and_the_session_is_closed() {
    let live = live_binary("end", &[]).await;
    let model = &live.model;
    let sid = stream_sid_for("CAbye");
    let mut call = call(&live, "CAbye").await;
    model.wait_for("session.commentary.append", 1).await;
    // The goodbye (200 ms: a mark follows), then the backend ends the call.
    model.output_audio(&[0x7f; 1600]).await;
    let (_, spoken) = media_until_mark(&mut call).await;
    model.function_call("end_call", "call_bye", json!({})).await;
    model.finish_delegation().await;
    let (_, goodbye) = media_until_mark(&mut call).await;
    // Audio after the goodbye is the model filling the silence: never sent.
    model.output_audio(&[0x7f; 1600]).await;
    call.mark(&sid, &spoken).await;
    sync(&mut call, model, &sid, 1).await;
    assert_eq!(
        model
            .types()
            .iter()
            .filter(|t| *t == "response.item.create")
            .count(),
        0,
        "nothing before the goodbye has played"
    );
    assert!(live.twilio.updates().is_empty());
    call.mark(&sid, &goodbye).await;
    let output = model.wait_for("response.item.create", 1).await;
    assert_eq!(output["item"]["call_id"], "call_bye");
    model.wait_for("session.close", 1).await;
    // The fake answers session.closed; then the REST hang-up.
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    let update = &live.twilio.updates()[0];
    assert_eq!(update.effect, Some(AppAction::HungUp { said: None }));
    assert_eq!(
        model
            .types()
            .iter()
            .filter(|t| *t == "response.create")
            .count(),
        0,
        "no spoken continuation after end_call"
    );
    nothing_refused(model);
}

#[actix_web::test]
async fn transfer_call_dials_the_target() {
    let live = live_binary("transfer", &[]).await;
    let model = &live.model;
    let mut call = call(&live, "CAxfer").await;
    model.wait_for("session.commentary.append", 1).await;
    model
        .function_call("transfer_call", "call_x", json!({"target": "sales"}))
        .await;
    model.finish_delegation().await;
    assert_eq!(call.expect_close().await, (1000, "transfer".into()));
    let update = &live.twilio.updates()[0];
    assert_eq!(
        update.effect,
        Some(AppAction::Transferred {
            to: "+15550002222".into()
        })
    );
    let output = model.wait_for("response.item.create", 1).await;
    assert_eq!(output["item"]["call_id"], "call_x");
    nothing_refused(model);
}

#[actix_web::test]
async fn an_expired_session_gives_the_apology_and_the_hang_up() {
    let live = live_binary("expired", &[]).await;
    let model = &live.model;
    let mut call = call(&live, "CAexp").await;
    model.wait_for("session.commentary.append", 1).await;
    model.close_session("expired").await;
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    let update = &live.twilio.updates()[0];
    assert_eq!(
        update.effect,
        Some(AppAction::HungUp {
            said: Some(callvisor::call::handlers::openai::APOLOGY.into())
        })
    );
}

/// The stale-audio clear: only when the caller talks and more than LIVE_CLEAR_AHEAD_MS of the
/// agent's audio sits unplayed at Twilio.
#[actix_web::test]
async fn queued_audio_is_cleared_only_when_the_caller_talks_over_a_stale_backlog() {
    let live = live_binary("clear", &[("LIVE_CLEAR_AHEAD_MS", "300")]).await;
    let model = &live.model;
    let sid = stream_sid_for("CAclear");
    let mut call = call(&live, "CAclear").await;
    model.wait_for("session.commentary.append", 1).await;

    // 200 ms sent and played (its mark came back): the caller talks, nothing is stale.
    model.output_audio(&[0x7f; 1600]).await;
    let (_, played) = media_until_mark(&mut call).await;
    call.mark(&sid, &played).await;
    sync(&mut call, model, &sid, 1).await;
    model.input_transcript("Hm", 300, 400).await;
    sync(&mut call, model, &sid, 2).await;
    // A burst of 1 s the model sent ahead, unplayed: the caller talks, it is cleared.
    model.output_audio(&[0x7f; 8000]).await;
    let (_, _) = media_until_mark(&mut call).await;
    model.input_transcript("Wait", 1500, 1600).await;
    let frame = call.next_json().await;
    assert_eq!(frame, json!({"event": "clear", "streamSid": sid}));
    call.stop(&sid, "CAclear").await;
    assert_eq!(call.expect_close().await.0, 1000);
}

#[actix_web::test]
async fn a_refused_key_is_the_apology_and_an_unreachable_service_a_fail_over() {
    let live = live_binary("refused", &[]).await;
    live.model.refuse_with(401);
    let mut call = call(&live, "CAkey").await;
    assert_eq!(call.expect_close().await, (1000, "hangup".into()));
    live.model.refuse_with(503);
    let mut call = self::call(&live, "CAdown").await;
    assert_eq!(call.expect_close().await.0, 1011);
}
