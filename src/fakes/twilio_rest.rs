//! A strict fake of Twilio's REST `UpdateCall`
//! (`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`), `CreateCall` and `FetchCall`
//! (below, *Calls*), and of a call's Recordings list (`POST` and `GET /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Recordings.json`,
//! below), for the integration tests ([`FakeTwilio::start`]: a free port in the test's actix
//! system) and callsim's `--twilio-api` stand-in ([`FakeTwilio::serve`]: a given address). An
//! update is refused as Twilio refuses it, in this order, with Twilio's status and error code:
//!
//! | check | answer |
//! |---|---|
//! | HTTP Basic with the expected pair ([`BasicAuth`]) | 401, 20003 `Authenticate` |
//! | (a failure the test asked for: [`FakeTwilio::fail_first`]) | 500, 20500 |
//! | an `application/x-www-form-urlencoded` body | 400, 20001 |
//! | exactly one of `Status`, `Twiml`, `Url`, each at most once | 400, 21200 (the Calls resource's code) |
//! | `Status` is `completed` or `canceled`; `Method` is `GET` or `POST` | 400, 21200 |
//! | `Url` is an absolute http(s) URL | 400, 21205 |
//! | `Twiml` of at most 4,000 characters | 400, 32018 |
//! | `Twiml` that Twilio's TwiML reference allows ([`strict_twiml`], an independent reader) | 400, 12100 `Document parse failure` |
//! | the call is live (in progress or transferred) | 404, 20404 |
//!
//! What an accepted update does to the call (Twilio's rules, and where Twilio does not say, this
//! fake's decision):
//! - `Status=completed` hangs up: the call is over, later updates get 404.
//! - `Status=canceled` has **no effect** on a call in progress (Twilio cancels only queued or
//!   ringing calls, and every call this fake knows is in progress): 200, the call stays up, the
//!   update is recorded with no effect.
//! - `Url`: Twilio fetches the TwiML there and runs it; the fake records it, the call stays up,
//!   and callsim is told to follow it ([`AppAction::Redirected`]).
//! - `Twiml` replaces the running document; its verbs are read in order and the first one that
//!   decides the call's fate decides it: `<Hangup>` or `<Reject>` hangs up (the `<Say>` text
//!   before it is what the caller heard); `<Dial>` (or `<Refer>`) transfers the call, which stays
//!   live (a dialled call is in progress until the parties hang up); a verb that hands the call
//!   to something that goes on (`<Connect>`, `<Gather>`, `<Record>`, `<Redirect>`, `<Enqueue>`,
//!   `<Pay>`, `<Echo>`) keeps it up under the new document ([`AppAction::Replaced`]); a document
//!   that runs out without any of those (only `<Say>`, `<Play>`, `<Pause>`, `<Start>`, `<Stop>`,
//!   `<Leave>`) hangs up, as Twilio does when a document ends.
//!
//! ## Recordings
//!
//! `CreateCallRecording` (`POST …/Calls/{CallSid}/Recordings.json`) is checked in this order:
//!
//! | check | answer |
//! |---|---|
//! | HTTP Basic, as for updates | 401, 20003 |
//! | (a failure the test asked for: [`FakeTwilio::fail_first`], shared with updates) | 500, 20500 |
//! | (an answer the test asked to lose, [`FakeTwilio::lose_answers`]: the request takes effect) | 502, not Twilio's JSON |
//! | an `application/x-www-form-urlencoded` body | 400, 20001 |
//! | only the parameters Twilio documents (`RecordingChannels`, `RecordingStatusCallback`, `RecordingStatusCallbackEvent`, `RecordingStatusCallbackMethod`, `RecordingTrack`, `Trim`), each once | 400, 20001 `Unknown parameters` |
//! | `RecordingChannels` `mono` or `dual`; `RecordingTrack` `inbound`, `outbound` or `both`; `Trim` `trim-silence` or `do-not-trim`; `RecordingStatusCallbackMethod` `GET` or `POST`; each `RecordingStatusCallbackEvent` (space-separated) `in-progress`, `completed` or `absent` | 400, 21200 |
//! | `RecordingStatusCallback` an absolute http(s) URL | 400, 21205 |
//! | a call this fake never knew | 404, 20404 |
//! | a call that has ended | 400, 21220 `Invalid call state` (Twilio: "Calls that have completed cannot be recorded") |
//!
//! and answered 201 with the new recording (`RE` + 32 hex digits, `status` `in-progress`,
//! `channels` 2 for `dual`, else 1, `source` `StartCallRecordingAPI`, Twilio's other fields).
//! The list (`GET`) answers a known call's recordings, newest first, in Twilio's page shape
//! (`{"recordings": [...], "page": 0, ...}`); a call this fake never knew gets 404, 20404.
//! Every recording request is kept ([`FakeTwilio::recording_requests`]).
//!
//! ## Calls
//!
//! `CreateCall` (`POST …/Calls.json`) and `FetchCall` (`GET …/Calls/{CallSid}.json`): see
//! [`calls`](self::calls) for what they check and answer. A call created here is `queued` until
//! the test (its Twilio emulator) answers it ([`FakeTwilio::live_call`]: `in-progress`, and
//! updates now reach it) or ends it; [`FakeTwilio::set_answered_by`] is what answering-machine
//! detection found, which `FetchCall` shows as `answered_by`.
//!
//! Decisions where Twilio does not say, or says otherwise:
//! - Twilio **ignores** unknown parameters (its warning 20001, "no harm done"); this fake
//!   refuses them, so that a misspelt parameter, which Twilio would silently drop, fails a test.
//! - A second recording while one is in progress is **accepted**, as Twilio does (a call may
//!   have several; Twilio's error 16108 is about acting on "the current one" when there are
//!   several): that is the double recording callvisor must not make, and the tests count it.
//! - A recording ends with its call, straight to `completed` (Twilio goes through
//!   `processing`); [`FakeTwilio::stop_recordings`] stands for someone stopping it mid-call.
//! - The codes for a bad parameter value (21200) are this fake's choice, as for updates.

