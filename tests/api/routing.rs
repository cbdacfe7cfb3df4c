//! Agents per number (`AGENTS_FILE`): the webhook picks the agent from `To`, the stream token
//! carries it, the call runs that agent's settings. The real `callvisor` binary, configured
//! through its environment and an agents file on disk, with signed webhooks and streams as
//! Twilio sends them, against the strict fakes of the Realtime API and Twilio's REST API, and
//! the business's tool and config servers (which verify every signature on their own).

use std::path::PathBuf;

use callvisor::fakes::realtime::FakeRealtime;
use callvisor::fakes::twilio_rest::FakeTwilio;
use callvisor::twilio::signature::sign;
use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) const TOKEN: &str = "routing-auth-token";
pub(crate) const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The support agent's prompt, in a file next to the agents file (`instructions_file` is
/// relative to it, not to the binary's working folder).
const SUPPORT_PROMPT: &str = "Support for {{From}}.";

pub(crate) const AGENTS: &str = r#"
[defaults]
model = "gpt-realtime-2.1"

[agents.support]
numbers = ["+15550001111"]
default = true
instructions_file = "prompts/support.md"
greeting = "Support here."
voice = "cedar"

[agents.sales]
numbers = ["+15550002222"]
instructions = "Sales for {{From}}, {{Unknown}}now."
greeting = "Sales here."
voice = "marin"
turn_detection = { type = "semantic_vad", eagerness = "low" }
noise_reduction = "far_field"
transfer_targets = { desk = "+15550003333", pbx = "sip:desk@pbx.example.com" }

[[agents.sales.tools]]
name = "lookup_order"
description = "Look up an order by its number."
url = "https://api.example.com/voice-tools/lookup_order"
parameters = { type = "object", properties = { order_number = { type = "string" } }, required = ["order_number"] }

[[agents.sales.mcp]]
server_label = "crm"
server_url = "https://mcp.example.com/mcp"
allowed_tools = ["find_customer"]
require_approval = "never"
headers_from_env = { Authorization = "CRM_MCP_AUTHORIZATION" }
"#;

