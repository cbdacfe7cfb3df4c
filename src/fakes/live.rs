//! A strict fake of OpenAI's GPT-Live API on its primary WebSocket
//! (`wss://api.openai.com/v1/live/sessions`), the one the GPT-Live engine's tests drive. The
//! facts and their sources are in `shared/gpt-live.md`; every event shape is the official
//! Python SDK's (`openai` 3.51.0, `openai/types/live/`).
//!
//! Strict where the real service is, answering the way it does: an `error` event (`type:
//! "invalid_request_error"`, `code`, `message`, `param`, and `client_event_id` when the client
//! event had an `event_id`) after which the session goes on; except before `session.started`,
//! where a failed `session.start` is an error and then the socket closes.
//! - the handshake: the path exactly `/v1/live/sessions` with no query string (400), `Authorization:
//!   Bearer <key>` (401 `invalid_api_key`), no `OpenAI-Beta` header (400: the SDK sends none);
//!   every handshake can be refused with a status ([`FakeLive::refuse_with`]) and is recorded
//!   ([`FakeLive::handshakes`]: path, `Authorization`, `User-Agent`, every header);
//! - the start: `session.start` first, validated against the SDK's `SessionConfig`, unknown fields
//!   refused at every level (`unknown_parameter`, `param` the dotted path, `[i]` for list items: the
//!   docs say the config "rejects unknown fields"); a known `model`; `audio.format` given and
//!   `{"type": "audio/pcmu", "rate": 8000}` (a phone bridge: this fake's rule, the service's
//!   default is unconfirmed); a built-in voice or `{"id"}`; function tools named
//!   `^[a-zA-Z0-9_-]{1,64}$` with only the SDK's fields; hosted tools with only `type` (`shell`:
//!   its `environment`). Anything else before `session.started` is refused, and so is a second
//!   `session.start`. [`FakeLive::hold_start`] keeps the start unanswered until
//!   [`FakeLive::release_start`];
//! - the appends (`session.instructions|thinking|commentary.append`): `content` a non-empty string
//!   of at most 500 tokens (counted here as ceil(chars / 4)), `delegation_id` present (the SDK:
//!   "Required, nullable", on all three), non-null only for a delegation of the client's that the
//!   fake created, never with Responses delegation; acknowledged with `start_ms`/`end_ms` on the
//!   session timeline (the caller audio appended so far, mu-law 8 kHz);
//! - Responses delegation: a function call comes as `session.delegation.created` and
//!   `response.event` envelopes ([`FakeLive::function_call`], [`FakeLive::finish_delegation`]);
//!   `response.item.create` takes one `function_call_output` per call the fake emitted, and
//!   `response.create` is refused while a response still streams or while any call lacks its
//!   output (a partial batch). Both need Responses delegation;
//! - `session.close`: `session.closed` (`close_requested`, the session, its usage), then the server
//!   closes the socket 1000.
//!
//! Error codes. From the SDK: `unknown_parameter`. From OpenAI's other APIs (the Live codes are
//! not published): `missing_required_parameter`, `invalid_type`, `invalid_value`,
//! `array_above_max_length`, `array_below_min_length`, `model_not_found`, `invalid_api_key`,
//! `rate_limit_exceeded`. The fake's own, descriptive, where the real code is unknown:
//! `session_not_started`, `session_already_started`, `content_too_long`, `instructions_too_long`,
//! `delegation_not_found`, `responses_delegation_required`, `decisions_delegation_required`,
//! `function_call_not_found`, `duplicate_function_call_output`, `function_call_outputs_missing`,
//! `response_in_progress`, `session_closed`, `invalid_json`, `invalid_frame`; at the handshake
//! `invalid_path`, `beta_header_not_supported`, `server_error`, `refused` (a query string is
//! `unknown_parameter`). `unsupported_by_fake` marks what the
//! real service accepts but this fake does not model (Decisions delegation, `triggers`, `client`,
//! audio fixtures) — a test that meets it needs a richer fake, not a fixed client. The close code
//! after a failed start, 1008, is the fake's own too.
//!
//! Where the fake is narrower than the SDK's types, on purpose: a `function_call_output` needs its
//! `call_id` and a string `output` (the engine sends strings), a `response.item.create` message
//! takes text parts only, and items other than `message` and `function_call_output` are refused.
//!
//! It runs in one of two ways: driven by a test ([`FakeLive`]: the test decides when the model
//! speaks, delegates, closes), or on its own ([`serve_auto`], callsim's `--live-model`), as
//! strict as for a test (the same handshake, the same `session.start` checks, the same refusals
//! before `session.started`) and talking the way GPT-Live does: from `session.started` on, a
//! `session.output_audio.delta` every [`AutoVoice::delta_every`] without end, silence (mu-law
//! 0xFF) unless it speaks, the way partners observe the real one streaming ("continuously at
//! real-time pace, silence included"). An energy VAD over the appended audio (the Realtime
//! fake's, [`super::vad`]) hears the caller; at the end of an utterance the model says what it
//! heard (`session.input_transcript.delta`), optionally delegates a tool call to its backend
//! (`--live-tool`: `session.delegation.created`, `response.event`s, then it waits for the
//! outputs and `response.create`), and speaks a reply: stamped deltas in place of the silence,
//! with an output transcript delta. Talked over, it stops itself (there is no cancel). After
//! [`AutoLive::goodbye_after`] replies, the last one is a goodbye and the backend delegates
//! `end_call` once its audio is out. A `session.commentary.append` (the greeting) makes it
//! speak too. Nothing is kept per event in this mode (no `received`), only the refusals.
//!
//! Every client event received can be appended, verbatim, to the file named by
//! `CALLVISOR_LIVE_EVENTS_LOG`: CI checks them against the official SDK's types
//! (`scripts/sdk_conformance.py live`). The fake's own tests never write there.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

pub use super::realtime::AutoVoice;
use super::vad::{Heard, Vad};

/// The one path of the primary WebSocket.
pub const PATH: &str = "/v1/live/sessions";
/// GPT-Live models the fake knows (the SDK's literal, and the later 1.1).
pub const LIVE_MODELS: &[&str] = &["gpt-live-1", "gpt-live-1.1"];
/// The SDK's `BuiltInVoice` (`types/live/built_in_voice.py`).
pub const BUILT_IN_VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta", "echo",
    "gleam", "marin", "meridian", "quartz", "ripple", "sage", "shida", "shimmer", "stone", "tempo",
    "verse", "vesper", "willow",
];
/// The voice of a session that names none (the SDK: "Defaults to `marin`").
pub const DEFAULT_VOICE: &str = "marin";
/// Tokens per appended `content` (instructions, thinking, commentary).
pub const APPEND_TOKEN_LIMIT: usize = 500;
/// Tokens of the startup `instructions`.
pub const INSTRUCTIONS_TOKEN_LIMIT: usize = 16_384;
/// How long a session lives (`expires_at`); the real limit is unconfirmed.
pub const SESSION_SECONDS: u64 = 3600;
/// The close code after a failed `session.start` (the fake's own choice).
pub const FAILED_START_CLOSE: u16 = 1008;
/// The environment variable naming the capture file of client events.
pub const EVENTS_LOG_ENV: &str = "CALLVISOR_LIVE_EVENTS_LOG";
/// The reasons `session.closed` may give (the SDK's literal).
pub const CLOSE_REASONS: &[&str] = &[
    "close_requested",
    "expired",
    "content",
    "remote_hangup",
    "connection_lost",
];

/// Mu-law silence: what the model streams between its replies in auto mode.
pub const SILENCE: u8 = 0xff;
/// Refusals kept for the report in auto mode (all of them are counted).
const KEPT_ERRORS: usize = 100;

/// How the fake talks on its own (callsim's `--live-model`).
#[derive(Clone)]
pub struct AutoLive {
    /// A reply and how the caller is heard, as for the Realtime fake: `delta` is one delta of
    /// reply audio (and the size of each silence delta), `delta_every` the stream's pace (real
    /// time is the delta's own length, `delta.len() / 8` ms), `tool` the function the backend
    /// calls before each answer to the caller, `tool_answered` told how long its output took.
    pub voice: AutoVoice,
    /// After this many replies (a greeting counts) the model has said goodbye: its backend
    /// delegates `end_call` once that reply's audio is out, and the model answers no more.
    pub goodbye_after: Option<usize>,
}

/// One WebSocket handshake the fake answered, accepted or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    /// Every header (names lowercase), in the order received.
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    /// The bearer key accepted; `None`: any non-empty one (auto mode).
    key: Option<String>,
    /// Talk on its own (`None`: the test drives it).
    auto: Option<AutoLive>,
    /// Keep every handshake and client event for the test to read (off in auto mode: a load
    /// run would keep them all).
    record: bool,
    /// Every `error` sent; `errors` keeps them all when recording, else the first few.
    error_count: usize,
    /// Where client events are appended, verbatim (`CALLVISOR_LIVE_EVENTS_LOG`).
    log: Option<OsString>,
    /// Every handshake answered with this HTTP status.
    refuse: Option<u16>,
    /// `session.start` is held, unanswered, until `release_start`.
    hold: bool,
    handshakes: Vec<Handshake>,
    received: Vec<Value>,
    /// `error` events the fake sent: what the real service would have refused.
    errors: Vec<Value>,
    /// The latest session, for a test to drive.
    current: Option<Session>,
    /// How the latest session's socket was closed by the client (1006: dropped).
    closed: Option<u16>,
}

type Shared = Arc<Mutex<State>>;

/// One Live session: its socket and its state.
#[derive(Clone)]
struct Session {
    ws: actix_ws::Session,
    live: Arc<Mutex<Live>>,
}

