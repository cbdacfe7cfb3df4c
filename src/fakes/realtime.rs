//! A strict fake of OpenAI's Realtime API (GA), the one the tests drive and callsim's
//! `--realtime-model` runs: a voice agent is only as right as the fake that checks it.
//!
//! Strict where the real service is (`shared/voice-apps.md`):
//! - the handshake: `Authorization: Bearer <key>` (401 `invalid_api_key`), `?model=` naming a
//!   known Realtime model (400), the beta header `OpenAI-Beta` closed 4000
//!   `beta_api_shape_disabled`; optionally every handshake refused with a status (429) or
//!   accepted late;
//! - the session: `session.update` in the GA shape with `audio/pcmu` both ways; caller audio
//!   before it is refused (it would be read as pcm16); unknown client event types, bad base64,
//!   unknown item types are answered with `error` (the session goes on, as it does for real);
//! - one response at a time: `response.create` while one is active (from `response.created` to
//!   `response.done`) gets the real `conversation_already_has_active_response` error;
//! - interruptions: on `input_audio_buffer.speech_started` the active response is cancelled the
//!   way the server does it: [`IN_FLIGHT_DELTAS`] deltas already on their way still arrive, then
//!   `response.done` with `status: "cancelled"`;
//! - `conversation.item.truncate` of an unknown item, or past the audio sent for it, is an error.
//!
//! It runs in one of two ways: driven by a test (`FakeRealtime`: the test decides when the
//! model speaks, calls a tool, hears speech), or on its own ([`AutoVoice`], callsim): an energy
//! VAD over the caller's audio and a spoken reply to each utterance, paced like the real one.
//!
//! Every client event received can be appended, verbatim, to the file named by
//! `CALLVISOR_REALTIME_EVENTS_LOG`: CI checks them against the official SDK's types
//! (`scripts/sdk_conformance.py`).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::vad::{Heard, Vad};

/// Realtime models the fake knows (the official SDK's list, `openai` 3.51.0).
pub const KNOWN_MODELS: &[&str] = &[
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
    "gpt-realtime",
    "gpt-realtime-mini",
];
/// Input transcription models (`audio.input.transcription.model`, the same SDK's list).
pub const KNOWN_TRANSCRIPTION_MODELS: &[&str] = &[
    "whisper-1",
    "gpt-transcribe",
    "gpt-live-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
];
/// Deltas of a response that are already on their way when the caller starts talking.
pub const IN_FLIGHT_DELTAS: usize = 2;
/// The audio of those deltas in test mode: a byte no other fake audio uses, so a test can tell
/// that the caller never heard it.
pub const STALE_AUDIO_BYTE: u8 = 0x55;
/// The environment variable naming the capture file of client events.
pub const EVENTS_LOG_ENV: &str = "CALLVISOR_REALTIME_EVENTS_LOG";

/// A hook called on each reply delta before it goes out.
pub type Stamp = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

/// How a fake model answers on its own (callsim).
#[derive(Clone)]
pub struct AutoVoice {
    /// One delta of reply audio (mu-law); a reply is `deltas_per_reply` of them.
    pub delta: Vec<u8>,
    pub deltas_per_reply: usize,
    /// Deltas go out this often (the real model streams faster than real time).
    pub delta_every: Duration,
    /// Whether a chunk of caller audio (mu-law) is speech, for the VAD.
    pub is_speech: fn(&[u8]) -> bool,
    /// server_vad's `silence_duration_ms`.
    pub silence_ms: u64,
    /// Called on each delta before it goes out (callsim stamps it, to time it to the caller).
    pub stamp: Stamp,
    /// When set, each answer to the caller's speech first calls this tool (no arguments), and
    /// `tool_answered` hears how long the agent took to send its output back.
    pub tool: Option<String>,
    pub tool_answered: Option<ToolAnswered>,
}

/// A hook told how long an agent took from a tool call to its output.
pub type ToolAnswered = Arc<dyn Fn(Duration) + Send + Sync>;

/// What the fake checks at the handshake and how it answers.
#[derive(Clone, Default)]
pub struct Options {
    /// The key it accepts; `None`: any non-empty bearer key.
    pub key: Option<String>,
    /// Answer on its own (`None`: the test drives it).
    pub auto: Option<AutoVoice>,
    /// Keep every client event and error for the test to read (off for callsim's load runs).
    pub record: bool,
}