mod calls;
mod strict_twiml;

pub use calls::{PlacedCall, CALL_PARAMETERS, INVALID_NUMBER};
pub use strict_twiml::{read as read_twiml, Node, Refusal, MAX_TWIML_CHARS};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;

/// The HTTP Basic pair the fake accepts, as Twilio would for the account.
#[derive(Clone, Debug)]
pub enum BasicAuth {
    /// A fixed `user:password`: an API key (`SK…` and its secret), or an account SID and its
    /// auth token when the test knows the account.
    Pair { user: String, password: String },
    /// The account's auth token: the user is the `AccountSid` of the request's own path, as
    /// Twilio requires when an account authenticates as itself.
    AccountAuthToken(String),
}

impl BasicAuth {
    fn accepts(&self, account_sid: &str, user: &str, password: &str) -> bool {
        match self {
            BasicAuth::Pair {
                user: u,
                password: p,
            } => user == u && password == p,
            BasicAuth::AccountAuthToken(token) => user == account_sid && password == token,
        }
    }
}

/// What an accepted update did to the call: what callsim plays out on its side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAction {
    /// `Status=completed`, or TwiML that ends the call; `said`: the `<Say>` text before the end.
    HungUp { said: Option<String> },
    /// `<Dial>` (or `<Refer>`): the caller is connected to `to` (the number, SIP URI, client,
    /// conference or queue named).
    Transferred { to: String },
    /// `Url` (and `Method`, default `POST`): Twilio runs the TwiML found there.
    Redirected { url: String, method: String },
    /// TwiML that keeps the call going under new instructions (`<Connect>`, `<Gather>`, ...).
    Replaced { twiml: String },
}

/// One accepted update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub account_sid: String,
    pub call_sid: String,
    /// The form as sent, in order.
    pub form: Vec<(String, String)>,
    /// What it did; `None`: nothing (`Status=canceled` on a call in progress).
    pub effect: Option<AppAction>,
}