impl Session {
    /// Sends events in order; false once the socket is gone.
    async fn send_all(&mut self, events: Vec<Value>, state: &Shared) -> bool {
        for event in events {
            if event["type"] == "error" {
                let mut s = state.lock().unwrap();
                s.error_count += 1;
                if s.record || s.errors.len() < KEPT_ERRORS {
                    s.errors.push(event.clone());
                }
            }
            if self.ws.text(event.to_string()).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends events already serialized, in order; false once the socket is gone.
    async fn send_texts(&mut self, events: Vec<String>) -> bool {
        for event in events {
            if self.ws.text(event).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Closes the socket from the server's side.
    async fn close(&self, code: u16, reason: &str) {
        self.live.lock().unwrap().closed_by_server = Some(code);
        let _ = self
            .ws
            .clone()
            .close(Some(actix_ws::CloseReason {
                code: code.into(),
                description: Some(reason.into()),
            }))
            .await;
    }
}

/// The fake in a test: started on 127.0.0.1 and a free port in the test's actix system.
#[derive(Clone)]
pub struct FakeLive {
    /// `ws://127.0.0.1:PORT/v1/live/sessions`.
    pub url: String,
    state: Shared,
}

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(15);

impl FakeLive {
    /// A fake that accepts the bearer key `key`, capturing client events to
    /// `CALLVISOR_LIVE_EVENTS_LOG` when it is set.
    pub fn start(key: &str) -> FakeLive {
        Self::start_logging(key, std::env::var_os(EVENTS_LOG_ENV))
    }

    fn start_logging(key: &str, log: Option<OsString>) -> FakeLive {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let state = State {
            key: Some(key.into()),
            log,
            record: true,
            ..State::default()
        };
        serve(listener, state).expect("the fake serves")
    }

    /// From now on every handshake gets `status` (401, 429 and 5xx with OpenAI's bodies).
    pub fn refuse_with(&self, status: u16) {
        self.state.lock().unwrap().refuse = Some(status);
    }

    /// From now on every handshake is accepted again (a client that retries after a refusal).
    pub fn stop_refusing(&self) {
        self.state.lock().unwrap().refuse = None;
    }

    /// From now on `session.start` is not answered until [`FakeLive::release_start`].
    pub fn hold_start(&self) {
        self.state.lock().unwrap().hold = true;
    }

    /// Answers the held `session.start` with `session.started` (waiting for it to arrive), and
    /// stops holding: a later start is answered at once unless `hold_start` is called again.
    pub async fn release_start(&self) {
        let mut session = self
            .wait_until("a held session.start", |s| {
                s.current
                    .clone()
                    .filter(|c| c.live.lock().unwrap().held.is_some())
            })
            .await;
        self.state.lock().unwrap().hold = false;
        let events = session.live.lock().unwrap().release();
        session.send_all(events, &self.state).await;
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.state.lock().unwrap().handshakes.clone()
    }

    /// Client events, in order (refused ones too; not text that is not JSON).
    pub fn received(&self) -> Vec<Value> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn types(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// The `error` events the fake sent: what the real service would have refused (in auto
    /// mode, the first few).
    pub fn errors(&self) -> Vec<Value> {
        self.state.lock().unwrap().errors.clone()
    }

    /// How many `error` events the fake sent.
    pub fn error_count(&self) -> usize {
        self.state.lock().unwrap().error_count
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

    /// Waits until the latest socket closed; returns the code of the client's Close frame (1005
    /// without a code), else the server's when it closed first (the code a client echoes), else
    /// 1006 (dropped).
    pub async fn wait_closed(&self) -> u16 {
        self.wait_until("the socket closed", |s| s.closed).await
    }

    async fn wait_until<T>(&self, what: &str, mut check: impl FnMut(&State) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = check(&self.state.lock().unwrap()) {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "the fake Live API never saw {what}; it got {:?}",
                    self.types()
                );
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

    /// Sends the events `play` makes of the session's state; returns the session.
    async fn play(&self, play: impl FnOnce(&mut Live) -> Vec<Value>) -> Session {
        let mut session = self.session();
        let events = play(&mut session.live.lock().unwrap());
        session.send_all(events, &self.state).await;
        session
    }

    /// Any event, as it is (an `error` or `info` the client must survive, say).
    pub async fn send(&self, event: Value) {
        self.play(|_| vec![event]).await;
    }

    /// One `session.output_audio.delta` of `audio` (mu-law); no `item_id` or timestamps, as on
    /// the primary socket.
    pub async fn output_audio(&self, audio: &[u8]) {
        self.play(|_| {
            vec![json!({"type": "session.output_audio.delta", "delta": STANDARD.encode(audio)})]
        })
        .await;
    }

    /// A `session.input_transcript.delta` (the caller's words) on the session timeline.
    pub async fn input_transcript(&self, text: &str, start_ms: u64, end_ms: u64) {
        self.play(|l| vec![l.transcript("session.input_transcript.delta", text, start_ms, end_ms)])
            .await;
    }

    /// A `session.output_transcript.delta` (the model's words) on the session timeline.
    pub async fn output_transcript(&self, text: &str, start_ms: u64, end_ms: u64) {
        self.play(|l| {
            vec![l.transcript("session.output_transcript.delta", text, start_ms, end_ms)]
        })
        .await;
    }

    /// The delegated Responses backend calls `name`, within the response streaming now or, when
    /// none is, a new delegation (`session.delegation.created`, `response.created`). `arguments`
    /// goes out as a JSON string; a `Value::String` goes out as it is (malformed JSON, say).
    pub async fn function_call(&self, name: &str, call_id: &str, arguments: Value) {
        let arguments = match arguments {
            Value::String(raw) => raw,
            other => other.to_string(),
        };
        self.play(|l| l.function_call(name, call_id, &arguments))
            .await;
    }

    /// The streaming delegated response completes (`response.completed` with its usage), its
    /// calls unanswered: the client answers each, then sends `response.create`.
    pub async fn finish_delegation(&self) {
        self.play(Live::finish_delegation).await;
    }

    /// The model delegates to the application (`session.delegation.created`, target `client`);
    /// returns the delegation's id, for the client's `delegation_id`.
    pub async fn client_delegation(&self) -> String {
        let mut id = String::new();
        self.play(|l| {
            let (delegation, events) = l.client_delegation();
            id = delegation;
            events
        })
        .await;
        id
    }

    /// `session.usage.updated` with the cumulative `seconds`.
    pub async fn usage(&self, seconds: f64) {
        self.play(|l| l.usage(seconds)).await;
    }

    /// The service ends the session: `session.closed` with `reason` (one of [`CLOSE_REASONS`]),
    /// then the socket closes 1000.
    pub async fn close_session(&self, reason: &str) {
        assert!(
            CLOSE_REASONS.contains(&reason),
            "session.closed's reason is one of {CLOSE_REASONS:?}"
        );
        let session = self.play(|l| l.closed(reason, None)).await;
        session.close(1000, "session closed").await;
    }

    /// Closes the latest socket from the server's side.
    pub async fn close(&self, code: u16, reason: &str) {
        let session = self.state.lock().unwrap().current.take().expect("open");
        session.close(code, reason).await;
    }
}

/// Serves the fake on `listener` in the current actix system (every path answered: a wrong one
/// is refused as the service refuses it).
fn serve(listener: std::net::TcpListener, state: State) -> std::io::Result<FakeLive> {
    let addr = listener.local_addr()?;
    let state: Shared = Arc::new(Mutex::new(state));
    let data = web::Data::new(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(handshake))
    })
    .workers(1)
    // Events written back to back must not wait for the client's delayed ACK.
    .tcp_nodelay(true)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_web::rt::spawn(server);
    Ok(FakeLive {
        url: format!("ws://{addr}{PATH}"),
        state,
    })
}

/// callsim's stand-in: the fake on `addr` (`ws://ADDR/v1/live/sessions`), talking on its own.
/// Any non-empty bearer key is accepted; client events go to `CALLVISOR_LIVE_EVENTS_LOG` when
/// it is set. The handle reads the refusals ([`FakeLive::error_count`], [`FakeLive::errors`]).
pub fn serve_auto(addr: SocketAddr, auto: AutoLive) -> std::io::Result<FakeLive> {
    serve_auto_logging(addr, auto, std::env::var_os(EVENTS_LOG_ENV))
}

/// [`serve_auto`] capturing client events to `log` (the fake's own tests: none).
fn serve_auto_logging(
    addr: SocketAddr,
    auto: AutoLive,
    log: Option<OsString>,
) -> std::io::Result<FakeLive> {
    let listener = std::net::TcpListener::bind(addr)?;
    let state = State {
        key: None,
        log,
        auto: Some(auto),
        ..State::default()
    };
    serve(listener, state)
}

fn http_error(status: u16, kind: &str, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("an HTTP status"))
        .json(json!({"error": {"type": kind, "code": code, "message": message, "param": null}}))
}

/// The body the real service answers a refused handshake with, by status.
fn refusal(status: u16) -> HttpResponse {
    let mut response = match status {
        401 => http_error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
        ),
        429 => http_error(
            429,
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for concurrent Live sessions.",
        ),
        500..=599 => http_error(
            status,
            "server_error",
            "server_error",
            "The server had an error while processing your request.",
        ),
        _ => http_error(
            status,
            "invalid_request_error",
            "refused",
            "The fake refuses every handshake.",
        ),
    };
    if status == 429 || status == 503 {
        response.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("20"),
        );
    }
    response
}

async fn handshake(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let state = state.get_ref().clone();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_string(), |p| p.as_str().to_string());
    let (key, refuse) = {
        let mut s = state.lock().unwrap();
        if s.record {
            s.handshakes.push(Handshake {
                path_and_query: path_and_query.clone(),
                authorization: header("authorization"),
                user_agent: header("user-agent"),
                headers: req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        (k.as_str().to_string(), value)
                    })
                    .collect(),
            });
        }
        (s.key.clone(), s.refuse)
    };
    if let Some(status) = refuse {
        return Ok(refusal(status));
    }
    if req.path() != PATH {
        return Ok(http_error(
            400,
            "invalid_request_error",
            "invalid_path",
            &format!("Live sessions are at {PATH}, not {}", req.path()),
        ));
    }
    if let Some(query) = req.uri().query() {
        let name = query.split(['=', '&']).next().unwrap_or("");
        return Ok(http_error(
            400,
            "invalid_request_error",
            "unknown_parameter",
            &format!(
                "Unknown parameter: '{name}'. Connect without query parameters and send the \
                 model in session.start."
            ),
        ));
    }
    let bearer = header("authorization");
    let given = bearer.as_deref().and_then(|b| b.strip_prefix("Bearer "));
    let accepted = match (&key, given) {
        (Some(key), Some(given)) => given == key,
        (None, Some(given)) => !given.trim().is_empty(),
        (_, None) => false,
    };
    if !accepted {
        return Ok(refusal(401));
    }
    if req.headers().contains_key("openai-beta") {
        return Ok(http_error(
            400,
            "invalid_request_error",
            "beta_header_not_supported",
            "The Live API takes no OpenAI-Beta header.",
        ));
    }
    let (response, ws, inbound) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(run_session(ws, inbound, state));
    Ok(response)
}

async fn run_session(ws: actix_ws::Session, mut inbound: actix_ws::MessageStream, state: Shared) {
    let mut session = Session {
        ws,
        live: Arc::default(),
    };
    let (log, auto, record) = {
        let mut s = state.lock().unwrap();
        s.current = Some(session.clone());
        s.closed = None;
        (s.log.clone(), s.auto.clone(), s.record)
    };
    let mut close_code = None;
    while let Some(Ok(message)) = futures_util::StreamExt::next(&mut inbound).await {
        // Once the server closed the socket, it answers nothing more.
        let server_closed = session.live.lock().unwrap().closed_by_server.is_some();
        let text = match message {
            actix_ws::Message::Text(text) => text,
            actix_ws::Message::Close(reason) => {
                close_code = Some(reason.map_or(1005, |r| u16::from(r.code)));
                break;
            }
            actix_ws::Message::Ping(p) => {
                let _ = session.ws.pong(&p).await;
                continue;
            }
            actix_ws::Message::Binary(_) if !server_closed => {
                let error = Live::error(
                    &Value::Null,
                    &Refusal::new(
                        "invalid_frame",
                        "Send client events as JSON text frames.",
                        None,
                    ),
                );
                session.send_all(vec![error], &state).await;
                continue;
            }
            _ => continue,
        };
        if let Some(path) = &log {
            append_line(path, &text);
        }
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            if !server_closed {
                let refusal = Refusal::new("invalid_json", "The event is not JSON.", None);
                session
                    .send_all(vec![Live::error(&Value::Null, &refusal)], &state)
                    .await;
            }
            continue;
        };
        let hold = {
            let mut s = state.lock().unwrap();
            if record {
                s.received.push(event.clone());
            }
            s.hold
        };
        if server_closed {
            continue;
        }
        let (replies, close, started) = {
            let mut live = session.live.lock().unwrap();
            live.hold = hold;
            let before = live.phase;
            let mut replies = live.client_event(&event);
            let started = before != Phase::Started && live.phase == Phase::Started;
            if let Some(auto) = &auto {
                let accepted = !replies.iter().any(|e| e["type"] == "error");
                if accepted {
                    let heard = live.auto_heard(&event, auto);
                    replies.extend(heard);
                }
            }
            (replies, live.close.take(), started)
        };
        if !session.send_all(replies, &state).await {
            continue; // closed from the server's side meanwhile (a test's close_session)
        }
        if let Some((code, reason)) = close {
            session.close(code, reason).await;
        }
        if let (Some(auto), true) = (&auto, started) {
            actix_web::rt::spawn(stream(session.clone(), auto.clone()));
        }
    }
    let by_server = session.live.lock().unwrap().closed_by_server;
    state.lock().unwrap().closed = Some(close_code.or(by_server).unwrap_or(1006));
    let _ = session.ws.close(None).await;
}

/// A tick later than this moves the stream's phase instead of being made up (see [`stream`]).
const LATE: Duration = Duration::from_millis(1);

/// Auto mode: the model's output from `session.started` on, without end, in real time: a delta
/// every `delta_every`, silence unless a reply is being spoken. It stops with the session.
///
/// On schedule, except that a tick that fires more than [`LATE`] late (its thread was busy)
/// starts a new schedule from then instead of sending the missed deltas in a burst: the rate
/// stays real time, and a stream that began while callsim's thread was busy sending a round of
/// caller frames does not keep its deltas in those rounds, where callsim would time its own
/// load core rather than callvisor (on a strict schedule the median model-to-caller doubled in
/// a 200-call run). The Realtime fake, which sleeps after each delta, drifts the same way.
async fn stream(mut session: Session, auto: AutoLive) {
    use actix_web::rt::time::{sleep_until, Instant};
    let silence = json!({"type": "session.output_audio.delta",
        "delta": STANDARD.encode(vec![SILENCE; auto.voice.delta.len()])})
    .to_string();
    let mut due = Instant::now();
    loop {
        let woke = Instant::now();
        if woke > due + LATE {
            due = woke;
        }
        let events = {
            let mut live = session.live.lock().unwrap();
            if live.phase != Phase::Started || live.closed_by_server.is_some() {
                return;
            }
            live.auto_tick(&auto, &silence)
        };
        if !session.send_texts(events).await {
            return;
        }
        due += auto.voice.delta_every;
        sleep_until(due).await;
    }
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

// ------------------------------------------------------------------------------------------------
// The shapes the service accepts: the SDK's models, strict (an unknown field anywhere is refused).

/// Why a client event is refused: the `error` object's `code`, `message`, `param`.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    code: &'static str,
    message: String,
    param: Option<String>,
}

impl Refusal {
    fn new(code: &'static str, message: &str, param: Option<&str>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            param: param.map(str::to_string),
        }
    }
}

type Check = fn(&Value, &str) -> Result<(), Refusal>;
/// A variant of a tagged union: its tag, and its fields besides the tag.
type Variant = (&'static str, &'static [Field]);

#[derive(Clone, Copy, PartialEq)]
enum Need {
    Optional,
    Required,
    /// The key must be there; its value may be null ("Required, nullable").
    RequiredNullable,
}

#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    shape: Shape,
    need: Need,
}

const fn req(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        need: Need::Required,
    }
}

const fn opt(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        need: Need::Optional,
    }
}