/// A folder of the test's own holding `agents.toml` = `text` and the prompt it names; the
/// file's path.
fn agents_file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("callvisor-routing-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("prompts")).unwrap();
    std::fs::write(dir.join("prompts/support.md"), SUPPORT_PROMPT).unwrap();
    let file = dir.join("agents.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The real binary answering with the agents of `text` (written for `test`), its model and
/// Twilio's REST API the fakes, Twilio's requests authenticated, plus `extra` variables.
pub(crate) async fn routed_binary(
    test: &str,
    model: &FakeRealtime,
    twilio: &FakeTwilio,
    text: &str,
    extra: &[(&str, &str)],
) -> BinaryApp {
    let file = agents_file(test, text);
    let mut env = vec![
        ("HANDLER", "openai"),
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_REALTIME_URL", model.url.as_str()),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_API_BASE_URL", twilio.base.as_str()),
        ("TWILIO_API_KEY_SID", KEY_SID),
        ("TWILIO_API_KEY_SECRET", "key-secret"),
        ("AGENTS_FILE", file.to_str().unwrap()),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        // The MCP server's header, as `headers_from_env` names it.
        ("CRM_MCP_AUTHORIZATION", "Bearer crm-key"),
    ];
    env.extend_from_slice(extra);
    let bin = spawn_binary(&env).await;
    // Read at load, before the binary listens: the folder has served its purpose.
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
    bin
}

/// Twilio's webhook for a call to `to`, signed; the TwiML it got.
pub(crate) async fn webhook_for(app: &TestApp, call_sid: &str, to: &str) -> String {
    let params: Vec<(String, String)> = [
        ("CallSid", call_sid),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", "+14155550100"),
        ("To", to),
        ("CallStatus", "ringing"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let url = format!("{}/incoming-call", app.base);
    let mut resp = app
        .client
        .post(&url)
        .insert_header(("X-Twilio-Signature", sign(TOKEN, &url, &params)))
        .send_form(&params)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap()
}

/// The stream Twilio opens from `twiml`, signed, started with its parameters (after `edit`).
pub(crate) async fn stream_for(
    app: &TestApp,
    call_sid: &str,
    twiml: &Twiml,
    edit: impl FnOnce(&mut Vec<(String, String)>),
) -> TestStream {
    let url = twiml.stream_url.clone().expect("a <Stream>");
    let mut call = app
        .open_stream_with_header(&url, ("X-Twilio-Signature", sign(TOKEN, &url, &[])))
        .await;
    let mut parameters = twiml.parameters.clone();
    edit(&mut parameters);
    call.connected_and_start(call_sid, &stream_sid_for(call_sid), &parameters)
        .await;
    call
}

fn tool_names(update: &Value) -> Vec<String> {
    update["session"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["name"]
                .as_str()
                .or(t["server_label"].as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

#[actix_web::test]
async fn two_numbers_reach_two_agents_and_an_unknown_number_the_default() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let bin = routed_binary("two-numbers", &model, &twilio, AGENTS, &[]).await;
    let app = &bin.app;
    let calls = [
        ("CAsales", "+15550002222", "sales"),
        ("CAsupport", "+15550001111", "support"),
        ("CAother", "+15559999999", "support"),
    ];
    for (n, (call_sid, to, agent)) in calls.iter().enumerate() {
        let twiml = parse_twiml(&webhook_for(app, call_sid, to).await);
        assert!(
            twiml
                .parameters
                .contains(&("agent".to_string(), agent.to_string())),
            "{twiml:?}"
        );
        let mut call = stream_for(app, call_sid, &twiml, |_| {}).await;
        let update = model.wait_for("session.update", n + 1).await;
        let greeting = model.wait_for("conversation.item.create", n + 1).await;
        let said = greeting["item"]["content"][0]["text"].as_str().unwrap();
        let session = &update["session"];
        match *agent {
            "sales" => {
                // An unfilled placeholder is removed, not read out, and logged.
                assert_eq!(session["instructions"], "Sales for +14155550100, now.");
                let warned = bin.wait_for_log("agent: no value for {{Unknown}}").await;
                assert!(warned.contains("WARN"), "{warned}");
                assert!(warned.contains("CAsales"), "{warned}");
                assert_eq!(session["audio"]["output"]["voice"], "marin");
                assert_eq!(
                    session["audio"]["input"]["turn_detection"],
                    json!({"type": "semantic_vad", "eagerness": "low"})
                );
                assert_eq!(
                    session["audio"]["input"]["noise_reduction"],
                    json!({"type": "far_field"})
                );
                assert!(said.contains("Sales here."), "{said}");
                assert_eq!(
                    tool_names(&update),
                    ["end_call", "transfer_call", "lookup_order", "crm"]
                );
                let tools = session["tools"].as_array().unwrap();
                assert_eq!(
                    tools[1]["parameters"]["properties"]["target"]["enum"],
                    json!(["desk", "pbx"])
                );
                assert_eq!(tools[2]["parameters"]["required"], json!(["order_number"]));
                // The MCP server, its header's value read from the environment.
                assert_eq!(
                    tools[3],
                    json!({"type": "mcp", "server_label": "crm",
                           "server_url": "https://mcp.example.com/mcp",
                           "allowed_tools": ["find_customer"], "require_approval": "never",
                           "headers": {"Authorization": "Bearer crm-key"}})
                );
            }
            _ => {
                // From `prompts/support.md`, beside the agents file.
                assert_eq!(session["instructions"], "Support for +14155550100.");
                assert_eq!(session["audio"]["output"]["voice"], "cedar");
                assert!(said.contains("Support here."), "{said}");
                assert_eq!(tool_names(&update), ["end_call"]);
            }
        }
        call.stop(&stream_sid_for(call_sid), call_sid).await;
        assert_eq!(call.expect_close().await.0, 1000);
    }
    app.wait_for_active(0).await;
    assert!(model.errors().is_empty(), "{:#?}", model.errors());
}

#[actix_web::test]
async fn a_stream_token_for_one_agent_runs_it_whatever_the_stream_claims() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let bin = routed_binary("forged", &model, &twilio, AGENTS, &[]).await;
    let twiml = parse_twiml(&webhook_for(&bin.app, "CAforged", "+15550002222").await);
    let mut call = stream_for(&bin.app, "CAforged", &twiml, |params| {
        for (name, value) in params.iter_mut() {
            if name == "agent" {
                *value = "support".into();
            }
        }
    })
    .await;
    let update = model.wait_for("session.update", 1).await;
    assert_eq!(update["session"]["audio"]["output"]["voice"], "marin");
    call.stop("MZforged", "CAforged").await;
    assert_eq!(call.expect_close().await.0, 1000);
}

#[actix_web::test]
async fn without_a_default_agent_an_unknown_number_is_not_in_service() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let no_default = AGENTS.replace("default = true\n", "");
    let bin = routed_binary("no-default", &model, &twilio, &no_default, &[]).await;
    let twiml = parse_twiml(&webhook_for(&bin.app, "CAnowhere", "+15559999999").await);
    assert_eq!(twiml.stream_url, None);
    assert_eq!(
        twiml.say.as_deref(),
        Some("The number you have called is not in service.")
    );
    assert!(twiml.hangup);
    let warned = bin
        .wait_for_log("no agent answers To=\"+15559999999\"")
        .await;
    assert!(warned.contains("WARN"), "{warned}");
    assert!(warned.contains("CAnowhere"), "{warned}");
    let m = scrape(&bin.app).await;
    assert_eq!(
        metric(
            &m,
            "callvisor_webhook_answers_total{outcome=not_in_service}"
        ),
        1.0
    );
}

#[actix_web::test]
async fn transfer_call_dials_the_target_the_model_names() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let bin = routed_binary("transfer", &model, &twilio, AGENTS, &[]).await;
    let app = &bin.app;
    for (n, (call_sid, target, dialled)) in [
        (
            "CApbx",
            "pbx",
            "<Dial><Sip>sip:desk@pbx.example.com</Sip></Dial>",
        ),
        (
            "CAdesk",
            "desk",
            "<Dial><Number>+15550003333</Number></Dial>",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        twilio.live_call(call_sid);
        let twiml = parse_twiml(&webhook_for(app, call_sid, "+15550002222").await);
        let mut call = stream_for(app, call_sid, &twiml, |_| {}).await;
        model.wait_for("session.update", n + 1).await;
        model.speech_stopped().await;
        model
            .tool_call_with("transfer_call", "c1", json!({"target": target}))
            .await;
        assert_eq!(call.expect_close().await, (1000, "transfer".into()));
        let update = twilio
            .updates()
            .into_iter()
            .find(|u| u.call_sid == call_sid)
            .unwrap();
        assert!(update.form[0].1.contains(dialled), "{update:?}");
    }
    // An unknown target is told to the model; the call goes on.
    twilio.live_call("CAnope");
    let twiml = parse_twiml(&webhook_for(app, "CAnope", "+15550002222").await);
    let mut call = stream_for(app, "CAnope", &twiml, |_| {}).await;
    model.wait_for("session.update", 3).await;
    model.speech_stopped().await;
    model
        .tool_call_with("transfer_call", "c2", json!({"target": "moon"}))
        .await;
    let output = model.wait_for("conversation.item.create", 4).await;
    assert_eq!(output["item"]["type"], "function_call_output");
    assert!(output["item"]["output"]
        .as_str()
        .unwrap()
        .contains("unknown transfer target"));
    call.stop(&stream_sid_for("CAnope"), "CAnope").await;
    assert_eq!(call.expect_close().await.0, 1000);
    assert!(twilio.answers("CAnope").is_empty());
}

/// What the business's tool server saw of one request.
#[derive(Debug, Clone)]
struct ToolRequest {
    path: String,
    id: String,
    signature_ok: bool,
    body: Value,
}

#[derive(Default)]
struct ToolServer {
    requests: Vec<ToolRequest>,
    /// Requests to /lookup_order being answered now.
    in_flight: usize,
}

type ToolState = std::sync::Arc<std::sync::Mutex<ToolServer>>;

/// Standard Webhooks, verified here independently of callvisor's own code: HMAC-SHA256 over
/// `id.timestamp.body` with the secret's base64-decoded key, `v1,` + base64.
pub(crate) fn signature_ok(req: &actix_web::HttpRequest, body: &[u8]) -> bool {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = timestamp
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) < 300);
    fresh && signature.split(' ').any(|s| s == expected)
}

async fn tool_endpoint(
    req: actix_web::HttpRequest,
    body: actix_web::web::Bytes,
    state: actix_web::web::Data<ToolState>,
) -> actix_web::HttpResponse {
    let path = req.path().to_string();
    let request = ToolRequest {
        path: path.clone(),
        id: req
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        signature_ok: signature_ok(&req, &body),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    state.lock().unwrap().requests.push(request);
    match path.as_str() {
        "/lookup_order" => {
            // Both lookups of one response must be in flight at once: answer when the second
            // has arrived (or say it never did).
            state.lock().unwrap().in_flight += 1;
            let deadline = std::time::Instant::now() + PATIENCE;
            let together = loop {
                if state.lock().unwrap().in_flight >= 2 {
                    break true;
                }
                if std::time::Instant::now() > deadline {
                    break false;
                }
                actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
            };
            actix_web::HttpResponse::Ok().json(json!({"status": "shipped", "together": together}))
        }
        "/slow" => {
            actix_web::rt::time::sleep(std::time::Duration::from_secs(3)).await;
            actix_web::HttpResponse::Ok().body("too late")
        }
        _ => actix_web::HttpResponse::InternalServerError().body("boom"),
    }
}

#[actix_web::test]
async fn tools_reach_the_business_signed_concurrently_and_their_answers_reach_the_model() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let state: ToolState = Default::default();
    let data = actix_web::web::Data::new(state.clone());
    let tools = serve_peer(move |cfg| {
        cfg.app_data(data.clone())
            .default_service(actix_web::web::post().to(tool_endpoint));
    });
    let file = format!(
        r#"
[agents.shop]
default = true
instructions = "You help with orders."

[[agents.shop.tools]]
name = "lookup_order"
description = "Look up an order."
url = "http://{tools}/lookup_order"
parameters = {{ type = "object", properties = {{ order_number = {{ type = "string" }} }} }}

[[agents.shop.tools]]
name = "slow"
description = "Takes its time."
url = "http://{tools}/slow"
timeout_ms = 300

[[agents.shop.tools]]
name = "broken"
description = "Fails."
url = "http://{tools}/broken"
"#
    );
    let bin = routed_binary("tools", &model, &twilio, &file, &[]).await;
    let app = &bin.app;
    let sid = stream_sid_for("CAtools");
    let twiml = parse_twiml(&webhook_for(app, "CAtools", "+15550001111").await);
    let mut call = stream_for(app, "CAtools", &twiml, |_| {}).await;
    model.wait_for("session.update", 1).await;

    // Two lookups in one response: both sent at once, each answer to the model, then one
    // response.create once the response is done and both are in.
    model.speech_stopped().await;
    model
        .tool_call_with("lookup_order", "call_a1", json!({"order_number": "A1"}))
        .await;
    model
        .tool_call_with("lookup_order", "call_b2", json!({"order_number": "B2"}))
        .await;
    model.finish_response().await;
    let first = model.wait_for("conversation.item.create", 1).await;
    let second = model.wait_for("conversation.item.create", 2).await;
    model.wait_for("response.create", 1).await;
    for output in [&first, &second] {
        assert_eq!(output["item"]["type"], "function_call_output");
        let answer: Value =
            serde_json::from_str(output["item"]["output"].as_str().unwrap()).unwrap();
        assert_eq!(answer, json!({"status": "shipped", "together": true}));
    }
    let seen = state.lock().unwrap().requests.clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in &seen {
        assert!(request.signature_ok, "{request:?}");
        assert_eq!(request.path, "/lookup_order");
        assert_eq!(request.body["call_sid"], "CAtools");
        assert_eq!(request.body["agent"], "shop");
        assert_eq!(request.body["tool"], "lookup_order");
        assert_eq!(request.id, request.body["call_id"].as_str().unwrap());
    }
    let mut orders: Vec<_> = seen
        .iter()
        .map(|r| {
            r.body["arguments"]["order_number"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    orders.sort();
    assert_eq!(orders, ["A1", "B2"]);

    // A slow tool (past its timeout_ms) and a failing one are told to the model as errors; the
    // call goes on.
    model.speech_stopped().await;
    model.tool_call_with("slow", "call_s", json!({})).await;
    model.tool_call_with("broken", "call_x", json!({})).await;
    model.finish_response().await;
    let mut errors = Vec::new();
    for n in 3..=4 {
        let output = model.wait_for("conversation.item.create", n).await;
        errors.push(output["item"]["output"].as_str().unwrap().to_string());
    }
    errors.sort();
    assert!(errors[0].contains("HTTP 500"), "{errors:?}");
    assert!(errors[1].contains("did not answer in time"), "{errors:?}");
    model.wait_for("response.create", 2).await;
    call.media(&sid, 1, "AAAA").await;
    model.wait_for("input_audio_buffer.append", 1).await;
    assert_eq!(
        model
            .types()
            .iter()
            .filter(|t| *t == "response.create")
            .count(),
        2,
        "one response.create per response that called tools"
    );
    assert!(twilio.updates().is_empty(), "the call goes on");
    call.stop(&sid, "CAtools").await;
    assert_eq!(call.expect_close().await.0, 1000);
    let m = scrape(app).await;
    assert_eq!(
        metric(
            &m,
            "callvisor_agent_tool_requests_total{name=lookup_order,outcome=ok}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "callvisor_agent_tool_requests_total{name=slow,outcome=timeout}"
        ),
        1.0
    );
    assert!(model.errors().is_empty(), "{:#?}", model.errors());
}

/// What the config backend was asked: whether the signature verified, and the body.
type Asked = std::sync::Arc<std::sync::Mutex<Vec<(bool, Value)>>>;

/// A business backend for `AGENT_CONFIG_URL`: its answer by the call's `To`, after checking the
/// signature; what it was asked.
async fn config_endpoint(
    req: actix_web::HttpRequest,
    body: actix_web::web::Bytes,
    seen: actix_web::web::Data<Asked>,
) -> actix_web::HttpResponse {
    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock()
        .unwrap()
        .push((signature_ok(&req, &body), asked.clone()));
    match asked["to"].as_str().unwrap_or("") {
        "+15550001111" => actix_web::HttpResponse::Ok().json(json!({
            "instructions": "VIP line for {{customer}} calling from {{From}}.",
            "greeting": "Welcome back, {{customer}}.",
            "voice": "sage",
            "variables": {"customer": "Ada"}})),
        "+15550002222" => {
            actix_web::rt::time::sleep(std::time::Duration::from_secs(3)).await;
            actix_web::HttpResponse::Ok().json(json!({"instructions": "too late"}))
        }
        _ => actix_web::HttpResponse::InternalServerError().finish(),
    }
}

#[actix_web::test]
async fn agent_config_url_configures_each_call_and_a_slow_or_failing_one_leaves_the_agents_own() {
    let (model, twilio) = (
        FakeRealtime::start("sk-test"),
        FakeTwilio::start(KEY_SID, "key-secret"),
    );
    let seen: Asked = Default::default();
    let data = actix_web::web::Data::new(seen.clone());
    let backend = serve_peer(move |cfg| {
        cfg.app_data(data.clone())
            .default_service(actix_web::web::post().to(config_endpoint));
    });
    let config_url = format!("http://{backend}/voice/config");
    let bin = routed_binary(
        "config-url",
        &model,
        &twilio,
        AGENTS,
        &[
            ("AGENT_CONFIG_URL", &config_url),
            ("AGENT_CONFIG_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let app = &bin.app;
    // support: the backend answers; sales: too slow; another number (support): a 500.
    for (n, (call_sid, to)) in [
        ("CAvip", "+15550001111"),
        ("CAslow", "+15550002222"),
        ("CAfail", "+15559999999"),
    ]
    .into_iter()
    .enumerate()
    {
        let twiml = parse_twiml(&webhook_for(app, call_sid, to).await);
        let mut call = stream_for(app, call_sid, &twiml, |_| {}).await;
        let update = model.wait_for("session.update", n + 1).await;
        let greeting = model.wait_for("conversation.item.create", n + 1).await;
        let said = greeting["item"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let session = &update["session"];
        match call_sid {
            "CAvip" => {
                assert_eq!(
                    session["instructions"],
                    "VIP line for Ada calling from +14155550100."
                );
                assert_eq!(session["audio"]["output"]["voice"], "sage");
                assert!(said.contains("Welcome back, Ada."), "{said}");
            }
            "CAslow" => {
                assert_eq!(session["instructions"], "Sales for +14155550100, now.");
                assert_eq!(session["audio"]["output"]["voice"], "marin");
                assert!(said.contains("Sales here."), "{said}");
            }
            _ => {
                assert_eq!(session["instructions"], "Support for +14155550100.");
                assert!(said.contains("Support here."), "{said}");
            }
        }
        call.stop(&stream_sid_for(call_sid), call_sid).await;
        assert_eq!(call.expect_close().await.0, 1000);
    }
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 3);
    for (signed, body) in &asked {
        assert!(signed, "{body}");
        assert_eq!(body["from"], "+14155550100");
        assert_eq!(body["account_sid"], "ACtest");
        assert_eq!(body["parameters"]["To"], body["to"]);
    }
    assert_eq!(asked[0].1["agent"], "support");
    assert_eq!(asked[1].1["agent"], "sales");
    let m = scrape(app).await;
    for (outcome, n) in [("ok", 1.0), ("timeout", 1.0), ("error", 1.0)] {
        let key = format!("callvisor_agent_config_total{{outcome={outcome}}}");
        assert_eq!(metric(&m, &key), n, "{outcome}");
    }
    assert!(model.errors().is_empty(), "{:#?}", model.errors());
}