#[derive(Default)]
struct State {
    options: Options,
    /// Every handshake answered with this HTTP status (e.g. 429).
    refuse: Option<u16>,
    /// Every handshake accepted this late.
    handshake_delay: Duration,
    /// `?model=` of each accepted handshake.
    models: Vec<String>,
    received: Vec<Value>,
    /// `error` events the fake sent: what the real API would have refused.
    errors: Vec<Value>,
    /// The latest session, for a test to drive.
    current: Option<Session>,
    /// How the latest session's socket was closed by the client (1006: dropped).
    closed: Option<u16>,
}

type Shared = Arc<Mutex<State>>;

/// One model session: its socket and its conversation.
#[derive(Clone)]
struct Session {
    ws: actix_ws::Session,
    conv: Arc<Mutex<Conversation>>,
}

impl Session {
    /// Sends events in order; false once the socket is gone.
    async fn send_all(&mut self, events: Vec<Value>, state: &Shared) -> bool {
        for event in events {
            if event["type"] == "error" && state.lock().unwrap().options.record {
                state.lock().unwrap().errors.push(event.clone());
            }
            if self.ws.text(event.to_string()).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The fake in a test: started on 127.0.0.1 and a free port in the test's actix system.
#[derive(Clone)]
pub struct FakeRealtime {
    /// `ws://127.0.0.1:PORT/v1/realtime`, for `OPENAI_REALTIME_URL`.
    pub url: String,
    state: Shared,
}

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(15);

impl FakeRealtime {
    /// A fake that accepts the bearer key `key` and is driven by the test.
    pub fn start(key: &str) -> FakeRealtime {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let state = serve(
            listener,
            Options {
                key: Some(key.into()),
                auto: None,
                record: true,
            },
        )
        .expect("the fake serves");
        FakeRealtime {
            url: format!("ws://{addr}/v1/realtime"),
            state,
        }
    }

    /// From now on every handshake gets `status` (429 comes with OpenAI's rate-limit body).
    pub fn refuse_with(&self, status: u16) {
        self.state.lock().unwrap().refuse = Some(status);
    }

    /// From now on every handshake is accepted `by` late (the real one takes 300-1,000 ms).
    pub fn delay_handshake(&self, by: Duration) {
        self.state.lock().unwrap().handshake_delay = by;
    }

    pub fn received(&self) -> Vec<Value> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn types(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    pub fn models(&self) -> Vec<String> {
        self.state.lock().unwrap().models.clone()
    }

    /// The `error` events the fake answered with: what the real API would have refused.
    pub fn errors(&self) -> Vec<Value> {
        self.state.lock().unwrap().errors.clone()
    }

    /// Waits until an event of `kind` has been received `n` times; returns the `n`th.
    pub async fn wait_for(&self, kind: &str, n: usize) -> Value {
        self.wait_until(&format!("{n} × {kind}"), |s| {
            s.received
                .iter()
                .filter(|v| v["type"] == kind)
                .nth(n - 1)
                .cloned()
        })
        .await
    }

    /// Waits until the client closed the latest session; returns its close code.
    pub async fn wait_closed(&self) -> u16 {
        self.wait_until("the model's socket closed", |s| s.closed)
            .await
    }

    async fn wait_until<T>(&self, what: &str, mut check: impl FnMut(&State) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = check(&self.state.lock().unwrap()) {
                return found;
            }
            if Instant::now() > deadline {
                panic!("the fake model never saw {what}; it got {:?}", self.types());
            }
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn session(&self) -> Session {
        self.state
            .lock()
            .unwrap()
            .current
            .clone()
            .expect("a session is open")
    }

    async fn play(&self, events: impl FnOnce(&mut Conversation) -> Vec<Value>) {
        let mut session = self.session();
        let events = events(&mut session.conv.lock().unwrap());
        session.send_all(events, &self.state).await;
    }

    /// Sends any event as it is (an `error` the test wants the agent to survive, say).
    pub async fn send(&self, event: Value) {
        self.play(|_| vec![event]).await;
    }

    /// The server starts a response on its own (as `create_response` does after speech).
    pub async fn start_response(&self) {
        self.play(|c| {
            c.begin_response()
                .expect("no response is active when the test starts one")
        })
        .await;
    }

    /// A delta of `ms` milliseconds of audio (mu-law 0x7f) of assistant item `item` in the
    /// active response.
    pub async fn audio(&self, item: &str, ms: usize) {
        self.play(|c| c.delta(item, vec![0x7f; ms * 8])).await;
    }

    /// The active response calls the tool `name` (no arguments).
    pub async fn tool_call(&self, name: &str, call_id: &str) {
        self.tool_call_with(name, call_id, json!({})).await;
    }

    /// The active response calls the tool `name` with `arguments` (sent as a JSON string, as
    /// the API does).
    pub async fn tool_call_with(&self, name: &str, call_id: &str, arguments: Value) {
        self.play(|c| c.tool_call(name, call_id, &arguments.to_string()))
            .await;
    }

    /// The active response is complete: its items done, then `response.done`.
    pub async fn finish_response(&self) {
        self.play(Conversation::finish).await;
    }

    /// The VAD hears the caller start: `speech_started`, and an active response is cancelled
    /// (its in-flight deltas, then `response.done` `cancelled`).
    pub async fn speech_started(&self) {
        let stale = vec![STALE_AUDIO_BYTE; 800];
        self.play(|c| c.speech_started(&stale)).await;
    }

    /// The VAD hears the caller stop: `speech_stopped`, `committed`, and a response.
    pub async fn speech_stopped(&self) {
        self.play(Conversation::speech_stopped).await;
    }

    /// The caller's last committed turn was `text`: its transcription completes (only when the
    /// session asked for input transcription, as with the real API).
    pub async fn caller_said(&self, text: &str) {
        self.play(|c| c.transcribed(text)).await;
    }

    /// Assistant item `item` of the active response says `text`: its transcript delta, then
    /// `ms` milliseconds of its audio (mu-law 0x7f), as the API streams them.
    pub async fn say(&self, item: &str, text: &str, ms: usize) {
        self.play(|c| {
            let mut events = c.add_item(item, "message");
            events.extend(c.transcript_delta(item, text));
            events.extend(c.delta(item, vec![0x7f; ms * 8]));
            events
        })
        .await;
    }

    /// Closes the latest session from the model's side.
    pub async fn close(&self, code: u16, reason: &str) {
        let session = self.state.lock().unwrap().current.take().expect("open");
        let _ = session
            .ws
            .close(Some(actix_ws::CloseReason {
                code: code.into(),
                description: Some(reason.into()),
            }))
            .await;
    }
}

/// Serves the fake on `listener` in the current actix system (`/v1/realtime`).
fn serve(listener: std::net::TcpListener, options: Options) -> std::io::Result<Shared> {
    let state: Shared = Arc::new(Mutex::new(State {
        options,
        ..State::default()
    }));
    let data = web::Data::new(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/realtime", web::get().to(handshake))
    })
    .workers(1)
    // As a real server would: several events written back to back (an item, then its first
    // delta) must not wait for callvisor's delayed ACK (Nagle's algorithm), or the fake, not
    // callvisor, adds ~20 ms to what callsim measures.
    .tcp_nodelay(true)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_web::rt::spawn(server);
    Ok(state)
}

/// callsim's stand-in: the fake on `addr`, answering on its own with `voice`.
pub fn serve_auto(addr: SocketAddr, voice: AutoVoice) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    serve(
        listener,
        Options {
            key: None,
            auto: Some(voice),
            record: false,
        },
    )
    .map(drop)
}

fn http_error(status: u16, kind: &str, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("an HTTP status"))
        .json(json!({"error": {"type": kind, "code": code, "message": message, "param": null}}))
}

async fn handshake(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let state = state.get_ref().clone();
    let (key, refuse, delay) = {
        let s = state.lock().unwrap();
        (s.options.key.clone(), s.refuse, s.handshake_delay)
    };
    if let Some(status) = refuse {
        let mut refused = http_error(
            status,
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached",
        );
        refused.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("20"),
        );
        return Ok(refused);
    }
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let accepted = match &key {
        Some(key) => bearer == key,
        None => !bearer.is_empty(),
    };
    if !accepted {
        return Ok(http_error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided",
        ));
    }
    let model = req
        .query_string()
        .split('&')
        .find_map(|kv| kv.strip_prefix("model="))
        .map(str::to_string);
    let Some(model) = model.filter(|m| KNOWN_MODELS.contains(&m.as_str())) else {
        return Ok(http_error(
            400,
            "invalid_request_error",
            "model_not_found",
            "?model= must name a Realtime model",
        ));
    };
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    let beta = req.headers().contains_key("openai-beta");
    let (response, ws, inbound) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        if beta {
            let _ = ws
                .close(Some(actix_ws::CloseReason {
                    code: 4000.into(),
                    description: Some("beta_api_shape_disabled".into()),
                }))
                .await;
            return;
        }
        run_session(model, ws, inbound, state).await;
    });
    Ok(response)
}