const fn nullable(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        need: Need::RequiredNullable,
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Str,
    Bool,
    /// An integer of at least 0.
    Count,
    /// Any JSON object (a JSON Schema).
    Object,
    /// One of these strings.
    Lit(&'static [&'static str]),
    /// An object with exactly these fields.
    Fields(&'static [Field]),
    /// A list of at least `.1` and at most `.2` items.
    List(&'static Shape, usize, usize),
    /// An object tagged by the key `.0`.
    Tagged(&'static str, &'static [Variant]),
    /// A string of the first shape, or anything else of the second.
    Either(&'static Shape, &'static Shape),
    Check(Check),
    /// Accepted by the real service, not modelled by the fake.
    Unsupported(&'static str),
}

const ANY: usize = usize::MAX;
const EVENT_ID: Field = opt("event_id", Shape::Str);
const ACK_DELAY: Field = opt("acknowledgement_delay_ms", Shape::Count);
const ITEM_STATUS: Shape = Shape::Lit(&["in_progress", "completed", "incomplete"]);

static VOICE: Shape = Shape::Either(
    &Shape::Check(voice),
    &Shape::Fields(&[req("id", Shape::Str)]),
);
static AUDIO_FORMAT: Shape = Shape::Tagged(
    "type",
    &[
        ("audio/pcm", &[req("rate", Shape::Check(pcm_rate))]),
        ("audio/pcmu", &[req("rate", Shape::Count)]),
        ("audio/pcma", &[req("rate", Shape::Count)]),
    ],
);
static AUDIO: Shape = Shape::Fields(&[
    opt("format", AUDIO_FORMAT),
    opt("output", Shape::Fields(&[opt("voice", VOICE)])),
]);

static SKILL: Shape = Shape::Tagged(
    "type",
    &[
        (
            "skill_reference",
            &[req("skill_id", Shape::Str), opt("version", Shape::Str)],
        ),
        (
            "inline",
            &[
                req("description", Shape::Str),
                req("name", Shape::Str),
                req(
                    "source",
                    Shape::Fields(&[
                        req("data", Shape::Str),
                        req("media_type", Shape::Lit(&["application/zip"])),
                        req("type", Shape::Lit(&["base64"])),
                    ]),
                ),
            ],
        ),
    ],
);
static LOCAL_SKILL: Shape = Shape::Fields(&[
    req("description", Shape::Str),
    req("name", Shape::Str),
    req("path", Shape::Str),
]);
static SHELL_ENVIRONMENT: Shape = Shape::Tagged(
    "type",
    &[
        (
            "container_auto",
            &[
                opt("file_ids", Shape::List(&Shape::Str, 0, ANY)),
                opt("memory_limit", Shape::Lit(&["1g", "4g", "16g", "64g"])),
                opt(
                    "network_policy",
                    Shape::Tagged(
                        "type",
                        &[
                            ("disabled", &[]),
                            (
                                "allowlist",
                                &[req("allowed_domains", Shape::List(&Shape::Str, 0, ANY))],
                            ),
                        ],
                    ),
                ),
                opt("skills", Shape::List(&SKILL, 0, ANY)),
            ],
        ),
        ("container_reference", &[req("container_id", Shape::Str)]),
        ("local", &[opt("skills", Shape::List(&LOCAL_SKILL, 0, ANY))]),
    ],
);
/// The SDK's `Tool` union: a function tool, or a hosted tool that is only its `type`.
static TOOL: Shape = Shape::Tagged(
    "type",
    &[
        (
            "function",
            &[
                req("name", Shape::Check(tool_name)),
                opt("description", Shape::Str),
                opt("parameters", Shape::Object),
                opt("strict", Shape::Bool),
            ],
        ),
        ("web_search", &[]),
        ("file_search", &[]),
        ("code_interpreter", &[]),
        ("shell", &[opt("environment", SHELL_ENVIRONMENT)]),
        ("image_generation", &[]),
        ("mcp", &[]),
        ("custom", &[]),
        ("namespace", &[]),
        ("tool_search", &[]),
        ("programmatic_tool_calling", &[]),
        ("computer", &[]),
        ("apply_patch", &[]),
    ],
);
static NAMED_TOOL_CHOICES: [Variant; 12] = [
    ("function", &[req("name", Shape::Str)]),
    (
        "mcp",
        &[req("name", Shape::Str), req("server_label", Shape::Str)],
    ),
    ("file_search", &[]),
    ("web_search", &[]),
    ("web_search_preview", &[]),
    ("image_generation", &[]),
    ("computer", &[]),
    ("code_interpreter", &[]),
    ("programmatic_tool_calling", &[]),
    ("shell", &[]),
    ("custom", &[req("name", Shape::Str)]),
    ("apply_patch", &[]),
];
static ALLOWED_TOOL: Shape = Shape::Tagged("type", &NAMED_TOOL_CHOICES);
/// `{"type": "allowed_tools", ...}`, the one tool choice that is not a tool.
static ALLOWED_TOOLS_CHOICE: [Field; 2] = [
    req("tools", Shape::List(&ALLOWED_TOOL, 0, ANY)),
    opt("mode", Shape::Lit(&["none", "auto", "required"])),
];
static TOOL_CHOICE: Shape = Shape::Either(
    &Shape::Lit(&["auto", "none", "required"]),
    &Shape::Check(tool_choice_object),
);
const REASONING: Shape = Shape::Fields(&[
    opt(
        "effort",
        Shape::Lit(&["none", "minimal", "low", "medium", "high", "xhigh"]),
    ),
    opt("summary", Shape::Lit(&["concise", "detailed", "auto"])),
]);
const SERVICE_TIER: Shape = Shape::Lit(&[
    "auto",
    "default",
    "fast_tier_temp_pilot",
    "flex",
    "priority",
    "ultrafast",
]);
const TEXT: Shape = Shape::Fields(&[opt("verbosity", Shape::Lit(&["low", "medium", "high"]))]);
/// `ResponsesDelegationConfig`.
static RESPONSES: [Field; 9] = [
    req("model", Shape::Str),
    opt("instructions", Shape::Str),
    opt("max_output_tokens", Shape::Count),
    opt("parallel_tool_calls", Shape::Bool),
    opt("reasoning", REASONING),
    opt("service_tier", SERVICE_TIER),
    opt("text", TEXT),
    opt("tool_choice", TOOL_CHOICE),
    opt("tools", Shape::List(&TOOL, 0, ANY)),
];
/// `ResponsesDelegationUpdateConfig`: the same, every field optional.
static RESPONSES_UPDATE: [Field; 9] = [
    opt("model", Shape::Str),
    opt("instructions", Shape::Str),
    opt("max_output_tokens", Shape::Count),
    opt("parallel_tool_calls", Shape::Bool),
    opt("reasoning", REASONING),
    opt("service_tier", SERVICE_TIER),
    opt("text", TEXT),
    opt("tool_choice", TOOL_CHOICE),
    opt("tools", Shape::List(&TOOL, 0, ANY)),
];
const DECISIONS: &str = "Decisions delegation is not modelled by the fake";
static DELEGATION: Shape = Shape::Tagged(
    "type",
    &[
        ("client", &[ACK_DELAY]),
        (
            "responses",
            &[req("responses", Shape::Fields(&RESPONSES)), ACK_DELAY],
        ),
        (
            "decisions",
            &[opt("decisions", Shape::Unsupported(DECISIONS)), ACK_DELAY],
        ),
    ],
);
static DELEGATION_UPDATE: Shape = Shape::Tagged(
    "type",
    &[
        ("client", &[ACK_DELAY]),
        (
            "responses",
            &[
                opt("responses", Shape::Fields(&RESPONSES_UPDATE)),
                ACK_DELAY,
            ],
        ),
        (
            "decisions",
            &[opt("decisions", Shape::Unsupported(DECISIONS)), ACK_DELAY],
        ),
    ],
);
const INITIAL_COMMON: [Field; 3] = [
    opt("id", Shape::Str),
    opt("status", Shape::Lit(&["incomplete", "completed"])),
    opt("type", Shape::Lit(&["message"])),
];
static INPUT_PART: Shape = Shape::Fields(&[
    req("text", Shape::Str),
    opt("type", Shape::Lit(&["input_text"])),
]);
static ASSISTANT_PART: Shape = Shape::Fields(&[
    req("text", Shape::Str),
    opt("type", Shape::Lit(&["text", "output_text"])),
]);
/// `InitialItem`: startup history, one text part a message.
static INITIAL_ITEM: Shape = Shape::Tagged(
    "role",
    &[
        (
            "developer",
            &[
                req("content", Shape::List(&INPUT_PART, 1, 1)),
                INITIAL_COMMON[0],
                INITIAL_COMMON[1],
                INITIAL_COMMON[2],
            ],
        ),
        (
            "user",
            &[
                req("content", Shape::List(&INPUT_PART, 1, 1)),
                INITIAL_COMMON[0],
                INITIAL_COMMON[1],
                INITIAL_COMMON[2],
            ],
        ),
        (
            "assistant",
            &[
                req("content", Shape::List(&ASSISTANT_PART, 1, 1)),
                INITIAL_COMMON[0],
                INITIAL_COMMON[1],
                INITIAL_COMMON[2],
            ],
        ),
    ],
);
/// `SessionConfig`.
static SESSION_CONFIG: [Field; 8] = [
    req("model", Shape::Check(model)),
    opt("audio", AUDIO),
    opt(
        "client",
        Shape::Unsupported("client configures a WebRTC frontend; not modelled by the fake"),
    ),
    opt("delegation", DELEGATION),
    opt("input", Shape::List(&INITIAL_ITEM, 0, 128)),
    opt("instructions", Shape::Check(instructions)),
    opt("store", Shape::Bool),
    opt(
        "triggers",
        Shape::Unsupported("Decisions triggers are not modelled by the fake"),
    ),
];
static SESSION_START: [Field; 2] = [EVENT_ID, req("session", Shape::Fields(&SESSION_CONFIG))];
static SESSION_UPDATE: [Field; 2] = [
    EVENT_ID,
    req(
        "session",
        Shape::Fields(&[
            opt("delegation", DELEGATION_UPDATE),
            opt(
                "triggers",
                Shape::Unsupported("Decisions triggers are not modelled by the fake"),
            ),
        ]),
    ),
];
static AUDIO_APPEND: [Field; 2] = [EVENT_ID, req("audio", Shape::Check(base64))];
static CONTEXT_APPEND: [Field; 3] = [
    EVENT_ID,
    req("content", Shape::Check(content)),
    nullable("delegation_id", Shape::Str),
];
static BARE: [Field; 1] = [EVENT_ID];
static ITEM_CREATE: [Field; 2] = [EVENT_ID, req("item", Shape::Check(item))];
/// `FunctionCallOutput`, with the fake's narrowing (a `call_id`, a string `output`).
static FUNCTION_CALL_OUTPUT: [Field; 7] = [
    req("call_id", Shape::Str),
    req("output", Shape::Str),
    opt("id", Shape::Str),
    opt("status", ITEM_STATUS),
    opt(
        "caller",
        Shape::Tagged(
            "type",
            &[
                ("direct", &[]),
                ("program", &[req("caller_id", Shape::Str)]),
            ],
        ),
    ),
    opt("name", Shape::Str),
    opt("namespace", Shape::Str),
];
static TEXT_PART: Shape = Shape::Tagged(
    "type",
    &[(
        "input_text",
        &[
            req("text", Shape::Str),
            opt(
                "prompt_cache_breakpoint",
                Shape::Fields(&[
                    req("mode", Shape::Lit(&["explicit"])),
                    opt("ttl", Shape::Lit(&["30m", "12h"])),
                ]),
            ),
        ],
    )],
);
/// `EasyInputMessage` / `Message`, text only.
static MESSAGE: [Field; 6] = [
    opt("type", Shape::Lit(&["message"])),
    req(
        "role",
        Shape::Lit(&["user", "assistant", "system", "developer"]),
    ),
    req(
        "content",
        Shape::Either(&Shape::Str, &Shape::List(&TEXT_PART, 1, ANY)),
    ),
    opt("status", ITEM_STATUS),
    opt("id", Shape::Str),
    opt("phase", Shape::Lit(&["commentary", "final_answer"])),
];

/// The SDK's client events (`types/live/client_event.py`), each with its fields, or `None`
/// where the fake refuses the event whatever its fields.
fn event_fields(kind: &str) -> Option<Option<&'static [Field]>> {
    Some(match kind {
        "session.start" => Some(&SESSION_START),
        "session.update" => Some(&SESSION_UPDATE),
        "session.input_audio.append" => Some(&AUDIO_APPEND),
        "session.instructions.append" | "session.thinking.append" | "session.commentary.append" => {
            Some(&CONTEXT_APPEND)
        }
        "session.input_audio.mute"
        | "session.input_audio.unmute"
        | "session.close"
        | "response.create" => Some(&BARE),
        "response.item.create" => Some(&ITEM_CREATE),
        "session.output_audio.fixture.play"
        | "decision.create"
        | "decision.item.create"
        | "decision.item.delete" => None,
        _ => return None,
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(path: &str, expected: &str, value: &Value) -> Refusal {
    Refusal {
        code: "invalid_type",
        message: format!(
            "Invalid type for '{path}': expected {expected}, but got {} instead.",
            kind_of(value)
        ),
        param: Some(path.into()),
    }
}

fn invalid_value(path: &str, value: &str, supported: &[&str]) -> Refusal {
    let supported = supported
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Refusal {
        code: "invalid_value",
        message: format!("Invalid value: '{value}'. Supported values are: {supported}."),
        param: Some(path.into()),
    }
}

fn object<'v>(value: &'v Value, path: &str) -> Result<&'v Map<String, Value>, Refusal> {
    value
        .as_object()
        .ok_or_else(|| invalid_type(path, "an object", value))
}

/// Checks `value` (at `path`) against `shape`.
fn check(value: &Value, shape: &Shape, path: &str) -> Result<(), Refusal> {
    match shape {
        Shape::Str if value.is_string() => Ok(()),
        Shape::Str => Err(invalid_type(path, "a string", value)),
        Shape::Bool if value.is_boolean() => Ok(()),
        Shape::Bool => Err(invalid_type(path, "a boolean", value)),
        Shape::Count if value.is_u64() => Ok(()),
        Shape::Count if value.is_i64() => Err(Refusal {
            code: "invalid_value",
            message: format!("Invalid '{path}': {value} must be at least 0."),
            param: Some(path.into()),
        }),
        Shape::Count => Err(invalid_type(path, "an integer", value)),
        Shape::Object => object(value, path).map(drop),
        Shape::Lit(options) => match value.as_str() {
            Some(s) if options.contains(&s) => Ok(()),
            Some(s) => Err(invalid_value(path, s, options)),
            None => Err(invalid_type(path, "a string", value)),
        },
        Shape::Fields(fields) => check_fields(object(value, path)?, fields, None, path),
        Shape::List(item, min, max) => {
            let items = value
                .as_array()
                .ok_or_else(|| invalid_type(path, "an array", value))?;
            if items.len() > *max {
                return Err(Refusal {
                    code: "array_above_max_length",
                    message: format!(
                        "Invalid '{path}': array too long. Expected at most {max} items, got {}.",
                        items.len()
                    ),
                    param: Some(path.into()),
                });
            }
            if items.len() < *min {
                return Err(Refusal {
                    code: "array_below_min_length",
                    message: format!(
                        "Invalid '{path}': array too short. Expected at least {min} items, got {}.",
                        items.len()
                    ),
                    param: Some(path.into()),
                });
            }
            for (i, value) in items.iter().enumerate() {
                check(value, item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Shape::Tagged(key, variants) => {
            let map = object(value, path)?;
            let tag_path = join(path, key);
            let tag = match map.get(*key) {
                None | Some(Value::Null) => return Err(missing(&tag_path)),
                Some(Value::String(tag)) => tag,
                Some(other) => return Err(invalid_type(&tag_path, "a string", other)),
            };
            let Some((_, fields)) = variants.iter().find(|(t, _)| t == tag) else {
                let tags: Vec<&str> = variants.iter().map(|(t, _)| *t).collect();
                return Err(invalid_value(&tag_path, tag, &tags));
            };
            check_fields(map, fields, Some(key), path)
        }
        Shape::Either(string, _) if value.is_string() => check(value, string, path),
        Shape::Either(_, other) => check(value, other, path),
        Shape::Check(f) => f(value, path),
        Shape::Unsupported(why) => Err(Refusal {
            code: "unsupported_by_fake",
            message: format!("'{path}': {why}."),
            param: Some(path.into()),
        }),
    }
}

fn missing(path: &str) -> Refusal {
    Refusal {
        code: "missing_required_parameter",
        message: format!("Missing required parameter: '{path}'."),
        param: Some(path.into()),
    }
}

/// The object's fields: none unknown (besides its tag), the required ones there, each valid.
fn check_fields(
    map: &Map<String, Value>,
    fields: &[Field],
    tag: Option<&str>,
    path: &str,
) -> Result<(), Refusal> {
    for key in map.keys() {
        if Some(key.as_str()) != tag && !fields.iter().any(|f| f.name == key) {
            let param = join(path, key);
            return Err(Refusal {
                code: "unknown_parameter",
                message: format!("Unknown parameter: '{param}'."),
                param: Some(param),
            });
        }
    }
    for field in fields {
        let field_path = join(path, field.name);
        match (map.get(field.name), field.need) {
            (None, Need::Optional) => {}
            (None, _) => return Err(missing(&field_path)),
            (Some(Value::Null), Need::Required) => {
                return Err(invalid_type(&field_path, "a value", &Value::Null))
            }
            (Some(Value::Null), _) => {}
            (Some(value), _) => check(value, &field.shape, &field_path)?,
        }
    }
    Ok(())
}

fn model(value: &Value, path: &str) -> Result<(), Refusal> {
    let name = value
        .as_str()
        .ok_or_else(|| invalid_type(path, "a string", value))?;
    if LIVE_MODELS.contains(&name) {
        return Ok(());
    }
    Err(Refusal {
        code: "model_not_found",
        message: format!(
            "The model '{name}' does not exist or you do not have access to it. Live models: {}.",
            LIVE_MODELS.join(", ")
        ),
        param: Some(path.into()),
    })
}

fn voice(value: &Value, path: &str) -> Result<(), Refusal> {
    check(value, &Shape::Lit(BUILT_IN_VOICES), path)
}

fn pcm_rate(value: &Value, path: &str) -> Result<(), Refusal> {
    match value.as_u64() {
        Some(16000 | 24000) => Ok(()),
        Some(rate) => Err(invalid_value(path, &rate.to_string(), &["16000", "24000"])),
        None => Err(invalid_type(path, "an integer", value)),
    }
}

/// ceil(chars / 4): the fake's count of tokens.
fn tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

fn instructions(value: &Value, path: &str) -> Result<(), Refusal> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid_type(path, "a string", value))?;
    if tokens(text) > INSTRUCTIONS_TOKEN_LIMIT {
        return Err(Refusal {
            code: "instructions_too_long",
            message: format!(
                "'{path}' is limited to {INSTRUCTIONS_TOKEN_LIMIT} tokens; got about {}.",
                tokens(text)
            ),
            param: Some(path.into()),
        });
    }
    Ok(())
}

fn content(value: &Value, path: &str) -> Result<(), Refusal> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid_type(path, "a string", value))?;
    if text.is_empty() {
        return Err(Refusal {
            code: "invalid_value",
            message: format!("Invalid '{path}': empty string. Expected some text."),
            param: Some(path.into()),
        });
    }
    if tokens(text) > APPEND_TOKEN_LIMIT {
        return Err(Refusal {
            code: "content_too_long",
            message: format!(
                "'{path}' is limited to {APPEND_TOKEN_LIMIT} tokens; got about {}.",
                tokens(text)
            ),
            param: Some(path.into()),
        });
    }
    Ok(())
}

fn base64(value: &Value, path: &str) -> Result<(), Refusal> {
    let audio = value
        .as_str()
        .ok_or_else(|| invalid_type(path, "a string", value))?;
    STANDARD.decode(audio).map(drop).map_err(|_| Refusal {
        code: "invalid_value",
        message: format!("Invalid '{path}': not valid base64."),
        param: Some(path.into()),
    })
}

fn tool_name(value: &Value, path: &str) -> Result<(), Refusal> {
    let name = value
        .as_str()
        .ok_or_else(|| invalid_type(path, "a string", value))?;
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        return Ok(());
    }
    Err(Refusal {
        code: "invalid_value",
        message: format!(
            "Invalid '{path}': string does not match pattern. Expected a string that matches the \
             pattern '^[a-zA-Z0-9_-]{{1,64}}$'."
        ),
        param: Some(path.into()),
    })
}