#[derive(Default)]
struct State {
    /// Calls in progress (and transferred ones, which still are): the only ones an update may
    /// change. Any other CallSid is answered 404, including a call this fake ended.
    live: std::collections::HashSet<String>,
    /// Per call: answers 500 this many times before behaving.
    fail_first: HashMap<String, u32>,
    /// Per call: this many requests take effect, but their answer is lost (a 502 instead).
    lose_answers: HashMap<String, u32>,
    /// Per call: waits this long before answering.
    delay: HashMap<String, Duration>,
    updates: Vec<Update>,
    /// Per call: requests received, counted on arrival (before any delay), answered or not.
    received: HashMap<String, usize>,
    /// Every answered request: (call sid, status), in order.
    answers: Vec<(String, u16)>,
    /// Per call: the latest effect not yet taken by callsim.
    pending: HashMap<String, AppAction>,
    /// Calls that were live and are over: a recording of one is refused (21220).
    ended: std::collections::HashSet<String>,
    /// Per call: its recordings, oldest first.
    recordings: HashMap<String, Vec<Recording>>,
    /// Every recording request, in order.
    recording_requests: Vec<RecordingRequest>,
    /// Calls created through `POST …/Calls.json`, in order.
    placed: Vec<PlacedCall>,
    /// The next this many creates are answered 429 (the account's calls per second).
    rate_limit: u32,
    /// The status of every create request, in order.
    create_answers: Vec<u16>,
}

/// A recording this fake started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// `RE` and 32 hex digits.
    pub sid: String,
    pub account_sid: String,
    pub call_sid: String,
    /// `in-progress`, then `stopped` ([`FakeTwilio::stop_recordings`]) or `completed` (the
    /// call ended).
    pub status: String,
    /// 1 or 2 (`RecordingChannels=dual`).
    pub channels: u8,
    /// The form it was asked with, in order.
    pub form: Vec<(String, String)>,
    /// When it started, as Twilio writes dates (RFC 2822, GMT).
    pub date_created: String,
}

/// One request to a call's Recordings list, answered or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRequest {
    /// `POST` (create) or `GET` (list).
    pub method: &'static str,
    pub call_sid: String,
    /// The form as sent (empty for a `GET`).
    pub form: Vec<(String, String)>,
    /// The status answered.
    pub status: u16,
}

/// The fake; clones share it.
#[derive(Clone)]
pub struct FakeTwilio {
    /// `http://ADDR`: what the server's `TWILIO_API_BASE_URL` points at.
    pub base: String,
    auth: Arc<BasicAuth>,
    state: Arc<Mutex<State>>,
}

impl FakeTwilio {
    /// Starts the fake on 127.0.0.1 and a free port in the current actix system; it accepts
    /// `user`/`password` as Basic credentials. For tests: panics if it cannot bind.
    pub fn start(user: &str, password: &str) -> FakeTwilio {
        let auth = BasicAuth::Pair {
            user: user.into(),
            password: password.into(),
        };
        FakeTwilio::serve(SocketAddr::from(([127, 0, 0, 1], 0)), auth)
            .expect("the fake Twilio API binds a free port")
    }