async fn run_session(
    model: String,
    ws: actix_ws::Session,
    mut inbound: actix_ws::MessageStream,
    state: Shared,
) {
    let mut session = Session {
        ws,
        conv: Arc::default(),
    };
    let (auto, record) = {
        let mut s = state.lock().unwrap();
        s.models.push(model.clone());
        s.current = Some(session.clone());
        s.closed = None;
        (s.options.auto.clone(), s.options.record)
    };
    let log = std::env::var_os(EVENTS_LOG_ENV);
    let created = json!({"type": "session.created", "event_id": "event_0",
        "session": {"type": "realtime", "object": "realtime.session", "model": model}});
    if !session.send_all(vec![created], &state).await {
        return;
    }
    let mut close_code = 1006;
    while let Some(Ok(message)) = futures_util::StreamExt::next(&mut inbound).await {
        let text = match message {
            actix_ws::Message::Text(text) => text,
            actix_ws::Message::Close(reason) => {
                close_code = reason.map_or(1005, |r| u16::from(r.code));
                break;
            }
            actix_ws::Message::Ping(p) => {
                let _ = session.ws.pong(&p).await;
                continue;
            }
            _ => continue,
        };
        if let Some(path) = &log {
            append_line(path, &text);
        }
        let event = match serde_json::from_str::<Value>(&text) {
            Ok(event) => event,
            Err(_) => {
                let error = Conversation::error(&Value::Null, "invalid_json", "not JSON", None);
                session.send_all(vec![error], &state).await;
                continue;
            }
        };
        if record {
            state.lock().unwrap().received.push(event.clone());
        }
        let (replies, stream) = {
            let mut conv = session.conv.lock().unwrap();
            let mut replies = conv.client_event(&event);
            if let (Some(hook), Some(call_id)) = (
                auto.as_ref().and_then(|v| v.tool_answered.as_ref()),
                event["item"]["call_id"].as_str(),
            ) {
                if let Some(sent) = conv.tool_sent.remove(call_id) {
                    hook(sent.elapsed());
                }
            }
            let mut stream = replies.iter().any(|e| e["type"] == "response.created");
            if let (Some(voice), "input_audio_buffer.append") =
                (&auto, event["type"].as_str().unwrap_or(""))
            {
                if let Some(audio) = event["audio"]
                    .as_str()
                    .and_then(|a| STANDARD.decode(a).ok())
                {
                    let heard = conv.listen(&audio, voice);
                    stream |= heard.iter().any(|e| e["type"] == "response.created");
                    replies.extend(heard);
                }
            }
            (replies, stream && auto.is_some())
        };
        if !session.send_all(replies, &state).await {
            break;
        }
        if stream {
            if let Some(voice) = &auto {
                actix_web::rt::spawn(speak(session.clone(), voice.clone(), state.clone()));
            }
        }
    }
    {
        let mut conv = session.conv.lock().unwrap();
        conv.active = None; // stops a reply still streaming
    }
    state.lock().unwrap().closed = Some(close_code);
    let _ = session.ws.close(None).await;
}