fn tool_choice_object(value: &Value, path: &str) -> Result<(), Refusal> {
    let map = object(value, path)?;
    if map.get("type").and_then(Value::as_str) == Some("allowed_tools") {
        return check_fields(map, &ALLOWED_TOOLS_CHOICE, Some("type"), path);
    }
    check(value, &Shape::Tagged("type", &NAMED_TOOL_CHOICES), path)
}

fn item(value: &Value, path: &str) -> Result<(), Refusal> {
    let map = object(value, path)?;
    let type_path = join(path, "type");
    match map.get("type") {
        Some(Value::String(t)) if t == "function_call_output" => {
            check_fields(map, &FUNCTION_CALL_OUTPUT, Some("type"), path)
        }
        Some(Value::String(t)) if t == "message" => check_fields(map, &MESSAGE, None, path),
        None if map.contains_key("role") => check_fields(map, &MESSAGE, None, path),
        None => Err(missing(&type_path)),
        Some(Value::String(t)) => Err(invalid_value(
            &type_path,
            t,
            &["message", "function_call_output"],
        )),
        Some(other) => Err(invalid_type(&type_path, "a string", other)),
    }
}

// ------------------------------------------------------------------------------------------------
// The session, as the service keeps it: a pure state machine the tests drive directly.

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum Phase {
    /// Waiting for `session.start`.
    #[default]
    Waiting,
    /// A valid `session.start` is held unanswered (`hold_start`).
    Held,
    Started,
    /// Closed (or a failed start): nothing more is answered.
    Closed,
}

/// Who handles delegated work: the application (`client`, or no delegation) or Responses.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum Owner {
    #[default]
    Client,
    Responses,
}

/// The delegated response streaming now.
struct Streaming {
    id: String,
    delegation: Option<String>,
    created_at: u64,
    items: usize,
    sequence: u64,
}

/// A function call the fake emitted, and whether its output came.
struct Call {
    call_id: String,
    answered: bool,
}

static SESSIONS: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Default)]
struct Live {
    phase: Phase,
    /// Hold the next valid `session.start` (copied from the fake's state before each event).
    hold: bool,
    /// The `session.started` of a held start.
    held: Option<Value>,
    /// The session resource, once started.
    session: Value,
    owner: Owner,
    /// Client delegations the fake created (their ids may be a `delegation_id`).
    client_delegations: HashSet<String>,
    streaming: Option<Streaming>,
    /// The latest Responses delegation: a `response.create` continues it.
    last_delegation: Option<String>,
    calls: Vec<Call>,
    /// Caller audio appended so far (mu-law 8 kHz: 8 bytes a millisecond).
    audio_bytes: u64,
    /// The latest `session.usage.updated` seconds.
    usage_seconds: Option<f64>,
    next_id: u64,
    /// Set by a step after which the server closes the socket: (code, reason).
    close: Option<(u16, &'static str)>,
    /// The code the server closed the socket with.
    closed_by_server: Option<u16>,
    /// Auto mode: the model's ear and voice.
    speaker: Speaker,
}

/// Auto mode: what the model hears and what it is saying.
#[derive(Default)]
struct Speaker {
    vad: Vad,
    /// Where (session timeline, ms) the caller's current utterance began.
    heard_from_ms: u64,
    /// Deltas of the reply still to speak, and the replies begun.
    left: usize,
    replies: usize,
    /// The goodbye's `end_call` was delegated: the model answers no more.
    said_goodbye: bool,
    /// Tool calls delegated, and when, until their output comes.
    tool_sent: HashMap<String, Instant>,
}

impl Live {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    fn timeline_ms(&self) -> u64 {
        self.audio_bytes / 8
    }

    fn error(cause: &Value, refusal: &Refusal) -> Value {
        let client_event_id = cause.get("event_id").filter(|v| v.is_string()).cloned();
        json!({"type": "error", "event_id": "event_error", "client_event_id": client_event_id,
            "error": {"type": "invalid_request_error", "code": refusal.code,
                "message": refusal.message, "param": refusal.param,
                "client_event_id": client_event_id}})
    }

    /// An event answering `cause` (its `client_event_id`).
    fn answer(&mut self, cause: &Value, mut event: Value) -> Value {
        event["event_id"] = json!(self.id("event"));
        event["client_event_id"] = cause
            .get("event_id")
            .filter(|v| v.is_string())
            .cloned()
            .unwrap_or(Value::Null);
        event
    }

    /// A server event of its own (no `client_event_id`).
    fn event(&mut self, mut event: Value) -> Value {
        event["event_id"] = json!(self.id("event"));
        event
    }

    /// What the service answers to one client event; its state changes as the real one's would.
    fn client_event(&mut self, event: &Value) -> Vec<Value> {
        match self.step(event) {
            Ok(events) => events,
            Err(refusal) => {
                if self.phase == Phase::Waiting && event["type"] == "session.start" {
                    // A failed start ends the connection.
                    self.phase = Phase::Closed;
                    self.close = Some((FAILED_START_CLOSE, "session.start failed"));
                }
                vec![Self::error(event, &refusal)]
            }
        }
    }