    /// Serves the fake on `addr` (port 0: a free one, see [`FakeTwilio::base`]) in the current
    /// actix system, accepting `auth`.
    pub fn serve(addr: SocketAddr, auth: BasicAuth) -> std::io::Result<FakeTwilio> {
        let listener = std::net::TcpListener::bind(addr)?;
        let base = format!("http://{}", listener.local_addr()?);
        let fake = FakeTwilio {
            base,
            auth: Arc::new(auth),
            state: Arc::default(),
        };
        let data = web::Data::new(fake.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/2010-04-01/Accounts/{account}/Calls.json",
                    web::post().to(calls::create_call),
                )
                .route(
                    "/2010-04-01/Accounts/{account}/Calls/{call}",
                    web::post().to(update_call),
                )
                .route(
                    "/2010-04-01/Accounts/{account}/Calls/{call}",
                    web::get().to(calls::fetch_call),
                )
                .route(
                    "/2010-04-01/Accounts/{account}/Calls/{call}/Recordings.json",
                    web::post().to(create_recording),
                )
                .route(
                    "/2010-04-01/Accounts/{account}/Calls/{call}/Recordings.json",
                    web::get().to(list_recordings),
                )
                .default_service(web::to(|| async {
                    twilio_error(404, 20404, "The requested resource was not found")
                }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        actix_web::rt::spawn(server);
        Ok(fake)
    }

    /// A call Twilio knows as in progress (callsim: a call it placed; a test's Twilio emulator:
    /// a call created here, now answered).
    pub fn live_call(&self, call_sid: &str) {
        let mut state = self.lock();
        state.live.insert(call_sid.into());
        if let Some(call) = state.placed.iter_mut().find(|c| c.sid == call_sid) {
            call.status = "in-progress".into();
        }
    }

    /// The calls created (`POST …/Calls.json` answered 201), oldest first.
    pub fn placed_calls(&self) -> Vec<PlacedCall> {
        self.lock().placed.clone()
    }

    /// The status of every create request (`POST …/Calls.json`), in order.
    pub fn create_answers(&self) -> Vec<u16> {
        self.lock().create_answers.clone()
    }

    /// The next `times` create requests get Twilio's 429 (code 20429, `Too Many Requests`): the
    /// account's calls per second.
    pub fn rate_limit_calls(&self, times: u32) {
        self.lock().rate_limit = times;
    }

    /// Answering-machine detection found `answered_by` on `call_sid` (its Call resource shows
    /// it from now on).
    pub fn set_answered_by(&self, call_sid: &str, answered_by: &str) {
        if let Some(call) = self.lock().placed.iter_mut().find(|c| c.sid == call_sid) {
            call.answered_by = Some(answered_by.into());
        }
    }

    /// A placed call ended without being answered (`busy`, `no-answer`, `failed`, `canceled`),
    /// as the test's Twilio emulator decides.
    pub fn set_call_status(&self, call_sid: &str, status: &str) {
        if let Some(call) = self.lock().placed.iter_mut().find(|c| c.sid == call_sid) {
            call.status = status.into();
        }
    }

    /// The caller hung up (callsim): the call is over, and whatever the app did to it and
    /// callsim did not take is forgotten.
    pub fn call_ended(&self, call_sid: &str) {
        let mut state = self.lock();
        state.pending.remove(call_sid);
        state.end(call_sid);
    }

    /// The call's recordings, oldest first.
    pub fn recordings(&self, call_sid: &str) -> Vec<Recording> {
        self.lock()
            .recordings
            .get(call_sid)
            .cloned()
            .unwrap_or_default()
    }

    /// The requests to the call's Recordings list (`POST` and `GET`), in order.
    pub fn recording_requests(&self, call_sid: &str) -> Vec<RecordingRequest> {
        self.lock()
            .recording_requests
            .iter()
            .filter(|r| r.call_sid == call_sid)
            .cloned()
            .collect()
    }

    /// Someone (the business, through Twilio's API) stopped the call's recordings: each one in
    /// progress or paused is `stopped`, the call goes on.
    pub fn stop_recordings(&self, call_sid: &str) {
        let mut state = self.lock();
        for recording in state.recordings.get_mut(call_sid).into_iter().flatten() {
            if matches!(recording.status.as_str(), "in-progress" | "paused") {
                recording.status = "stopped".into();
            }
        }
    }

    /// What the app last did to `call_sid`, once (callsim polls it).
    pub fn take_action(&self, call_sid: &str) -> Option<AppAction> {
        self.lock().pending.remove(call_sid)
    }

    /// The next `times` requests for `call_sid` (with the right credentials) get a 500.
    pub fn fail_first(&self, call_sid: &str, times: u32) {
        self.lock().fail_first.insert(call_sid.into(), times);
    }

    /// The next `times` requests for `call_sid` do what they ask, but their answer is lost on
    /// the way: a 502 (`Bad Gateway`, not Twilio's JSON) comes instead, as from a proxy that
    /// gave up. The client cannot tell whether the request took effect.
    pub fn lose_answers(&self, call_sid: &str, times: u32) {
        self.lock().lose_answers.insert(call_sid.into(), times);
    }

    /// Every request for `call_sid` is answered `by` later.
    pub fn delay(&self, call_sid: &str, by: Duration) {
        self.lock().delay.insert(call_sid.into(), by);
    }

    /// The accepted updates, in order.
    pub fn updates(&self) -> Vec<Update> {
        self.lock().updates.clone()
    }

    /// How many requests for `call_sid` (updates and recordings) reached the fake, counted as
    /// they arrive: a request the client gave up on while it was delayed counts too.
    pub fn received(&self, call_sid: &str) -> usize {
        self.lock().received.get(call_sid).copied().unwrap_or(0)
    }

    /// Status codes answered for `call_sid`, in order.
    pub fn answers(&self, call_sid: &str) -> Vec<u16> {
        self.lock()
            .answers
            .iter()
            .filter(|(c, _)| c == call_sid)
            .map(|(_, s)| *s)
            .collect()
    }

    /// Whether the call is up: in progress or transferred, not hung up.
    pub fn is_live(&self, call_sid: &str) -> bool {
        self.lock().live.contains(call_sid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// The call is over: later updates get 404, recordings 21220, and its recordings end.
    fn end(&mut self, call_sid: &str) {
        if self.live.remove(call_sid) {
            self.ended.insert(call_sid.into());
            if let Some(call) = self.placed.iter_mut().find(|c| c.sid == call_sid) {
                call.status = "completed".into();
            }
        }
        for recording in self.recordings.get_mut(call_sid).into_iter().flatten() {
            if matches!(recording.status.as_str(), "in-progress" | "paused") {
                recording.status = "completed".into();
            }
        }
    }
}

fn twilio_error(status: u16, code: u32, message: &str) -> HttpResponse {
    let status_code = actix_web::http::StatusCode::from_u16(status).expect("a valid status");
    let mut response = HttpResponse::build(status_code);
    if status == 401 {
        response.insert_header(("WWW-Authenticate", "Basic realm=\"Twilio API\""));
    }
    response.json(serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    }))
}

async fn update_call(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    fake: web::Data<FakeTwilio>,
) -> HttpResponse {
    let (account_sid, call) = path.into_inner();
    let Some(call_sid) = call.strip_suffix(".json").map(str::to_string) else {
        return twilio_error(404, 20404, "The requested resource was not found");
    };
    fake.arrived(&call_sid).await;
    let response = fake.delivered(
        &call_sid,
        answer(&req, &account_sid, &call_sid, &body, &fake),
    );
    fake.lock()
        .answers
        .push((call_sid, response.status().as_u16()));
    response
}

fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let encoded = req
        .headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, password) = raw.split_once(':')?;
    Some((user.into(), password.into()))
}