/// Appends one line to the capture file (one write, so parallel tests never interleave).
fn append_line(path: &std::ffi::OsStr, text: &str) {
    let line = format!("{text}\n");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// Streams the active response's reply on its own, paced; stops when it is cancelled.
async fn speak(mut session: Session, voice: AutoVoice, state: Shared) {
    let Some(id) = session
        .conv
        .lock()
        .unwrap()
        .active
        .as_ref()
        .map(|r| r.id.clone())
    else {
        return;
    };
    let live = |session: &Session| {
        session
            .conv
            .lock()
            .unwrap()
            .active
            .as_ref()
            .is_some_and(|r| r.id == id && !r.cancelled)
    };
    let item = format!("item_{id}");
    if let Some(tool) = &voice.tool {
        let events = {
            let mut conv = session.conv.lock().unwrap();
            let after_speech = conv.active.as_ref().is_some_and(|r| r.after_speech);
            if after_speech {
                let call_id = format!("call_{id}");
                conv.tool_sent.insert(call_id.clone(), Instant::now());
                conv.tool_call(tool, &call_id, "{}")
            } else {
                Vec::new()
            }
        };
        if !session.send_all(events, &state).await {
            return;
        }
    }
    for _ in 0..voice.deltas_per_reply {
        if !live(&session) {
            return;
        }
        let mut delta = voice.delta.clone();
        (voice.stamp)(&mut delta);
        let events = session.conv.lock().unwrap().delta(&item, delta);
        if !session.send_all(events, &state).await {
            return;
        }
        actix_web::rt::time::sleep(voice.delta_every).await;
    }
    if live(&session) {
        let events = session.conv.lock().unwrap().finish();
        session.send_all(events, &state).await;
    }
}

/// The response in progress.
struct Response {
    id: String,
    /// Answers the caller's speech (server VAD): in auto mode it may call a tool first.
    after_speech: bool,
    /// Its assistant items, in order (`message` items carry audio).
    items: Vec<(String, &'static str)>,
    cancelled: bool,
}

/// One session's conversation, as the server keeps it.
#[derive(Default)]
struct Conversation {
    configured: bool,
    /// `turn_detection`'s `create_response` / `interrupt_response` (both default true).
    no_create_response: bool,
    no_interrupt_response: bool,
    active: Option<Response>,
    /// Bytes of audio sent per assistant item, for `truncate`'s check.
    sent: HashMap<String, usize>,
    /// The transcript of each assistant item so far.
    transcripts: HashMap<String, String>,
    /// `audio.input.transcription` is on: the caller's turns are transcribed.
    transcription: bool,
    /// The caller's turn being heard (from `speech_started`), then the last one committed.
    input_item: Option<String>,
    committed: Option<String>,
    /// Tool calls sent in auto mode and when, until their output comes.
    tool_sent: HashMap<String, Instant>,
    next_id: u64,
    /// The VAD (auto mode), and the caller audio so far.
    vad: Vad,
    audio_ms: u64,
}

impl Conversation {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    fn error(cause: &Value, code: &str, message: &str, param: Option<&str>) -> Value {
        json!({"type": "error", "event_id": "event_err", "error": {
            "type": "invalid_request_error", "code": code, "message": message,
            "param": param, "event_id": cause.get("event_id")}})
    }

    /// What the server answers to one client event; state changes as the real one's would.
    fn client_event(&mut self, event: &Value) -> Vec<Value> {
        let err = |code, message: &str, param| vec![Self::error(event, code, message, param)];
        match event["type"].as_str().unwrap_or("") {
            "session.update" => {
                let s = &event["session"];
                let ga = s["type"] == "realtime"
                    && s["audio"]["input"]["format"]["type"] == "audio/pcmu"
                    && s["audio"]["output"]["format"]["type"] == "audio/pcmu";
                if !ga {
                    return err(
                        "invalid_session",
                        "session.update must be the GA shape with audio/pcmu both ways",
                        Some("session"),
                    );
                }
                let transcription = &s["audio"]["input"]["transcription"];
                if !transcription.is_null() {
                    let known = transcription["model"]
                        .as_str()
                        .is_some_and(|m| KNOWN_TRANSCRIPTION_MODELS.contains(&m));
                    if !known {
                        return err(
                            "invalid_value",
                            "audio.input.transcription.model is not a transcription model",
                            Some("session.audio.input.transcription.model"),
                        );
                    }
                    self.transcription = true;
                }
                let turn = &s["audio"]["input"]["turn_detection"];
                self.no_create_response = turn["create_response"] == false;
                self.no_interrupt_response = turn["interrupt_response"] == false;
                self.configured = true;
                vec![json!({"type": "session.updated", "session": s})]
            }
            "input_audio_buffer.append" => {
                let Some(audio) = event["audio"].as_str() else {
                    return err(
                        "missing_required_parameter",
                        "audio is required",
                        Some("audio"),
                    );
                };
                if STANDARD.decode(audio).is_err() {
                    return err("invalid_value", "audio is not base64", Some("audio"));
                }
                if !self.configured {
                    return err(
                        "invalid_value",
                        "audio before session.update: it would be read as pcm16",
                        Some("audio"),
                    );
                }
                vec![]
            }
            "conversation.item.create" => match event["item"]["type"].as_str() {
                Some("message") => {
                    vec![json!({"type": "conversation.item.added", "item": event["item"]})]
                }
                Some("function_call_output") if event["item"]["call_id"].is_string() => {
                    vec![json!({"type": "conversation.item.added", "item": event["item"]})]
                }
                Some("function_call_output") => err(
                    "missing_required_parameter",
                    "call_id is required",
                    Some("item.call_id"),
                ),
                _ => err("invalid_value", "unknown item type", Some("item.type")),
            },
            "response.create" => match &self.active {
                Some(active) => err(
                    "conversation_already_has_active_response",
                    &format!(
                        "Conversation already has an active response in progress: {}",
                        active.id
                    ),
                    None,
                ),
                None => self.begin_response().unwrap_or_default(),
            },
            "response.cancel" => match self.active.as_mut() {
                Some(active) => {
                    active.cancelled = true;
                    self.finish()
                }
                None => err(
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found",
                    None,
                ),
            },
            "conversation.item.truncate" => {
                let item = event["item_id"].as_str().unwrap_or("");
                match (self.sent.get(item), event["audio_end_ms"].as_u64()) {
                    (None, _) => err("invalid_value", "no such assistant item", Some("item_id")),
                    (_, None) => err(
                        "missing_required_parameter",
                        "audio_end_ms is required",
                        Some("audio_end_ms"),
                    ),
                    (Some(sent), Some(end)) if end * 8 > *sent as u64 => err(
                        "invalid_value",
                        "audio_end_ms is past the audio of the item",
                        Some("audio_end_ms"),
                    ),
                    (Some(_), Some(end)) => vec![json!({"type": "conversation.item.truncated",
                        "item_id": item, "content_index": 0, "audio_end_ms": end})],
                }
            }
            other => err(
                "invalid_value",
                &format!("Invalid value: '{other}'. Supported values are client events."),
                Some("type"),
            ),
        }
    }

    /// A new response, unless one is active.
    fn begin_response(&mut self) -> Option<Vec<Value>> {
        if self.active.is_some() {
            return None;
        }
        let id = self.id("resp");
        self.active = Some(Response {
            id: id.clone(),
            after_speech: false,
            items: Vec::new(),
            cancelled: false,
        });
        Some(vec![json!({"type": "response.created",
            "response": {"id": id, "object": "realtime.response", "status": "in_progress"}})])
    }

    fn add_item(&mut self, item: &str, kind: &'static str) -> Vec<Value> {
        let active = self.active.as_mut().expect("an active response");
        if active.items.iter().any(|(id, _)| id == item) {
            return vec![];
        }
        active.items.push((item.to_string(), kind));
        let output_index = active.items.len() - 1;
        vec![
            json!({"type": "response.output_item.added", "response_id": active.id,
            "output_index": output_index,
            "item": {"id": item, "type": kind, "status": "in_progress"}}),
        ]
    }

    /// A delta of `audio` (mu-law) for assistant item `item` of the active response.
    fn delta(&mut self, item: &str, audio: Vec<u8>) -> Vec<Value> {
        let mut events = self.add_item(item, "message");
        *self.sent.entry(item.to_string()).or_default() += audio.len();
        let active = self.active.as_ref().expect("an active response");
        let output_index = active.items.iter().position(|(id, _)| id == item);
        events.push(
            json!({"type": "response.output_audio.delta", "response_id": active.id,
            "item_id": item, "output_index": output_index, "content_index": 0,
            "delta": STANDARD.encode(&audio)}),
        );
        events
    }

    fn tool_call(&mut self, name: &str, call_id: &str, arguments: &str) -> Vec<Value> {
        let item = self.id("fc");
        let mut events = self.add_item(&item, "function_call");
        let active = self.active.as_ref().expect("an active response");
        events.push(
            json!({"type": "response.output_item.done", "response_id": active.id,
            "output_index": active.items.len() - 1,
            "item": {"id": item, "type": "function_call", "status": "completed",
                     "name": name, "call_id": call_id, "arguments": arguments}}),
        );
        events
    }

    /// The last committed caller turn's transcription (nothing without input transcription).
    fn transcribed(&mut self, text: &str) -> Vec<Value> {
        let Some(item) = self.committed.clone().filter(|_| self.transcription) else {
            return vec![];
        };
        let words = text.split_whitespace().count() as u64;
        vec![
            json!({"type": "conversation.item.input_audio_transcription.completed",
            "event_id": self.id("event"), "item_id": item, "content_index": 0, "transcript": text,
            "usage": {"type": "tokens", "input_tokens": 4 * words, "output_tokens": words,
                      "total_tokens": 5 * words}}),
        ]
    }

    /// A transcript delta of assistant item `item` of the active response.
    fn transcript_delta(&mut self, item: &str, text: &str) -> Vec<Value> {
        self.transcripts
            .entry(item.to_string())
            .or_default()
            .push_str(text);
        let active = self.active.as_ref().expect("an active response");
        let output_index = active.items.iter().position(|(id, _)| id == item);
        vec![
            json!({"type": "response.output_audio_transcript.delta", "response_id": active.id,
            "item_id": item, "output_index": output_index, "content_index": 0, "delta": text}),
        ]
    }

    /// The active response ends: its message items done (unless cancelled), `response.done`.
    fn finish(&mut self) -> Vec<Value> {
        let Some(active) = self.active.take() else {
            return vec![];
        };
        let mut events = Vec::new();
        let status = if active.cancelled {
            "cancelled"
        } else {
            for (index, (item, kind)) in active.items.iter().enumerate() {
                if *kind == "message" {
                    if let Some(text) = self.transcripts.get(item) {
                        events.push(json!({"type": "response.output_audio_transcript.done",
                            "response_id": active.id, "item_id": item, "output_index": index,
                            "content_index": 0, "transcript": text}));
                    }
                    events.push(json!({"type": "response.output_audio.done",
                        "response_id": active.id, "item_id": item, "output_index": index, "content_index": 0}));
                    events.push(json!({"type": "response.output_item.done", "response_id": active.id,
                        "output_index": index,
                        "item": {"id": item, "type": "message", "role": "assistant", "status": "completed"}}));
                }
            }
            "completed"
        };
        let details = if active.cancelled {
            json!({"type": "cancelled", "reason": "turn_detected"})
        } else {
            Value::Null
        };
        // Usage as the API counts it: the audio sent (10 tokens a second), the transcript's
        // words, and a fixed context.
        let audio_ms: usize = active
            .items
            .iter()
            .filter_map(|(item, _)| self.sent.get(item))
            .sum::<usize>()
            / 8;
        let words: usize = active
            .items
            .iter()
            .filter_map(|(item, _)| self.transcripts.get(item))
            .map(|t| t.split_whitespace().count())
            .sum();
        let (output_audio, output_text) = (audio_ms / 100, words);
        let (input_text, input_audio, cached) = (120, 30, 64);
        let input = input_text + input_audio;
        let output = output_audio + output_text;
        events.push(json!({"type": "response.done", "response": {
            "id": active.id, "object": "realtime.response", "status": status,
            "status_details": details,
            "usage": {"total_tokens": input + output, "input_tokens": input, "output_tokens": output,
                "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio,
                    "cached_tokens": cached, "image_tokens": 0},
                "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio}}}}));
        events
    }

    /// The caller starts talking: with `interrupt_response`, the active response is cancelled,
    /// after the deltas already in flight (`stale` audio each) of its last item.
    fn speech_started(&mut self, stale: &[u8]) -> Vec<Value> {
        let item = self.id("item_in");
        self.input_item = Some(item.clone());
        let mut events = vec![json!({"type": "input_audio_buffer.speech_started",
            "audio_start_ms": self.audio_ms, "item_id": item})];
        if self.no_interrupt_response {
            return events;
        }
        let last_audio_item = self.active.as_ref().and_then(|a| {
            a.items
                .iter()
                .rev()
                .find(|(_, kind)| *kind == "message")
                .map(|(id, _)| id.clone())
        });
        if let Some(item) = last_audio_item {
            for _ in 0..IN_FLIGHT_DELTAS {
                events.extend(self.delta(&item, stale.to_vec()));
            }
        }
        if let Some(active) = self.active.as_mut() {
            active.cancelled = true;
            events.extend(self.finish());
        }
        events
    }

    /// The caller stopped: the turn is committed and, with `create_response`, answered.
    fn speech_stopped(&mut self) -> Vec<Value> {
        // The turn that speech_started opened (a test may skip speech_started).
        let item = match self.input_item.take() {
            Some(item) => item,
            None => self.id("item_in"),
        };
        self.committed = Some(item.clone());
        let mut events = vec![
            json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": self.audio_ms,
                   "item_id": item}),
            json!({"type": "input_audio_buffer.committed", "item_id": item}),
        ];
        if !self.no_create_response {
            events.extend(self.begin_response().unwrap_or_default());
            if let Some(active) = self.active.as_mut() {
                active.after_speech = true;
            }
        }
        events
    }

    /// The VAD of auto mode over appended caller audio (in 20 ms chunks).
    fn listen(&mut self, audio: &[u8], voice: &AutoVoice) -> Vec<Value> {
        let mut events = Vec::new();
        for chunk in audio.chunks(160) {
            self.audio_ms += chunk.len() as u64 / 8;
            match self.vad.hear(chunk, voice.is_speech, voice.silence_ms) {
                Some(Heard::Started) => {
                    let mut stale = voice.delta.clone();
                    (voice.stamp)(&mut stale);
                    events.extend(self.speech_started(&stale));
                }
                Some(Heard::Stopped) => events.extend(self.speech_stopped()),
                None => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> Conversation {
        let mut c = Conversation::default();
        let update = json!({"type": "session.update", "session": {"type": "realtime",
            "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}});
        assert_eq!(c.client_event(&update)[0]["type"], "session.updated");
        c
    }

    fn code(events: &[Value]) -> &str {
        events[0]["error"]["code"].as_str().unwrap_or("")
    }

    #[test]
    fn one_response_at_a_time() {
        let mut c = configured();
        let create = json!({"type": "response.create", "event_id": "ev1"});
        assert_eq!(c.client_event(&create)[0]["type"], "response.created");
        let refused = c.client_event(&create);
        assert_eq!(code(&refused), "conversation_already_has_active_response");
        assert_eq!(refused[0]["error"]["event_id"], "ev1");
        assert_eq!(
            c.finish().last().unwrap()["response"]["status"],
            "completed"
        );
        assert_eq!(c.client_event(&create)[0]["type"], "response.created");
    }

    #[test]
    fn an_interrupted_response_sends_its_in_flight_deltas_then_is_cancelled() {
        let mut c = configured();
        c.begin_response();
        c.delta("item1", vec![0x7f; 800]);
        let events = c.speech_started(&[STALE_AUDIO_BYTE; 800]);
        let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "input_audio_buffer.speech_started",
                "response.output_audio.delta",
                "response.output_audio.delta",
                "response.done"
            ]
        );
        assert_eq!(events[3]["response"]["status"], "cancelled");
        assert!(c.active.is_none());
    }

    #[test]
    fn truncation_past_the_audio_sent_and_unknown_events_are_errors() {
        let mut c = configured();
        c.begin_response();
        c.delta("item1", vec![0x7f; 800]); // 100 ms
        let truncate = |ms: u64| json!({"type": "conversation.item.truncate", "item_id": "item1", "content_index": 0, "audio_end_ms": ms});
        assert_eq!(
            c.client_event(&truncate(100))[0]["type"],
            "conversation.item.truncated"
        );
        assert_eq!(code(&c.client_event(&truncate(101))), "invalid_value");
        assert_eq!(
            code(&c.client_event(&json!({"type": "response.audio.delta"}))),
            "invalid_value"
        );
        let mut fresh = Conversation::default();
        let append = json!({"type": "input_audio_buffer.append", "audio": "AAAA"});
        assert_eq!(code(&fresh.client_event(&append)), "invalid_value");
    }
}