    fn step(&mut self, event: &Value) -> Result<Vec<Value>, Refusal> {
        let map = event.as_object().ok_or_else(|| {
            Refusal::new("invalid_value", "A client event is a JSON object.", None)
        })?;
        let kind = match map.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            None | Some(Value::Null) => return Err(missing("type")),
            Some(other) => return Err(invalid_type("type", "a string", other)),
        };
        let Some(fields) = event_fields(kind) else {
            return Err(Refusal::new(
                "invalid_value",
                &format!("Invalid value: '{kind}'. Supported values are the Live client events."),
                Some("type"),
            ));
        };
        match (self.phase, kind) {
            (Phase::Waiting, "session.start") => {}
            (Phase::Held | Phase::Started, "session.start") => {
                return Err(Refusal::new(
                    "session_already_started",
                    "session.start was already sent on this connection.",
                    None,
                ))
            }
            (Phase::Waiting | Phase::Held, _) => {
                return Err(Refusal::new(
                    "session_not_started",
                    &format!("Send session.start and wait for session.started before {kind}."),
                    None,
                ))
            }
            (Phase::Closed, _) => {
                return Err(Refusal::new(
                    "session_closed",
                    "The session is closed.",
                    None,
                ))
            }
            (Phase::Started, _) => {}
        }
        match (kind, fields) {
            ("session.output_audio.fixture.play", _) => {
                return Err(Refusal::new(
                    "unsupported_by_fake",
                    "Audio fixtures are not modelled by the fake.",
                    None,
                ))
            }
            (_, None) => {
                return Err(Refusal::new(
                    "decisions_delegation_required",
                    &format!("{kind} requires Decisions delegation."),
                    None,
                ))
            }
            ("response.item.create" | "response.create", _) if self.owner != Owner::Responses => {
                return Err(Refusal::new(
                    "responses_delegation_required",
                    &format!("{kind} requires Responses delegation."),
                    None,
                ))
            }
            (_, Some(fields)) => check_fields(map, fields, Some("type"), "")?,
        }
        match kind {
            "session.start" => self.start(event),
            "session.update" => self.update(event),
            "session.input_audio.append" => {
                let audio = STANDARD
                    .decode(event["audio"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                self.audio_bytes += audio.len() as u64;
                Ok(vec![])
            }
            "session.input_audio.mute" | "session.input_audio.unmute" => {
                let acked = format!("{kind}d");
                Ok(vec![self.answer(event, json!({"type": acked}))])
            }
            "session.instructions.append"
            | "session.thinking.append"
            | "session.commentary.append" => self.append(event, kind),
            "response.item.create" => self.item_create(event),
            "response.create" => self.response_create(event),
            "session.close" => {
                let events = self.closed("close_requested", Some(event));
                self.close = Some((1000, "session closed"));
                Ok(events)
            }
            _ => unreachable!("every client event has its step"),
        }
    }

    fn start(&mut self, event: &Value) -> Result<Vec<Value>, Refusal> {
        let config = &event["session"];
        // The phone bridge's rules: one shared format, mu-law at 8 kHz.
        let format = &config["audio"]["format"];
        if format.is_null() {
            return Err(Refusal {
                code: "missing_required_parameter",
                message: "Missing required parameter: 'session.audio.format' (a phone bridge \
                          sends {\"type\": \"audio/pcmu\", \"rate\": 8000})."
                    .into(),
                param: Some("session.audio.format".into()),
            });
        }
        if format["type"] != "audio/pcmu" {
            let got = format["type"].as_str().unwrap_or("");
            return Err(invalid_value(
                "session.audio.format.type",
                got,
                &["audio/pcmu"],
            ));
        }
        if format["rate"] != 8000 {
            return Err(invalid_value(
                "session.audio.format.rate",
                &format["rate"].to_string(),
                &["8000"],
            ));
        }
        tool_choice_names_a_tool(
            &config["delegation"]["responses"],
            "session.delegation.responses",
        )?;
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let voice = match &config["audio"]["output"]["voice"] {
            Value::Null => json!(DEFAULT_VOICE),
            voice => voice.clone(),
        };
        let mut session = json!({
            "id": format!("live_{n:08x}{nanos:08x}"),
            "expires_at": now() + SESSION_SECONDS,
            "model": config["model"],
            "status": "active",
            "audio": {"format": format, "output": {"voice": voice}},
            "delegation": config["delegation"],
            "instructions": config["instructions"],
            "store": config["store"].as_bool().unwrap_or(false),
        });
        if !config["input"].is_null() {
            session["input"] = config["input"].clone();
        }
        self.owner = match config["delegation"]["type"].as_str() {
            Some("responses") => Owner::Responses,
            _ => Owner::Client,
        };
        self.session = session.clone();
        let started = self.answer(
            event,
            json!({"type": "session.started", "session": session}),
        );
        if self.hold {
            self.phase = Phase::Held;
            self.held = Some(started);
            return Ok(vec![]);
        }
        self.phase = Phase::Started;
        Ok(vec![started])
    }

    /// The held start's `session.started`.
    fn release(&mut self) -> Vec<Value> {
        match self.held.take() {
            Some(started) if self.phase == Phase::Held => {
                self.phase = Phase::Started;
                vec![started]
            }
            _ => vec![],
        }
    }

    fn update(&mut self, event: &Value) -> Result<Vec<Value>, Refusal> {
        let update = &event["session"]["delegation"];
        if !update.is_null() {
            let current = match self.owner {
                Owner::Responses => "responses",
                Owner::Client => "client",
            };
            let wanted = update["type"].as_str().unwrap_or("");
            if wanted != current {
                return Err(Refusal {
                    code: "invalid_value",
                    message: format!(
                        "The delegation type cannot change: the session delegates to {current}."
                    ),
                    param: Some("session.delegation.type".into()),
                });
            }
            let mut delegation = match &self.session["delegation"] {
                Value::Null => json!({"type": "client"}),
                d => d.clone(),
            };
            if let Some(changes) = update["responses"].as_object() {
                for (key, value) in changes {
                    delegation["responses"][key] = value.clone();
                }
                tool_choice_names_a_tool(&delegation["responses"], "session.delegation.responses")?;
            }
            if let Some(delay) = update.get("acknowledgement_delay_ms") {
                delegation["acknowledgement_delay_ms"] = delay.clone();
            }
            self.session["delegation"] = delegation;
        }
        let session = self.session.clone();
        Ok(vec![self.answer(
            event,
            json!({"type": "session.updated", "session": session}),
        )])
    }

    fn append(&mut self, event: &Value, kind: &str) -> Result<Vec<Value>, Refusal> {
        if let Some(id) = event["delegation_id"].as_str() {
            if self.owner == Owner::Responses {
                return Err(Refusal::new(
                    "invalid_value",
                    "Non-null delegation_id is not accepted with Responses delegation; send null.",
                    Some("delegation_id"),
                ));
            }
            if !self.client_delegations.contains(id) {
                return Err(Refusal::new(
                    "delegation_not_found",
                    &format!("No client delegation '{id}' in this session."),
                    Some("delegation_id"),
                ));
            }
        }
        let at = self.timeline_ms();
        let acked = kind.replace(".append", ".appended");
        Ok(vec![self.answer(
            event,
            json!({"type": acked, "start_ms": at, "end_ms": at}),
        )])
    }

    fn item_create(&mut self, event: &Value) -> Result<Vec<Value>, Refusal> {
        let item = &event["item"];
        if item["type"] != "function_call_output" {
            return Ok(vec![]);
        }
        let call_id = item["call_id"].as_str().unwrap_or("");
        let Some(call) = self.calls.iter_mut().find(|c| c.call_id == call_id) else {
            return Err(Refusal::new(
                "function_call_not_found",
                &format!("No function call with call_id '{call_id}' in this session."),
                Some("item.call_id"),
            ));
        };
        if call.answered {
            return Err(Refusal::new(
                "duplicate_function_call_output",
                &format!("The function call '{call_id}' already has its output."),
                Some("item.call_id"),
            ));
        }
        call.answered = true;
        Ok(vec![])
    }

    fn response_create(&mut self, event: &Value) -> Result<Vec<Value>, Refusal> {
        if let Some(streaming) = &self.streaming {
            return Err(Refusal::new(
                "response_in_progress",
                &format!(
                    "The delegated response {} is still in progress.",
                    streaming.id
                ),
                None,
            ));
        }
        let unanswered: Vec<&str> = self
            .calls
            .iter()
            .filter(|c| !c.answered)
            .map(|c| c.call_id.as_str())
            .collect();
        if !unanswered.is_empty() {
            return Err(Refusal::new(
                "function_call_outputs_missing",
                &format!(
                    "Every function call needs its output before response.create; missing: {}.",
                    unanswered.join(", ")
                ),
                None,
            ));
        }
        let delegation = self.last_delegation.clone();
        let id = self.id("resp");
        let created = self.begin_response(id, delegation);
        Ok(vec![self.answer(event, created)])
    }

    /// A new delegated response, streaming; its `response.event{response.created}`.
    fn begin_response(&mut self, id: String, delegation: Option<String>) -> Value {
        let mut streaming = Streaming {
            id,
            delegation,
            created_at: now(),
            items: 0,
            sequence: 0,
        };
        let snapshot = self.snapshot(&streaming, "in_progress", Value::Null);
        let created = self.envelope(
            &mut streaming,
            json!({"type": "response.created", "response": snapshot}),
        );
        self.streaming = Some(streaming);
        created
    }

    /// A lifecycle snapshot of the response, a Responses `Response` whose instructions, tools and
    /// output are cleared ("Response lifecycle snapshots omit input and clear instructions,
    /// tools, and output").
    fn snapshot(&self, response: &Streaming, status: &str, usage: Value) -> Value {
        let backend = &self.session["delegation"]["responses"];
        let tool_choice = match &backend["tool_choice"] {
            Value::Null => json!("auto"),
            choice => choice.clone(),
        };
        json!({"id": response.id, "object": "response", "created_at": response.created_at,
            "status": status, "model": backend["model"], "instructions": null, "tools": [],
            "tool_choice": tool_choice,
            "parallel_tool_calls": backend["parallel_tool_calls"].as_bool().unwrap_or(true),
            "output": [], "usage": usage})
    }

    /// A Responses streaming event in its `response.event` envelope.
    fn envelope(&mut self, response: &mut Streaming, mut inner: Value) -> Value {
        inner["sequence_number"] = json!(response.sequence);
        response.sequence += 1;
        let delegation = response.delegation.clone();
        self.event(json!({"type": "response.event", "delegation_id": delegation, "event": inner}))
    }

    fn function_call(&mut self, name: &str, call_id: &str, arguments: &str) -> Vec<Value> {
        assert_eq!(
            self.owner,
            Owner::Responses,
            "function calls come from Responses delegation; the session has none"
        );
        assert!(
            self.calls.iter().all(|c| c.call_id != call_id),
            "call_id {call_id} was already used"
        );
        let mut events = Vec::new();
        if self.streaming.is_none() {
            let delegation = self.id("deleg");
            self.last_delegation = Some(delegation.clone());
            let response = self.id("resp");
            let offset = self.timeline_ms();
            events.push(self.event(json!({"type": "session.delegation.created",
                "offset_ms": offset, "delegation": {"id": delegation, "type": "delegation",
                "target": "responses", "response_id": response}})));
            events.push(self.begin_response(response, Some(delegation)));
        }
        let mut response = self.streaming.take().expect("a response streams");
        let item_id = self.id("fc");
        let index = response.items;
        response.items += 1;
        let item = |arguments: &str, status: &str| {
            json!({"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
                "arguments": arguments, "status": status})
        };
        events.push(self.envelope(
            &mut response,
            json!({"type": "response.output_item.added", "output_index": index,
                "item": item("", "in_progress")}),
        ));
        events.push(self.envelope(
            &mut response,
            json!({"type": "response.output_item.done", "output_index": index,
                "item": item(arguments, "completed")}),
        ));
        self.streaming = Some(response);
        self.calls.push(Call {
            call_id: call_id.into(),
            answered: false,
        });
        events
    }

    fn finish_delegation(&mut self) -> Vec<Value> {
        let mut response = self
            .streaming
            .take()
            .expect("a delegated response streams (function_call starts one)");
        let (input, output) = (
            320 + 40 * response.items as u64,
            24 * response.items as u64 + 8,
        );
        let usage = json!({"input_tokens": input,
            "input_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output});
        let snapshot = self.snapshot(&response, "completed", usage);
        vec![self.envelope(
            &mut response,
            json!({"type": "response.completed", "response": snapshot}),
        )]
    }

    fn client_delegation(&mut self) -> (String, Vec<Value>) {
        assert_eq!(
            self.owner,
            Owner::Client,
            "client delegations come with client (or no) delegation"
        );
        let id = self.id("deleg");
        self.client_delegations.insert(id.clone());
        let offset = self.timeline_ms();
        let event = self.event(
            json!({"type": "session.delegation.created", "offset_ms": offset,
            "delegation": {"id": id, "type": "delegation", "target": "client"}}),
        );
        (id, vec![event])
    }

    fn transcript(&mut self, kind: &str, text: &str, start_ms: u64, end_ms: u64) -> Value {
        self.event(json!({"type": kind, "delta": text, "start_ms": start_ms, "end_ms": end_ms}))
    }

    fn usage(&mut self, seconds: f64) -> Vec<Value> {
        self.usage_seconds = Some(seconds);
        vec![self.event(json!({"type": "session.usage.updated", "usage": {"seconds": seconds}}))]
    }

    /// `session.closed` (answering `cause` when the client asked); the session is over.
    fn closed(&mut self, reason: &str, cause: Option<&Value>) -> Vec<Value> {
        self.phase = Phase::Closed;
        self.streaming = None;
        let seconds = self
            .usage_seconds
            .unwrap_or(self.timeline_ms() as f64 / 1000.0);
        let closed = json!({"type": "session.closed", "reason": reason,
            "session": self.session, "usage": {"seconds": seconds}});
        vec![match cause {
            Some(cause) => self.answer(cause, closed),
            None => self.event(closed),
        }]
    }
}

/// What the caller says in auto mode, as the model transcribes it; the model's replies.
const CALLER_WORDS: &str = "Hello, where is my order?";
const REPLY_WORDS: &str = "Your order shipped today and arrives on Friday.";
const GOODBYE_WORDS: &str = "Thanks for calling, goodbye.";

/// Auto mode: the model on its own, over the same session state as a test's.
impl Live {
    /// What the model does about a client event the session accepted.
    fn auto_heard(&mut self, event: &Value, auto: &AutoLive) -> Vec<Value> {
        if self.phase != Phase::Started {
            return vec![];
        }
        match event["type"].as_str().unwrap_or("") {
            "session.input_audio.append" => {
                let audio = STANDARD
                    .decode(event["audio"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                // The timeline already counts this append.
                let mut at = self.timeline_ms().saturating_sub(audio.len() as u64 / 8);
                let mut events = Vec::new();
                for chunk in audio.chunks(160) {
                    let heard =
                        self.speaker
                            .vad
                            .hear(chunk, auto.voice.is_speech, auto.voice.silence_ms);
                    at += chunk.len() as u64 / 8;
                    match heard {
                        Some(Heard::Started) => {
                            self.speaker.heard_from_ms = at - chunk.len() as u64 / 8;
                            // Talked over, the model stops itself (no cancel exists).
                            self.speaker.left = 0;
                        }
                        Some(Heard::Stopped) => {
                            let end = at.saturating_sub(auto.voice.silence_ms);
                            events.extend(self.answer_caller(auto, end));
                        }
                        None => {}
                    }
                }
                events
            }
            // Speakable context (the greeting's "speak first"): the model speaks.
            "session.commentary.append" => {
                if self.speaker.left == 0 && !self.speaker.said_goodbye {
                    self.speak(auto);
                }
                vec![]
            }
            "response.item.create" => {
                let call_id = event["item"]["call_id"].as_str().unwrap_or("");
                if let Some(sent) = self.speaker.tool_sent.remove(call_id) {
                    if let Some(hook) = &auto.voice.tool_answered {
                        hook(sent.elapsed());
                    }
                }
                vec![]
            }
            // The backend answers the outputs at once: its response completes, calling nothing.
            "response.create" => self.finish_delegation(),
            _ => vec![],
        }
    }

    /// The caller's utterance ended at `end_ms`: its transcript, the tool call when there is
    /// one, and a reply (from the next delta on).
    fn answer_caller(&mut self, auto: &AutoLive, end_ms: u64) -> Vec<Value> {
        let from = self.speaker.heard_from_ms;
        let mut events = vec![self.transcript(
            "session.input_transcript.delta",
            CALLER_WORDS,
            from,
            end_ms.max(from),
        )];
        if self.speaker.said_goodbye {
            return events;
        }
        if let (Some(tool), Owner::Responses) = (&auto.voice.tool, self.owner) {
            let call_id = self.id("call");
            self.speaker
                .tool_sent
                .insert(call_id.clone(), Instant::now());
            events.extend(self.function_call(tool, &call_id, "{}"));
            events.extend(self.finish_delegation());
        }
        self.speak(auto);
        events
    }

    fn speak(&mut self, auto: &AutoLive) {
        self.speaker.left = auto.voice.deltas_per_reply;
        self.speaker.replies += 1;
    }

    /// The next delta of the stream (silence, or the reply's next one, stamped), and what
    /// goes with it: the reply's transcript at its start, the goodbye's `end_call` at its end.
    fn auto_tick(&mut self, auto: &AutoLive, silence: &str) -> Vec<String> {
        let voice = &auto.voice;
        if self.speaker.left == 0 {
            return vec![silence.to_string()];
        }
        let goodbye = auto.goodbye_after == Some(self.speaker.replies);
        let mut out = Vec::with_capacity(2);
        if self.speaker.left == voice.deltas_per_reply {
            let at = self.timeline_ms();
            let ms = (voice.deltas_per_reply * voice.delta.len() / 8) as u64;
            let words = if goodbye { GOODBYE_WORDS } else { REPLY_WORDS };
            let kind = "session.output_transcript.delta";
            out.push(self.transcript(kind, words, at, at + ms).to_string());
        }
        let mut delta = voice.delta.clone();
        (voice.stamp)(&mut delta);
        out.push(
            json!({"type": "session.output_audio.delta", "delta": STANDARD.encode(&delta)})
                .to_string(),
        );
        self.speaker.left -= 1;
        if self.speaker.left == 0 && goodbye && self.owner == Owner::Responses {
            self.speaker.said_goodbye = true;
            let call_id = self.id("call");
            let mut events = self.function_call("end_call", &call_id, r#"{"reason":"goodbye"}"#);
            events.extend(self.finish_delegation());
            out.extend(events.iter().map(Value::to_string));
        }
        out
    }
}

/// A `tool_choice` naming a function must name one of the function tools.
fn tool_choice_names_a_tool(responses: &Value, path: &str) -> Result<(), Refusal> {
    let choice = &responses["tool_choice"];
    if choice["type"] != "function" {
        return Ok(());
    }
    let name = choice["name"].as_str().unwrap_or("");
    let tools = responses["tools"].as_array().map_or(&[][..], Vec::as_slice);
    if tools
        .iter()
        .any(|t| t["type"] == "function" && t["name"] == name)
    {
        return Ok(());
    }
    Err(Refusal {
        code: "invalid_value",
        message: format!("Tool choice '{name}' not found in 'tools' parameter."),
        param: Some(format!("{path}.tool_choice")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phone bridge's `session.start` (the shape in `shared/gpt-live.md`).
    fn start_event() -> Value {
        json!({"type": "session.start", "event_id": "start_CA1", "session": {
            "model": "gpt-live-1",
            "instructions": "You are the phone assistant for Acme. Keep replies short.",
            "audio": {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}},
            "delegation": {"type": "responses", "responses": {
                "model": "gpt-5.5",
                "instructions": "Call end_call only after the goodbye.",
                "tools": [
                    {"type": "function", "name": "end_call", "description": "Hang up.",
                     "parameters": {"type": "object", "properties": {"reason": {"type": "string"}},
                                    "required": [], "additionalProperties": false}},
                    {"type": "function", "name": "transfer_call", "strict": true,
                     "parameters": {"type": "object", "properties": {"target": {"type": "string"}},
                                    "required": ["target"], "additionalProperties": false}}
                ],
                "tool_choice": "auto",
                "parallel_tool_calls": false}},
            "store": false}})
    }

    /// `event` with `value` at the JSON pointer `at` (its parent must exist), or without it.
    fn with(mut event: Value, at: &str, value: Option<Value>) -> Value {
        let (parent, key) = at.rsplit_once('/').expect("a pointer");
        let parent = event.pointer_mut(parent).expect("the parent exists");
        match (parent, value) {
            (Value::Array(items), Some(value)) => items[key.parse::<usize>().unwrap()] = value,
            (Value::Object(map), Some(value)) => {
                map.insert(key.into(), value);
            }
            (Value::Object(map), None) => {
                map.remove(key);
            }
            _ => panic!("cannot set {at}"),
        }
        event
    }

    fn started_with(start: &Value) -> Live {
        let mut live = Live::default();
        let events = live.client_event(start);
        assert_eq!(events[0]["type"], "session.started", "{events:?}");
        live
    }

    fn started() -> Live {
        started_with(&start_event())
    }

    /// The code and param of the one `error` answering `event`.
    fn refused(live: &mut Live, event: &Value) -> (String, Option<String>) {
        let events = live.client_event(event);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["type"], "error", "{events:?}");
        let error = &events[0]["error"];
        assert_eq!(error["type"], "invalid_request_error");
        (
            error["code"].as_str().unwrap().to_string(),
            error["param"].as_str().map(str::to_string),
        )
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    fn append(kind: &str, content: &str) -> Value {
        json!({"type": kind, "event_id": "ap1", "delegation_id": null, "content": content})
    }

    fn output(call_id: &str) -> Value {
        json!({"type": "response.item.create", "item": {"type": "function_call_output",
            "call_id": call_id, "output": "{\"ok\":true}"}})
    }

    #[test]
    fn a_valid_start_is_answered_with_the_resolved_session() {
        let mut live = Live::default();
        let events = live.client_event(&start_event());
        assert_eq!(types(&events), ["session.started"]);
        let started = &events[0];
        assert_eq!(started["client_event_id"], "start_CA1");
        assert!(started["event_id"].is_string());
        let session = &started["session"];
        assert!(session["id"].as_str().unwrap().starts_with("live_"));
        let expires = session["expires_at"].as_u64().unwrap();
        assert!(expires.abs_diff(now() + SESSION_SECONDS) <= 5);
        assert_eq!(session["model"], "gpt-live-1");
        assert_eq!(session["status"], "active");
        assert_eq!(
            session["audio"]["format"],
            json!({"type": "audio/pcmu", "rate": 8000})
        );
        assert_eq!(session["audio"]["output"]["voice"], "marin");
        assert_eq!(
            session["delegation"],
            start_event()["session"]["delegation"]
        );
        assert_eq!(
            session["instructions"],
            start_event()["session"]["instructions"]
        );
        assert_eq!(session["store"], false);
        assert_eq!(live.phase, Phase::Started);
        assert!(live.close.is_none());
    }

    #[test]
    fn other_valid_starts_are_accepted() {
        let no_voice = with(start_event(), "/session/audio/output", None);
        let live = Live::default().client_event(&no_voice);
        assert_eq!(
            live[0]["session"]["audio"]["output"]["voice"],
            DEFAULT_VOICE
        );
        for start in [
            with(start_event(), "/session/model", Some(json!("gpt-live-1.1"))),
            with(
                start_event(),
                "/session/audio/output/voice",
                Some(json!({"id": "voice_123"})),
            ),
            with(
                start_event(),
                "/session/delegation",
                Some(json!({"type": "client"})),
            ),
            with(start_event(), "/session/delegation", Some(Value::Null)),
            with(start_event(), "/session/delegation", None),
            with(start_event(), "/session/instructions", None),
            with(start_event(), "/session/store", Some(json!(true))),
            with(start_event(), "/event_id", None),
            with(
                start_event(),
                "/session/input",
                Some(
                    json!([{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                    {"role": "assistant", "type": "message", "content": [{"text": "Hello"}]}]),
                ),
            ),
            // Hosted tools are their `type`; a shell tool may say where it runs.
            with(
                start_event(),
                "/session/delegation/responses/tools/1",
                Some(json!({"type": "mcp"})),
            ),
            with(
                start_event(),
                "/session/delegation/responses/tools/1",
                Some(
                    json!({"type": "shell", "environment": {"type": "container_auto",
                    "memory_limit": "4g", "network_policy": {"type": "disabled"}}}),
                ),
            ),
            with(
                start_event(),
                "/session/delegation/responses/tool_choice",
                Some(json!({"type": "function", "name": "end_call"})),
            ),
            with(
                start_event(),
                "/session/delegation/responses/tool_choice",
                Some(json!({"type": "allowed_tools", "mode": "auto",
                    "tools": [{"type": "function", "name": "end_call"}]})),
            ),
            with(
                start_event(),
                "/session/delegation/responses/reasoning",
                Some(json!({"effort": "low"})),
            ),
        ] {
            started_with(&start);
        }
    }

    #[test]
    fn nothing_but_session_start_before_session_started() {
        let mut live = Live::default();
        for event in [
            json!({"type": "session.input_audio.append", "audio": "//8="}),
            append("session.thinking.append", "x"),
            append("session.commentary.append", "x"),
            append("session.instructions.append", "x"),
            json!({"type": "session.update", "session": {}}),
            output("call_1"),
            json!({"type": "response.create"}),
            json!({"type": "session.close"}),
        ] {
            assert_eq!(
                refused(&mut live, &event).0,
                "session_not_started",
                "{event}"
            );
            assert!(live.close.is_none(), "the socket stays open");
        }
        assert_eq!(live.phase, Phase::Waiting);
        let events = live.client_event(&start_event());
        assert_eq!(types(&events), ["session.started"]);
    }

    #[test]
    fn a_second_start_is_refused_and_the_session_goes_on() {
        let mut live = started();
        let (code, _) = refused(&mut live, &start_event());
        assert_eq!(code, "session_already_started");
        assert!(live.close.is_none());
        assert_eq!(live.phase, Phase::Started);
    }

    #[test]
    fn a_start_the_sdk_config_refuses_fails_then_the_socket_closes() {
        let tools = "/session/delegation/responses/tools";
        let long = "x".repeat(INSTRUCTIONS_TOKEN_LIMIT * 4 + 1);
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                with(start_event(), "/bogus", Some(json!(1))),
                "unknown_parameter",
                "bogus",
            ),
            (
                with(start_event(), "/session/voice", Some(json!("marin"))),
                "unknown_parameter",
                "session.voice",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/output/speed",
                    Some(json!(1.0)),
                ),
                "unknown_parameter",
                "session.audio.output.speed",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/format/channels",
                    Some(json!(1)),
                ),
                "unknown_parameter",
                "session.audio.format.channels",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation/responses/temperature",
                    Some(json!(0.2)),
                ),
                "unknown_parameter",
                "session.delegation.responses.temperature",
            ),
            (
                with(
                    start_event(),
                    &format!("{tools}/0/bogus"),
                    Some(json!(true)),
                ),
                "unknown_parameter",
                "session.delegation.responses.tools[0].bogus",
            ),
            (
                with(
                    start_event(),
                    &format!("{tools}/1"),
                    Some(json!({"type": "mcp", "server_label": "crm", "server_url": "https://x"})),
                ),
                "unknown_parameter",
                "session.delegation.responses.tools[1].server_label",
            ),
            (
                with(start_event(), "/session/model", None),
                "missing_required_parameter",
                "session.model",
            ),
            (
                with(start_event(), "/session/model", Some(json!("gpt-realtime"))),
                "model_not_found",
                "session.model",
            ),
            (
                with(start_event(), "/session/model", Some(json!(1))),
                "invalid_type",
                "session.model",
            ),
            (
                with(start_event(), "/session/audio", None),
                "missing_required_parameter",
                "session.audio.format",
            ),
            (
                with(start_event(), "/session/audio/format", None),
                "missing_required_parameter",
                "session.audio.format",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/format",
                    Some(json!({"type": "audio/pcm", "rate": 24000})),
                ),
                "invalid_value",
                "session.audio.format.type",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/format",
                    Some(json!({"type": "audio/pcma", "rate": 8000})),
                ),
                "invalid_value",
                "session.audio.format.type",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/format/rate",
                    Some(json!(16000)),
                ),
                "invalid_value",
                "session.audio.format.rate",
            ),
            (
                with(start_event(), "/session/audio/format/rate", None),
                "missing_required_parameter",
                "session.audio.format.rate",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/format/type",
                    Some(json!("g711_ulaw")),
                ),
                "invalid_value",
                "session.audio.format.type",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/output/voice",
                    Some(json!("nova")),
                ),
                "invalid_value",
                "session.audio.output.voice",
            ),
            (
                with(
                    start_event(),
                    "/session/audio/output/voice",
                    Some(json!({"id": "v1", "name": "x"})),
                ),
                "unknown_parameter",
                "session.audio.output.voice.name",
            ),
            (
                with(start_event(), "/session/instructions", Some(json!(42))),
                "invalid_type",
                "session.instructions",
            ),
            (
                with(start_event(), "/session/instructions", Some(json!(long))),
                "instructions_too_long",
                "session.instructions",
            ),
            (
                with(start_event(), "/session/delegation/responses/model", None),
                "missing_required_parameter",
                "session.delegation.responses.model",
            ),
            (
                with(start_event(), "/session/delegation/responses", None),
                "missing_required_parameter",
                "session.delegation.responses",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation/type",
                    Some(json!("backend")),
                ),
                "invalid_value",
                "session.delegation.type",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation",
                    Some(json!({"type": "decisions", "decisions": {}})),
                ),
                "unsupported_by_fake",
                "session.delegation.decisions",
            ),
            (
                with(
                    start_event(),
                    &format!("{tools}/0/name"),
                    Some(json!("end call")),
                ),
                "invalid_value",
                "session.delegation.responses.tools[0].name",
            ),
            (
                with(
                    start_event(),
                    &format!("{tools}/0/name"),
                    Some(json!("x".repeat(65))),
                ),
                "invalid_value",
                "session.delegation.responses.tools[0].name",
            ),
            (
                with(
                    start_event(),
                    &format!("{tools}/0/parameters"),
                    Some(json!("{}")),
                ),
                "invalid_type",
                "session.delegation.responses.tools[0].parameters",
            ),
            (
                with(
                    start_event(),
                    &format!("{tools}/0/type"),
                    Some(json!("functions")),
                ),
                "invalid_value",
                "session.delegation.responses.tools[0].type",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation/responses/tool_choice",
                    Some(json!({"type": "function", "name": "hang_up"})),
                ),
                "invalid_value",
                "session.delegation.responses.tool_choice",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation/responses/tool_choice",
                    Some(json!("sometimes")),
                ),
                "invalid_value",
                "session.delegation.responses.tool_choice",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation/responses/parallel_tool_calls",
                    Some(json!("no")),
                ),
                "invalid_type",
                "session.delegation.responses.parallel_tool_calls",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation/responses/reasoning",
                    Some(json!({"effort": "max"})),
                ),
                "invalid_value",
                "session.delegation.responses.reasoning.effort",
            ),
            (
                with(
                    start_event(),
                    "/session/delegation/responses/max_output_tokens",
                    Some(json!(-1)),
                ),
                "invalid_value",
                "session.delegation.responses.max_output_tokens",
            ),
            (
                with(start_event(), "/session/triggers", Some(json!([]))),
                "unsupported_by_fake",
                "session.triggers",
            ),
            (
                with(
                    start_event(),
                    "/session/input",
                    Some(json!([{"role": "user", "content": [
                {"text": "a"}, {"text": "b"}]}])),
                ),
                "array_above_max_length",
                "session.input[0].content",
            ),
            (
                with(
                    start_event(),
                    "/session/input",
                    Some(json!([{"role": "system",
                "content": [{"text": "a"}]}])),
                ),
                "invalid_value",
                "session.input[0].role",
            ),
            (
                with(start_event(), "/event_id", Some(json!(5))),
                "invalid_type",
                "event_id",
            ),
            (
                with(start_event(), "/session", Some(json!("gpt-live-1"))),
                "invalid_type",
                "session",
            ),
        ];
        for (start, want_code, want_param) in cases {
            let mut live = Live::default();
            let events = live.client_event(&start);
            assert_eq!(types(&events), ["error"], "{start}");
            let error = &events[0];
            assert_eq!(
                (
                    error["error"]["code"].as_str(),
                    error["error"]["param"].as_str()
                ),
                (Some(want_code), Some(want_param)),
                "{start}: {error}"
            );
            let event_id = start["event_id"]
                .as_str()
                .map_or(Value::Null, |id| json!(id));
            assert_eq!(error["client_event_id"], event_id);
            assert_eq!(
                live.close,
                Some((FAILED_START_CLOSE, "session.start failed"))
            );
            assert_eq!(live.phase, Phase::Closed);
        }
    }

    #[test]
    fn a_held_start_is_answered_on_release_and_nothing_else_is_meanwhile() {
        let mut live = Live {
            hold: true,
            ..Live::default()
        };
        assert!(live.client_event(&start_event()).is_empty());
        assert_eq!(live.phase, Phase::Held);
        let audio = json!({"type": "session.input_audio.append", "audio": "//8="});
        assert_eq!(refused(&mut live, &audio).0, "session_not_started");
        assert_eq!(
            refused(&mut live, &start_event()).0,
            "session_already_started"
        );
        assert!(live.close.is_none());
        let released = live.release();
        assert_eq!(types(&released), ["session.started"]);
        assert_eq!(released[0]["client_event_id"], "start_CA1");
        assert!(live.release().is_empty(), "one start, one answer");
        assert!(live.client_event(&audio).is_empty());
    }

    #[test]
    fn caller_audio_is_base64_and_not_acknowledged() {
        let mut live = started();
        let cases = [
            (
                json!({"type": "session.input_audio.append"}),
                "missing_required_parameter",
            ),
            (
                json!({"type": "session.input_audio.append", "audio": 5}),
                "invalid_type",
            ),
            (
                json!({"type": "session.input_audio.append", "audio": "not base64!"}),
                "invalid_value",
            ),
        ];
        for (event, want) in cases {
            assert_eq!(
                refused(&mut live, &event),
                (want.into(), Some("audio".into()))
            );
        }
        let frame = json!({"type": "session.input_audio.append", "event_id": "a1",
            "audio": STANDARD.encode([0xffu8; 160])});
        assert!(live.client_event(&frame).is_empty());
        // 20 ms of mu-law on the session timeline.
        let ack = live.client_event(&append("session.thinking.append", "The caller pressed 1."));
        assert_eq!(
            (ack[0]["start_ms"].as_u64(), ack[0]["end_ms"].as_u64()),
            (Some(20), Some(20))
        );
    }

    #[test]
    fn appends_are_checked_and_acknowledged() {
        for kind in [
            "session.thinking.append",
            "session.commentary.append",
            "session.instructions.append",
        ] {
            let mut live = started();
            let ack = live.client_event(&append(kind, &"x".repeat(APPEND_TOKEN_LIMIT * 4)));
            let acked = kind.replace(".append", ".appended");
            assert_eq!(types(&ack), [acked.as_str()]);
            assert_eq!(ack[0]["client_event_id"], "ap1");
            assert_eq!(ack[0]["start_ms"], 0);
            assert_eq!(ack[0]["end_ms"], 0);
            let cases = [
                (
                    with(append(kind, "x"), "/delegation_id", None),
                    "missing_required_parameter",
                    "delegation_id",
                ),
                (
                    with(append(kind, "x"), "/delegation_id", Some(json!(1))),
                    "invalid_type",
                    "delegation_id",
                ),
                // Responses delegation takes no delegation_id.
                (
                    with(append(kind, "x"), "/delegation_id", Some(json!("deleg_1"))),
                    "invalid_value",
                    "delegation_id",
                ),
                (
                    with(append(kind, "x"), "/content", None),
                    "missing_required_parameter",
                    "content",
                ),
                (
                    with(
                        append(kind, "x"),
                        "/content",
                        Some(json!([{"type": "text"}])),
                    ),
                    "invalid_type",
                    "content",
                ),
                (append(kind, ""), "invalid_value", "content"),
                (
                    append(kind, &"x".repeat(APPEND_TOKEN_LIMIT * 4 + 1)),
                    "content_too_long",
                    "content",
                ),
                (
                    with(append(kind, "x"), "/role", Some(json!("user"))),
                    "unknown_parameter",
                    "role",
                ),
            ];
            for (event, code, param) in cases {
                assert_eq!(
                    refused(&mut live, &event),
                    (code.into(), Some(param.into())),
                    "{event}"
                );
            }
        }
    }

    #[test]
    fn with_client_delegation_appends_name_a_delegation_and_response_events_are_refused() {
        let start = with(
            start_event(),
            "/session/delegation",
            Some(json!({"type": "client"})),
        );
        let mut live = started_with(&start);
        let unknown = with(
            append("session.commentary.append", "x"),
            "/delegation_id",
            Some(json!("deleg_9")),
        );
        assert_eq!(refused(&mut live, &unknown).0, "delegation_not_found");
        let (id, events) = live.client_delegation();
        assert_eq!(events[0]["delegation"]["target"], "client");
        assert!(events[0]["delegation"].get("response_id").is_none());
        let known = with(
            append("session.commentary.append", "Order 123 shipped."),
            "/delegation_id",
            Some(json!(id)),
        );
        assert_eq!(
            types(&live.client_event(&known)),
            ["session.commentary.appended"]
        );
        for event in [json!({"type": "response.create"}), output("call_1")] {
            assert_eq!(
                refused(&mut live, &event).0,
                "responses_delegation_required"
            );
        }
    }

    #[test]
    fn a_delegated_response_streams_its_calls_then_waits_for_every_output() {
        let mut live = started();
        let events = live.function_call("end_call", "call_1", "{\"reason\":\"goodbye\"}");
        assert_eq!(
            types(&events),
            [
                "session.delegation.created",
                "response.event",
                "response.event",
                "response.event"
            ]
        );
        let delegation = &events[0]["delegation"];
        assert_eq!(delegation["type"], "delegation");
        assert_eq!(delegation["target"], "responses");
        let inner: Vec<&Value> = events[1..].iter().map(|e| &e["event"]).collect();
        assert_eq!(
            inner
                .iter()
                .map(|e| e["type"].as_str().unwrap())
                .collect::<Vec<_>>(),
            [
                "response.created",
                "response.output_item.added",
                "response.output_item.done"
            ]
        );
        assert_eq!(inner[0]["response"]["id"], delegation["response_id"]);
        assert_eq!(inner[0]["response"]["status"], "in_progress");
        assert_eq!(inner[0]["response"]["model"], "gpt-5.5");
        for event in &events[1..] {
            assert_eq!(event["delegation_id"], delegation["id"]);
        }
        let item = &inner[2]["item"];
        assert_eq!(item["type"], "function_call");
        assert!(item["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(item["call_id"], "call_1");
        assert_eq!(item["name"], "end_call");
        assert_eq!(item["arguments"], "{\"reason\":\"goodbye\"}");
        assert_eq!(item["status"], "completed");
        assert_eq!(inner[1]["item"]["id"], item["id"]);

        // A second call in the same response: no new delegation.
        let second = live.function_call("transfer_call", "call_2", "{\"target\":\"sales\"}");
        assert_eq!(types(&second), ["response.event", "response.event"]);
        assert_eq!(second[1]["event"]["output_index"], 1);

        let create = json!({"type": "response.create", "event_id": "rc1"});
        assert_eq!(refused(&mut live, &create).0, "response_in_progress");

        let done = live.finish_delegation();
        let completed = &done[0]["event"];
        assert_eq!(completed["type"], "response.completed");
        assert_eq!(completed["response"]["status"], "completed");
        let usage = &completed["response"]["usage"];
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
            )
        );

        // Outputs: one per call the fake emitted; the batch complete before response.create.
        assert_eq!(
            refused(&mut live, &create).0,
            "function_call_outputs_missing"
        );
        assert!(live.client_event(&output("call_1")).is_empty());
        assert_eq!(
            refused(&mut live, &create).0,
            "function_call_outputs_missing"
        );
        assert_eq!(
            refused(&mut live, &output("call_9")),
            (
                "function_call_not_found".into(),
                Some("item.call_id".into())
            )
        );
        assert_eq!(
            refused(&mut live, &output("call_1")),
            (
                "duplicate_function_call_output".into(),
                Some("item.call_id".into())
            )
        );
        assert!(live.client_event(&output("call_2")).is_empty());
        let next = live.client_event(&create);
        assert_eq!(types(&next), ["response.event"]);
        assert_eq!(next[0]["client_event_id"], "rc1");
        assert_eq!(next[0]["event"]["type"], "response.created");
        assert_ne!(
            next[0]["event"]["response"]["id"],
            inner[0]["response"]["id"]
        );
        assert_eq!(next[0]["delegation_id"], delegation["id"]);
        // The continuation streams: a call in it opens no new delegation.
        assert_eq!(
            types(&live.function_call("end_call", "call_3", "{}")),
            ["response.event"; 2]
        );
    }

    #[test]
    fn response_items_are_outputs_or_messages() {
        let mut live = started();
        live.function_call("end_call", "call_1", "{}");
        let item = |item: Value| json!({"type": "response.item.create", "item": item});
        for accepted in [
            item(json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "The caller pressed 1."}]})),
            item(json!({"role": "user", "content": "Look up order 123."})),
        ] {
            assert!(live.client_event(&accepted).is_empty(), "{accepted}");
        }
        let fco = json!({"type": "function_call_output", "call_id": "call_1", "output": "ok"});
        let cases = [
            (
                item(
                    json!({"type": "function_call", "call_id": "call_1", "name": "x",
                "arguments": "{}"}),
                ),
                "invalid_value",
                "item.type",
            ),
            (
                item(with(fco.clone(), "/output", Some(json!({"ok": true})))),
                "invalid_type",
                "item.output",
            ),
            (
                item(with(fco.clone(), "/bogus", Some(json!(1)))),
                "unknown_parameter",
                "item.bogus",
            ),
            (
                item(with(fco.clone(), "/call_id", None)),
                "missing_required_parameter",
                "item.call_id",
            ),
            (
                item(json!({"type": "message", "role": "user",
                "content": [{"type": "input_image", "image_url": "x"}]})),
                "invalid_value",
                "item.content[0].type",
            ),
            (
                item(json!({"type": "message", "role": "caller", "content": "x"})),
                "invalid_value",
                "item.role",
            ),
            (
                json!({"type": "response.item.create"}),
                "missing_required_parameter",
                "item",
            ),
        ];
        for (event, code, param) in cases {
            assert_eq!(
                refused(&mut live, &event),
                (code.into(), Some(param.into())),
                "{event}"
            );
        }
        assert!(live.client_event(&item(fco)).is_empty());
    }

    #[test]
    fn session_close_answers_session_closed_then_the_server_closes_1000() {
        let mut live = started();
        let second = json!({"type": "session.input_audio.append",
            "audio": STANDARD.encode([0xffu8; 8000])});
        live.client_event(&second);
        let events = live.client_event(&json!({"type": "session.close", "event_id": "bye"}));
        assert_eq!(types(&events), ["session.closed"]);
        let closed = &events[0];
        assert_eq!(closed["reason"], "close_requested");
        assert_eq!(closed["client_event_id"], "bye");
        assert_eq!(closed["usage"]["seconds"], 1.0);
        assert_eq!(closed["session"]["status"], "active");
        assert!(closed["session"]["id"]
            .as_str()
            .unwrap()
            .starts_with("live_"));
        assert_eq!(live.close, Some((1000, "session closed")));
        assert_eq!(refused(&mut live, &second).0, "session_closed");

        // The usage reported last is the final one.
        let mut live = started();
        assert_eq!(live.usage(12.5)[0]["usage"]["seconds"], 12.5);
        let events = live.closed("expired", None);
        assert_eq!(events[0]["usage"]["seconds"], 12.5);
        assert_eq!(events[0]["reason"], "expired");
    }

    #[test]
    fn unknown_events_are_refused_with_the_error_shape() {
        let mut live = started();
        let events = live.client_event(&json!({"type": "input_audio_buffer.append",
            "event_id": "ev1", "audio": "AA=="}));
        let error = &events[0];
        assert_eq!(error["type"], "error");
        assert!(error["event_id"].is_string());
        assert_eq!(error["client_event_id"], "ev1");
        assert_eq!(error["error"]["client_event_id"], "ev1");
        assert_eq!(error["error"]["code"], "invalid_value");
        assert_eq!(error["error"]["param"], "type");
        assert!(error["error"]["message"].is_string());
        let events = live.client_event(&json!({"type": "conversation.item.truncate"}));
        assert_eq!(events[0]["client_event_id"], Value::Null);
        assert_eq!(events[0]["error"]["client_event_id"], Value::Null);
        assert_eq!(
            refused(&mut live, &json!({"event_id": "x"})),
            ("missing_required_parameter".into(), Some("type".into()))
        );
        // Before the start an unknown type is still an unknown type.
        let (code, _) = refused(&mut Live::default(), &json!({"type": "response.cancel"}));
        assert_eq!(code, "invalid_value");
        assert_eq!(refused(&mut live, &json!([1])).0, "invalid_value");
        // Known to the SDK, not to this fake.
        let fixture = json!({"type": "session.output_audio.fixture.play", "audio": "AA=="});
        assert_eq!(refused(&mut live, &fixture).0, "unsupported_by_fake");
        let decision = json!({"type": "decision.create"});
        assert_eq!(
            refused(&mut live, &decision).0,
            "decisions_delegation_required"
        );
        // Each refusal left the session going.
        assert_eq!(live.phase, Phase::Started);
        assert!(live.close.is_none());
    }

    #[test]
    fn session_update_changes_the_backend_within_its_delegation_type() {
        let mut live = started();
        let update = |session: Value| json!({"type": "session.update", "session": session});
        let tools = json!([{"type": "function", "name": "end_call"}]);
        let events = live.client_event(&update(json!({"delegation": {"type": "responses",
            "responses": {"tools": tools, "tool_choice": "required"}}})));
        assert_eq!(types(&events), ["session.updated"]);
        let responses = &events[0]["session"]["delegation"]["responses"];
        assert_eq!(responses["tools"], tools);
        assert_eq!(
            responses["model"], "gpt-5.5",
            "omitted settings keep their values"
        );
        let cases = [
            (
                update(json!({"delegation": {"type": "client"}})),
                "invalid_value",
                "session.delegation.type",
            ),
            (
                update(json!({"instructions": "x"})),
                "unknown_parameter",
                "session.instructions",
            ),
            (
                update(json!({"delegation": {"type": "responses", "responses": {"bogus": 1}}})),
                "unknown_parameter",
                "session.delegation.responses.bogus",
            ),
            (
                update(json!({"triggers": []})),
                "unsupported_by_fake",
                "session.triggers",
            ),
        ];
        for (event, code, param) in cases {
            assert_eq!(
                refused(&mut live, &event),
                (code.into(), Some(param.into())),
                "{event}"
            );
        }
    }

    #[test]
    fn mute_and_unmute_are_acknowledged() {
        let mut live = started();
        let muted =
            live.client_event(&json!({"type": "session.input_audio.mute", "event_id": "m"}));
        assert_eq!(types(&muted), ["session.input_audio.muted"]);
        assert_eq!(muted[0]["client_event_id"], "m");
        let unmuted = live.client_event(&json!({"type": "session.input_audio.unmute"}));
        assert_eq!(types(&unmuted), ["session.input_audio.unmuted"]);
    }

    // --- auto mode (callsim) -----------------------------------------------------------------

    /// Loud chunks are speech (the first byte says it).
    fn loud(chunk: &[u8]) -> bool {
        chunk[0] != SILENCE
    }

    /// 100 ms deltas, 3 a reply; a VAD that waits 100 ms; stamps that write a counter.
    fn auto(tool: Option<&str>, goodbye_after: Option<usize>) -> (AutoLive, Arc<Mutex<Vec<u64>>>) {
        let stamped = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let took = answered.clone();
        let voice = AutoVoice {
            delta: vec![0x10; 800],
            deltas_per_reply: 3,
            delta_every: Duration::from_millis(100),
            is_speech: loud,
            silence_ms: 100,
            stamp: Arc::new(move |delta: &mut [u8]| {
                delta[0] = stamped.fetch_add(1, Ordering::Relaxed) as u8 + 1;
            }),
            tool: tool.map(str::to_string),
            tool_answered: Some(Arc::new(move |d: Duration| {
                took.lock().unwrap().push(d.as_micros() as u64)
            })),
        };
        let auto = AutoLive {
            voice,
            goodbye_after,
        };
        (auto, answered)
    }

    /// What run_session does with a client event in auto mode.
    fn hear(live: &mut Live, event: &Value, auto: &AutoLive) -> Vec<Value> {
        let mut events = live.client_event(event);
        if !events.iter().any(|e| e["type"] == "error") {
            events.extend(live.auto_heard(event, auto));
        }
        events
    }

    fn audio(byte: u8, ms: usize) -> Value {
        json!({"type": "session.input_audio.append", "audio": STANDARD.encode(vec![byte; ms * 8])})
    }

    fn ticks(live: &mut Live, auto: &AutoLive, n: usize) -> Vec<Value> {
        let silence = json!({"type": "session.output_audio.delta",
            "delta": STANDARD.encode([SILENCE; 800])})
        .to_string();
        (0..n)
            .flat_map(|_| live.auto_tick(auto, &silence))
            .map(|t| serde_json::from_str(&t).unwrap())
            .collect()
    }

    fn first_byte(delta: &Value) -> u8 {
        STANDARD.decode(delta["delta"].as_str().unwrap()).unwrap()[0]
    }

    #[test]
    fn auto_streams_silence_and_answers_an_utterance_with_a_stamped_reply_and_its_tool() {
        let (auto, answered) = auto(Some("lookup_order"), None);
        let mut live = started();
        // Nothing heard yet: silence, one delta a tick, nothing else.
        let silent = ticks(&mut live, &auto, 2);
        assert_eq!(types(&silent), ["session.output_audio.delta"; 2]);
        assert!(silent.iter().all(|d| first_byte(d) == SILENCE));

        assert!(hear(&mut live, &audio(0x10, 200), &auto).is_empty());
        assert!(hear(&mut live, &audio(SILENCE, 60), &auto).is_empty());
        // 100 ms of silence after the speech: the utterance ended; the backend calls the tool.
        let heard = hear(&mut live, &audio(SILENCE, 60), &auto);
        assert_eq!(
            types(&heard),
            [
                "session.input_transcript.delta",
                "session.delegation.created",
                "response.event",
                "response.event",
                "response.event",
                "response.event"
            ]
        );
        assert_eq!(
            (heard[0]["start_ms"].as_u64(), heard[0]["end_ms"].as_u64()),
            (Some(0), Some(200))
        );
        let inner: Vec<&str> = heard[2..]
            .iter()
            .map(|e| e["event"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            inner,
            [
                "response.created",
                "response.output_item.added",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let call = &heard[4]["event"]["item"];
        assert_eq!(call["name"], "lookup_order");
        let call_id = call["call_id"].as_str().unwrap().to_string();

        // The reply replaces the silence: its transcript, then its 3 stamped deltas.
        let reply = ticks(&mut live, &auto, 4);
        assert_eq!(
            types(&reply),
            [
                "session.output_transcript.delta",
                "session.output_audio.delta",
                "session.output_audio.delta",
                "session.output_audio.delta",
                "session.output_audio.delta"
            ]
        );
        assert_eq!(reply[0]["delta"], REPLY_WORDS);
        let firsts: Vec<u8> = reply[1..].iter().map(first_byte).collect();
        assert_eq!(firsts, [1, 2, 3, SILENCE]);

        // The agent answers the call, then continues the response: it completes at once.
        assert!(hear(&mut live, &output(&call_id), &auto).is_empty());
        assert_eq!(answered.lock().unwrap().len(), 1);
        let more = hear(&mut live, &json!({"type": "response.create"}), &auto);
        let inner: Vec<&str> = more
            .iter()
            .map(|e| e["event"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(inner, ["response.created", "response.completed"]);
        assert!(live.streaming.is_none());
    }

    #[test]
    fn auto_stops_when_talked_over_speaks_a_greeting_and_says_goodbye_with_end_call() {
        let (auto, _) = auto(None, Some(2));
        let mut live = started();
        // The greeting (commentary) is spoken.
        let greet = append("session.commentary.append", "Greet the caller now.");
        assert_eq!(
            types(&hear(&mut live, &greet, &auto)),
            ["session.commentary.appended"]
        );
        let spoken = ticks(&mut live, &auto, 2);
        assert_eq!(spoken[0]["type"], "session.output_transcript.delta");
        // The caller talks over it: the rest of it is silence.
        hear(&mut live, &audio(0x10, 20), &auto);
        let after = ticks(&mut live, &auto, 2);
        assert!(after.iter().all(|d| first_byte(d) == SILENCE), "{after:?}");

        // Its end is answered with the second reply, the goodbye, then end_call.
        let heard = hear(&mut live, &audio(SILENCE, 100), &auto);
        assert_eq!(types(&heard), ["session.input_transcript.delta"]);
        let goodbye = ticks(&mut live, &auto, 4);
        assert_eq!(goodbye[0]["delta"], GOODBYE_WORDS);
        let kinds = types(&goodbye);
        assert_eq!(kinds[1..4], ["session.output_audio.delta"; 3]);
        assert_eq!(kinds[4], "session.delegation.created");
        let call = goodbye
            .iter()
            .find(|e| e["event"]["type"] == "response.output_item.done")
            .unwrap();
        assert_eq!(call["event"]["item"]["name"], "end_call");
        assert_eq!(
            goodbye.last().unwrap()["type"],
            "session.output_audio.delta"
        );
        assert_eq!(first_byte(goodbye.last().unwrap()), SILENCE);

        // Said goodbye: another utterance is transcribed, not answered.
        hear(&mut live, &audio(0x10, 20), &auto);
        let heard = hear(&mut live, &audio(SILENCE, 100), &auto);
        assert_eq!(types(&heard), ["session.input_transcript.delta"]);
        assert!(ticks(&mut live, &auto, 2)
            .iter()
            .all(|d| first_byte(d) == SILENCE));
    }

    #[test]
    fn auto_hears_nothing_that_the_session_refused() {
        let (auto, _) = auto(Some("lookup_order"), None);
        let mut live = Live::default();
        // Before session.started: refused, and the VAD never hears it.
        let early = hear(&mut live, &audio(0x10, 200), &auto);
        assert_eq!(early[0]["error"]["code"], "session_not_started");
        assert_eq!(early.len(), 1);
        let mut live = started();
        let unknown = with(audio(0x10, 20), "/bogus", Some(json!(1)));
        let refused = hear(&mut live, &unknown, &auto);
        assert_eq!(refused[0]["error"]["code"], "unknown_parameter");
        // The refused speech was not heard: silence after it ends no utterance.
        assert!(hear(&mut live, &audio(SILENCE, 200), &auto).is_empty());
    }

    // --- over the socket ---------------------------------------------------------------------

    use awc::ws::{Frame, Message};
    use futures_util::{SinkExt, StreamExt};

    type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

    const KEY: &str = "sk-test-live";
    const AGENT: &str = "callvisor-tests/Rust 0.1";

    async fn connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Socket, awc::error::WsClientError> {
        let mut request = awc::Client::new().ws(url);
        for (name, value) in headers {
            request = request.set_header(*name, *value);
        }
        request.connect().await.map(|(_, socket)| socket)
    }

    async fn open(fake: &FakeLive) -> Socket {
        let bearer = format!("Bearer {KEY}");
        connect(
            &fake.url,
            &[("authorization", &bearer), ("user-agent", AGENT)],
        )
        .await
        .expect("the handshake is accepted")
    }

    async fn next(socket: &mut Socket) -> Value {
        match actix_web::rt::time::timeout(PATIENCE, socket.next()).await {
            Ok(Some(Ok(Frame::Text(text)))) => serde_json::from_slice(&text).unwrap(),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    async fn send(socket: &mut Socket, event: &Value) {
        socket
            .send(Message::Text(event.to_string().into()))
            .await
            .unwrap();
    }

    fn status(result: Result<Socket, awc::error::WsClientError>) -> u16 {
        match result {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
            Err(other) => panic!("{other}"),
            Ok(_) => 101,
        }
    }

    #[actix_web::test]
    async fn the_handshake_is_checked_and_recorded() {
        let fake = FakeLive::start_logging(KEY, None);
        let bearer = format!("Bearer {KEY}");
        let good = [("authorization", bearer.as_str()), ("user-agent", AGENT)];
        let base = fake.url.trim_end_matches(PATH).to_string();
        let cases = [
            (format!("{base}/v1/realtime"), &good[..], 400),
            (format!("{}?model=gpt-live-1", fake.url), &good[..], 400),
            (fake.url.clone(), &good[1..], 401),
            (
                fake.url.clone(),
                &[("authorization", "Bearer sk-wrong")][..],
                401,
            ),
            (
                fake.url.clone(),
                &[good[0], ("openai-beta", "realtime=v1")][..],
                400,
            ),
            (fake.url.clone(), &good[..], 101),
        ];
        for (url, headers, want) in cases {
            assert_eq!(
                status(connect(&url, headers).await),
                want,
                "{url} {headers:?}"
            );
        }
        // The body of a refused key, as OpenAI sends it.
        let mut response = awc::Client::new().get(&fake.url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");

        fake.refuse_with(429);
        assert_eq!(status(connect(&fake.url, &good).await), 429);
        fake.refuse_with(503);
        assert_eq!(status(connect(&fake.url, &good).await), 503);
        fake.stop_refusing();
        assert_eq!(status(connect(&fake.url, &good).await), 101);

        let handshakes = fake.handshakes();
        assert_eq!(handshakes.len(), 10);
        assert_eq!(
            handshakes[1].path_and_query,
            "/v1/live/sessions?model=gpt-live-1"
        );
        assert_eq!(handshakes[5].path_and_query, PATH);
        assert_eq!(
            handshakes[5].authorization.as_deref(),
            Some(bearer.as_str())
        );
        assert_eq!(handshakes[5].user_agent.as_deref(), Some(AGENT));
        assert_eq!(handshakes[2].authorization, None);
    }

    #[actix_web::test]
    async fn a_session_over_the_socket_is_captured_and_closed_by_the_server() {
        let log = std::env::temp_dir().join(format!("live-events-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let fake = FakeLive::start_logging(KEY, Some(log.clone().into()));
        let mut socket = open(&fake).await;
        send(&mut socket, &start_event()).await;
        assert_eq!(next(&mut socket).await["type"], "session.started");
        send(&mut socket, &json!({"type": "session.bogus"})).await;
        assert_eq!(next(&mut socket).await["error"]["param"], "type");
        assert_eq!(fake.errors().len(), 1);

        fake.output_audio(&[0xff; 160]).await;
        let delta = next(&mut socket).await;
        assert_eq!(
            delta,
            json!({"type": "session.output_audio.delta",
            "delta": STANDARD.encode([0xffu8; 160])})
        );
        fake.input_transcript("hello", 0, 400).await;
        let transcript = next(&mut socket).await;
        assert_eq!(
            (transcript["delta"].as_str(), transcript["end_ms"].as_u64()),
            (Some("hello"), Some(400))
        );
        fake.function_call("end_call", "call_1", json!({"reason": "goodbye"}))
            .await;
        let mut kinds = Vec::new();
        for _ in 0..4 {
            kinds.push(
                next(&mut socket).await["type"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(kinds[0], "session.delegation.created");

        send(
            &mut socket,
            &json!({"type": "session.close", "event_id": "bye"}),
        )
        .await;
        let closed = next(&mut socket).await;
        assert_eq!(
            (closed["type"].as_str(), closed["reason"].as_str()),
            (Some("session.closed"), Some("close_requested"))
        );
        match actix_web::rt::time::timeout(PATIENCE, socket.next()).await {
            Ok(Some(Ok(Frame::Close(Some(reason))))) => assert_eq!(u16::from(reason.code), 1000),
            other => panic!("expected the server's Close, got {other:?}"),
        }
        let _ = socket.send(Message::Close(None)).await;
        assert_eq!(fake.wait_closed().await, 1000);
        assert_eq!(
            fake.types(),
            ["session.start", "session.bogus", "session.close"]
        );
        assert_eq!(fake.wait_for("session.close", 1).await["event_id"], "bye");
        // Captured verbatim, one event a line.
        let captured = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<Value> = captured
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, fake.received());
        let _ = std::fs::remove_file(&log);
    }

    #[actix_web::test]
    async fn a_held_start_waits_for_release_the_server_and_the_client_close_and_a_failed_start_closes_1008(
    ) {
        let fake = FakeLive::start_logging(KEY, None);
        fake.hold_start();
        let mut socket = open(&fake).await;
        send(&mut socket, &start_event()).await;
        fake.wait_for("session.start", 1).await;
        let early = actix_web::rt::time::timeout(Duration::from_millis(200), socket.next()).await;
        assert!(early.is_err(), "nothing before release: {early:?}");
        fake.release_start().await;
        assert_eq!(next(&mut socket).await["type"], "session.started");
        fake.usage(3.5).await;
        assert_eq!(next(&mut socket).await["usage"]["seconds"], 3.5);
        fake.close_session("expired").await;
        let closed = next(&mut socket).await;
        assert_eq!(
            (closed["type"].as_str(), closed["reason"].as_str()),
            (Some("session.closed"), Some("expired"))
        );
        assert_eq!(closed["usage"]["seconds"], 3.5);
        match actix_web::rt::time::timeout(PATIENCE, socket.next()).await {
            Ok(Some(Ok(Frame::Close(Some(reason))))) => assert_eq!(u16::from(reason.code), 1000),
            other => panic!("expected the server's Close, got {other:?}"),
        }
        assert_eq!(fake.wait_closed().await, 1000);

        // Released: the next start is answered at once; the client closes its socket itself.
        let mut socket = open(&fake).await;
        send(&mut socket, &start_event()).await;
        assert_eq!(next(&mut socket).await["type"], "session.started");
        let away = awc::ws::CloseReason::from(awc::ws::CloseCode::Away);
        socket.send(Message::Close(Some(away))).await.unwrap();
        assert_eq!(fake.wait_closed().await, 1001);

        let mut socket = open(&fake).await;
        send(&mut socket, &with(start_event(), "/session/audio", None)).await;
        assert_eq!(
            next(&mut socket).await["error"]["code"],
            "missing_required_parameter"
        );
        match actix_web::rt::time::timeout(PATIENCE, socket.next()).await {
            Ok(Some(Ok(Frame::Close(Some(reason))))) => {
                assert_eq!(u16::from(reason.code), FAILED_START_CLOSE)
            }
            other => panic!("expected the server's Close, got {other:?}"),
        }
    }

    #[actix_web::test]
    async fn auto_mode_checks_the_start_then_streams_silence_in_real_time() {
        let (auto, _) = auto(None, None);
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let fake = serve_auto_logging(addr, auto, None).unwrap();
        assert_eq!(fake.url, format!("ws://{addr}{PATH}"));
        // Any bearer key, but one.
        assert_eq!(status(connect(&fake.url, &[]).await), 401);

        // No command before the start; a start with an unknown field fails and closes.
        let mut socket = open(&fake).await;
        send(&mut socket, &audio(0x10, 20)).await;
        assert_eq!(
            next(&mut socket).await["error"]["code"],
            "session_not_started"
        );
        send(
            &mut socket,
            &with(start_event(), "/session/bogus", Some(json!(1))),
        )
        .await;
        let error = next(&mut socket).await;
        assert_eq!(
            (
                error["error"]["code"].as_str(),
                error["error"]["param"].as_str()
            ),
            (Some("unknown_parameter"), Some("session.bogus"))
        );
        match actix_web::rt::time::timeout(PATIENCE, socket.next()).await {
            Ok(Some(Ok(Frame::Close(Some(reason))))) => {
                assert_eq!(u16::from(reason.code), FAILED_START_CLOSE)
            }
            other => panic!("expected the server's Close, got {other:?}"),
        }

        // Started: silence from then on, a 100 ms delta every 100 ms.
        let mut socket = open(&fake).await;
        send(&mut socket, &start_event()).await;
        assert_eq!(next(&mut socket).await["type"], "session.started");
        let began = Instant::now();
        for _ in 0..5 {
            let delta = next(&mut socket).await;
            assert_eq!(delta["type"], "session.output_audio.delta");
            let audio = STANDARD.decode(delta["delta"].as_str().unwrap()).unwrap();
            assert_eq!(audio, [SILENCE; 800]);
        }
        assert!(began.elapsed() >= Duration::from_millis(390), "paced");
        send(&mut socket, &json!({"type": "session.close"})).await;
        let mut closed = next(&mut socket).await;
        while closed["type"] == "session.output_audio.delta" {
            closed = next(&mut socket).await;
        }
        assert_eq!(closed["type"], "session.closed");
        assert_eq!(fake.error_count(), 2);
        assert_eq!(fake.errors().len(), 2);
        assert!(fake.received().is_empty(), "nothing kept in auto mode");
        assert!(fake.handshakes().is_empty());
    }
}