/// What every request goes through first, as Twilio: its credentials, then (a test's) 500.
fn admitted(
    req: &HttpRequest,
    account_sid: &str,
    call_sid: &str,
    fake: &FakeTwilio,
) -> Result<(), Refused> {
    let authenticated = basic_credentials(req)
        .is_some_and(|(user, password)| fake.auth.accepts(account_sid, &user, &password));
    if !authenticated {
        return Err(refused(401, 20003, "Authenticate"));
    }
    let mut state = fake.lock();
    if let Some(left) = state.fail_first.get_mut(call_sid).filter(|n| **n > 0) {
        *left -= 1;
        return Err(refused(500, 20500, "Internal Server Error"));
    }
    Ok(())
}

/// The request's form, if it is one.
fn form_of(req: &HttpRequest, body: &[u8]) -> Result<Vec<(String, String)>, Refused> {
    let form_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return Err(refused(
            400,
            20001,
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map_err(|_| refused(400, 20001, "Unreadable form body"))
}

fn answer(
    req: &HttpRequest,
    account_sid: &str,
    call_sid: &str,
    body: &[u8],
    fake: &FakeTwilio,
) -> HttpResponse {
    let form = match admitted(req, account_sid, call_sid, fake).and_then(|()| form_of(req, body)) {
        Ok(form) => form,
        Err(refusal) => return refusal.answer(),
    };
    let effect = match effect_of(&form) {
        Ok(effect) => effect,
        Err(Refused(status, code, message)) => return twilio_error(status, code, &message),
    };
    let mut state = fake.lock();
    if !state.live.contains(call_sid) {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    let status = match &effect {
        Some(AppAction::HungUp { .. }) if has(&form, "Status") => "completed",
        _ => "in-progress",
    };
    if let Some(action) = &effect {
        if matches!(action, AppAction::HungUp { .. }) {
            state.end(call_sid);
        }
        state.pending.insert(call_sid.into(), action.clone());
    }
    state.updates.push(Update {
        account_sid: account_sid.into(),
        call_sid: call_sid.into(),
        form,
        effect,
    });
    HttpResponse::Ok().json(serde_json::json!({
        "sid": call_sid,
        "account_sid": account_sid,
        "status": status,
        "api_version": "2010-04-01",
    }))
}

/// `POST …/Calls/{CallSid}/Recordings.json`: counted, delayed and answered like an update.
async fn create_recording(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    fake: web::Data<FakeTwilio>,
) -> HttpResponse {
    let (account_sid, call_sid) = path.into_inner();
    fake.arrived(&call_sid).await;
    let form = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body).unwrap_or_default();
    let response = fake.delivered(
        &call_sid,
        recording_created(&req, &account_sid, &call_sid, &body, &fake),
    );
    fake.recording_answered("POST", &call_sid, form, &response);
    response
}

/// `GET …/Calls/{CallSid}/Recordings.json`: the call's recordings, newest first.
async fn list_recordings(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    fake: web::Data<FakeTwilio>,
) -> HttpResponse {
    let (account_sid, call_sid) = path.into_inner();
    fake.arrived(&call_sid).await;
    let response = match admitted(&req, &account_sid, &call_sid, &fake) {
        Err(refusal) => refusal.answer(),
        Ok(()) => {
            let state = fake.lock();
            if !state.live.contains(&call_sid) && !state.ended.contains(&call_sid) {
                twilio_error(404, 20404, "The requested resource was not found")
            } else {
                let recordings: Vec<serde_json::Value> = state
                    .recordings
                    .get(&call_sid)
                    .into_iter()
                    .flatten()
                    .rev()
                    .map(recording_json)
                    .collect();
                let uri =
                    format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}/Recordings.json");
                HttpResponse::Ok().json(serde_json::json!({
                    "end": recordings.len().saturating_sub(1),
                    "first_page_uri": format!("{uri}?PageSize=50&Page=0"),
                    "next_page_uri": null,
                    "page": 0,
                    "page_size": 50,
                    "previous_page_uri": null,
                    "recordings": recordings,
                    "start": 0,
                    "uri": format!("{uri}?PageSize=50&Page=0"),
                }))
            }
        }
    };
    let response = fake.delivered(&call_sid, response);
    fake.recording_answered("GET", &call_sid, Vec::new(), &response);
    response
}

impl FakeTwilio {
    /// A request for `call_sid` arrived: counted, then held for the call's delay if any.
    async fn arrived(&self, call_sid: &str) {
        let delay = {
            let mut state = self.lock();
            *state.received.entry(call_sid.into()).or_default() += 1;
            state.delay.get(call_sid).copied()
        };
        if let Some(delay) = delay {
            actix_web::rt::time::sleep(delay).await;
        }
    }

    /// The answer that reaches the client: `response`, unless the test asked for it to be lost.
    fn delivered(&self, call_sid: &str, response: HttpResponse) -> HttpResponse {
        let mut state = self.lock();
        match state.lose_answers.get_mut(call_sid).filter(|n| **n > 0) {
            Some(left) => {
                *left -= 1;
                HttpResponse::BadGateway().body("Bad Gateway")
            }
            None => response,
        }
    }

    fn recording_answered(
        &self,
        method: &'static str,
        call_sid: &str,
        form: Vec<(String, String)>,
        response: &HttpResponse,
    ) {
        let status = response.status().as_u16();
        let mut state = self.lock();
        state.answers.push((call_sid.into(), status));
        state.recording_requests.push(RecordingRequest {
            method,
            call_sid: call_sid.into(),
            form,
            status,
        });
    }
}

/// Twilio's parameters of `CreateCallRecording`.
const RECORDING_PARAMETERS: [&str; 6] = [
    "RecordingChannels",
    "RecordingStatusCallback",
    "RecordingStatusCallbackEvent",
    "RecordingStatusCallbackMethod",
    "RecordingTrack",
    "Trim",
];

fn recording_created(
    req: &HttpRequest,
    account_sid: &str,
    call_sid: &str,
    body: &[u8],
    fake: &FakeTwilio,
) -> HttpResponse {
    let form = match admitted(req, account_sid, call_sid, fake).and_then(|()| form_of(req, body)) {
        Ok(form) => form,
        Err(refusal) => return refusal.answer(),
    };
    if let Err(Refused(status, code, message)) = check_recording_form(&form) {
        return twilio_error(status, code, &message);
    }
    let mut state = fake.lock();
    if state.ended.contains(call_sid) {
        return twilio_error(
            400,
            21220,
            "Invalid call state: calls that have completed cannot be recorded",
        );
    }
    if !state.live.contains(call_sid) {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    let channels = match form.iter().find(|(k, _)| k == "RecordingChannels") {
        Some((_, v)) if v == "dual" => 2,
        _ => 1,
    };
    let recording = Recording {
        sid: new_recording_sid(),
        account_sid: account_sid.into(),
        call_sid: call_sid.into(),
        status: "in-progress".into(),
        channels,
        form,
        date_created: jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S +0000")
            .to_string(),
    };
    let json = recording_json(&recording);
    state
        .recordings
        .entry(call_sid.into())
        .or_default()
        .push(recording);
    HttpResponse::Created().json(json)
}

/// Twilio's 400 for a `CreateCallRecording` form it would not take (see the module's doc).
fn check_recording_form(form: &[(String, String)]) -> Result<(), Refused> {
    for (n, (key, _)) in form.iter().enumerate() {
        if !RECORDING_PARAMETERS.contains(&key.as_str()) {
            return Err(refused(400, 20001, &format!("Unknown parameters: {key}")));
        }
        if form[..n].iter().any(|(k, _)| k == key) {
            return Err(refused(400, 20001, &format!("{key} given more than once")));
        }
    }
    let value = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let one_of = |key: &str, allowed: &[&str]| match value(key) {
        Some(v) if !allowed.contains(&v) => Err(refused(
            400,
            21200,
            &format!("{key} {v:?} is not one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    };
    one_of("RecordingChannels", &["mono", "dual"])?;
    one_of("RecordingTrack", &["inbound", "outbound", "both"])?;
    one_of("Trim", &["trim-silence", "do-not-trim"])?;
    one_of("RecordingStatusCallbackMethod", &["GET", "POST"])?;
    if let Some(events) = value("RecordingStatusCallbackEvent") {
        if let Some(bad) = events
            .split(' ')
            .find(|e| !matches!(*e, "in-progress" | "completed" | "absent"))
        {
            return Err(refused(
                400,
                21200,
                &format!(
                    "RecordingStatusCallbackEvent {bad:?} is not in-progress, completed or absent"
                ),
            ));
        }
    }
    if let Some(url) = value("RecordingStatusCallback") {
        let absolute = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        if !absolute || url.contains(char::is_whitespace) {
            return Err(refused(
                400,
                21205,
                "RecordingStatusCallback is not a valid absolute URL",
            ));
        }
    }
    Ok(())
}

/// A recording as Twilio's API shows it.
fn recording_json(r: &Recording) -> serde_json::Value {
    let track = r
        .form
        .iter()
        .find(|(k, _)| k == "RecordingTrack")
        .map_or("both", |(_, v)| v.as_str());
    serde_json::json!({
        "account_sid": r.account_sid,
        "api_version": "2010-04-01",
        "call_sid": r.call_sid,
        "conference_sid": null,
        "channels": r.channels,
        "date_created": r.date_created,
        "date_updated": r.date_created,
        "start_time": r.date_created,
        // Twilio's value while the recording goes on.
        "duration": "-1",
        "error_code": null,
        "encryption_details": null,
        "price": null,
        "price_unit": "USD",
        "sid": r.sid,
        "source": "StartCallRecordingAPI",
        "status": r.status,
        "track": track,
        "uri": format!(
            "/2010-04-01/Accounts/{}/Calls/{}/Recordings/{}.json",
            r.account_sid, r.call_sid, r.sid
        ),
    })
}

/// `RE` and 32 hex digits, unique in this process.
fn new_recording_sid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("RE{nanos:016x}{n:016x}")
}

fn has(form: &[(String, String)], key: &str) -> bool {
    form.iter().any(|(k, _)| k == key)
}

/// A refusal: HTTP status, Twilio's error code, message.
struct Refused(u16, u32, String);

fn refused(status: u16, code: u32, message: &str) -> Refused {
    Refused(status, code, message.into())
}

impl Refused {
    fn answer(&self) -> HttpResponse {
        twilio_error(self.0, self.1, &self.2)
    }
}

/// What a form does to a call in progress, or Twilio's 400 for it.
fn effect_of(form: &[(String, String)]) -> Result<Option<AppAction>, Refused> {
    let given: Vec<&(String, String)> = form
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "Status" | "Twiml" | "Url"))
        .collect();
    let [(key, value)] = given.as_slice() else {
        return Err(refused(
            400,
            21200,
            "Exactly one of Status, Twiml or Url must be given",
        ));
    };
    let method = form
        .iter()
        .find(|(k, _)| k == "Method")
        .map(|(_, v)| v.to_ascii_uppercase());
    if method.as_deref().is_some_and(|m| m != "GET" && m != "POST") {
        return Err(refused(400, 21200, "Method must be GET or POST"));
    }
    match key.as_str() {
        "Status" => match value.as_str() {
            "completed" => Ok(Some(AppAction::HungUp { said: None })),
            // Only queued or ringing calls can be canceled: no effect on one in progress.
            "canceled" => Ok(None),
            other => Err(refused(
                400,
                21200,
                &format!("Status {other:?} is not completed or canceled"),
            )),
        },
        "Url" => {
            if !(value.starts_with("https://") || value.starts_with("http://"))
                || value.contains(char::is_whitespace)
            {
                return Err(refused(400, 21205, "Url is not a valid absolute URL"));
            }
            Ok(Some(AppAction::Redirected {
                url: value.clone(),
                method: method.unwrap_or_else(|| "POST".into()),
            }))
        }
        _ => match strict_twiml::read(value) {
            Err(refusal) => Err(refused(400, refusal.code(), &refusal.to_string())),
            Ok(verbs) => Ok(Some(twiml_effect(value, &verbs))),
        },
    }
}

/// What a new document does to the call: the first verb that decides its fate decides it (see
/// the module's doc).
fn twiml_effect(twiml: &str, verbs: &[Node]) -> AppAction {
    let mut said: Vec<&str> = Vec::new();
    let hung_up = |said: &[&str]| AppAction::HungUp {
        said: (!said.is_empty()).then(|| said.join(" ")),
    };
    for verb in verbs {
        match verb.name.as_str() {
            "Say" if !verb.text.is_empty() => said.push(&verb.text),
            "Hangup" | "Reject" => return hung_up(&said),
            "Dial" | "Refer" => {
                let to = if verb.text.is_empty() {
                    verb.children
                        .iter()
                        .find_map(|noun| (!noun.text.is_empty()).then(|| noun.text.clone()))
                } else {
                    Some(verb.text.clone())
                };
                return AppAction::Transferred {
                    to: to.unwrap_or_default(),
                };
            }
            "Connect" | "Gather" | "Record" | "Redirect" | "Enqueue" | "Pay" | "Echo" => {
                return AppAction::Replaced {
                    twiml: twiml.into(),
                }
            }
            _ => {}
        }
    }
    hung_up(&said)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(twiml: &str) -> AppAction {
        twiml_effect(twiml, &read_twiml(twiml).unwrap())
    }

    #[test]
    fn each_document_does_what_twilio_would_do_with_it() {
        assert_eq!(
            effect("<Response><Say>Bye &amp; thanks</Say><Hangup/></Response>"),
            AppAction::HungUp {
                said: Some("Bye & thanks".into())
            }
        );
        assert_eq!(
            effect("<Response><Dial>+14155550123</Dial></Response>"),
            AppAction::Transferred {
                to: "+14155550123".into()
            }
        );
        assert_eq!(
            effect("<Response><Dial><Sip>sip:a@b.example</Sip></Dial><Hangup/></Response>"),
            AppAction::Transferred {
                to: "sip:a@b.example".into()
            }
        );
        // A document that runs out ends the call, as Twilio does.
        assert_eq!(
            effect("<Response><Say>one</Say><Pause/><Say>two</Say></Response>"),
            AppAction::HungUp {
                said: Some("one two".into())
            }
        );
        assert_eq!(
            effect("<Response><Reject/></Response>"),
            AppAction::HungUp { said: None }
        );
        let gather = "<Response><Gather><Say>Press 1</Say></Gather><Hangup/></Response>";
        assert_eq!(
            effect(gather),
            AppAction::Replaced {
                twiml: gather.into()
            }
        );
    }
}
