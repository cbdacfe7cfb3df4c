//! One simulated call, behaving as Twilio does: webhook, TwiML, stream, redirects, hang-up.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use awc::error::WsClientError;
use awc::error::WsProtocolError as ProtocolError;
use awc::ws::{CloseCode, CloseReason, Codec, Frame, Message};
use awc::BoxedSocket;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep, sleep_until, Instant};

use callvisor::fakes::twilio_rest::{AppAction, FakeTwilio};
use callvisor::twilio::messages::{Mark, Media, ServerFrame};
use callvisor::twilio::messages::{MediaFormat, Start, Stop, TwilioFrame};
use callvisor::twilio::signature::sign;
use callvisor::twilio::twiml::{self, StreamTarget, Verb};

use crate::audio::{Recording, SILENCE};
use crate::chaos::{self, Kind, Plan};
use crate::realtime_model::Stamps;
use crate::report::{micros, CallRecord, Outcome, Stats};

/// Twilio follows at most this many `<Redirect>`s in one call.
pub const MAX_REDIRECTS: u32 = 10;
/// One media frame: 20 ms of 8 kHz mu-law.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);
const FRAME_BYTES: usize = 160;
/// How long a hung-up call waits for the server's close after `stop`.
const STOP_GRACE: Duration = Duration::from_secs(5);
const MAX_TWIML_BYTES: usize = 64 * 1024;
const MAX_WS_FRAME: usize = 64 * 1024;
/// Frames kept for timing echoes: 10 s of audio. An echo older than that is not timed.
const MAX_IN_FLIGHT: usize = 500;

/// What every call of a run shares.
pub struct Ctx {
    pub client: awc::Client,
    /// Sockets that close with a reset (SO_LINGER 0), for `--chaos` callers that vanish.
    pub resetting_client: awc::Client,
    /// `--twilio-api`: what apps did to calls through the REST API stand-in.
    pub api: Option<FakeTwilio>,
    pub webhook_url: String,
    pub auth_token: Option<String>,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    pub duration: Duration,
    pub stats: Rc<RefCell<Stats>>,
    /// `--say`: what the caller says (8 kHz mu-law) from each stream's start, and
    /// `--say-every`: how often it says it again.
    pub say: Option<Rc<[u8]>>,
    pub say_every: Option<Duration>,
    /// `--record DIR`: each call's heard audio is written there.
    pub record_dir: Option<PathBuf>,
    /// `--realtime-model`, `--live-model`: when the stand-in models sent each reply delta.
    pub model: Option<Arc<Stamps>>,
}

/// How one stream leg ended.
#[derive(Debug, PartialEq)]
enum LegEnd {
    /// The caller hung up at the end of its duration (stop sent).
    HungUp,
    /// The server closed the stream; Twilio goes on with the verb after `</Connect>`.
    Closed(String),
    /// The handshake got an HTTP answer other than 101; Twilio also goes on with the next verb.
    Refused(String),
    /// The socket broke without a close frame: Twilio ends the call.
    Broken(String),
    /// The app hung the call up or transferred it through the REST API (`--twilio-api`).
    App(AppAction),
}

/// A call's progress across webhooks and stream legs.
struct CallState {
    record: CallRecord,
    /// Set when the first stream opens: the caller hangs up `duration` later.
    hang_up_at: Option<Instant>,
    /// Set when a hand-off closed a stream, until the next stream echoes audio.
    handoff_started: Option<Instant>,
    /// `--chaos`: how this caller misbehaves.
    plan: Option<Plan>,
    /// `--record`: what the caller heard so far.
    heard: Option<Recording>,
    /// `--callee`: an outbound call's own `Url` (the server placed it): Twilio requests it when
    /// the callee answers, with `Direction=outbound-api`.
    outbound_url: Option<String>,
}

/// Runs one call to its end: an inbound one through `--webhook-path`, or (`outbound_url`) one
/// the server placed, once its callee answers.
pub async fn run(
    ctx: &Ctx,
    call_sid: String,
    plan: Option<Plan>,
    outbound_url: Option<String>,
) -> CallRecord {
    let mut call = CallState {
        record: CallRecord {
            call_sid,
            outcome: Outcome::Failed,
            reason: None,
            redirects: 0,
            handoffs: 0,
            streams: 0,
            frames_sent: 0,
            frames_echoed: 0,
            frames_lost_at_close: 0,
            said: None,
            stream_ends: Vec::new(),
            chaos: plan.map(|p| p.kind),
            reply_ms: Vec::new(),
            callee: None,
        },
        hang_up_at: None,
        handoff_started: None,
        plan,
        heard: ctx
            .record_dir
            .as_ref()
            .map(|_| Recording::new(Instant::now())),
        outbound_url,
    };
    if let Some(api) = &ctx.api {
        api.live_call(&call.record.call_sid);
    }
    let (outcome, reason) = run_twiml(ctx, &mut call).await;
    if let Some(api) = &ctx.api {
        api.call_ended(&call.record.call_sid);
    }
    call.record.outcome = outcome;
    call.record.reason = reason;
    if let (Some(dir), Some(heard)) = (&ctx.record_dir, &call.heard) {
        let path = dir.join(format!("{}.wav", call.record.call_sid));
        if let Err(e) = crate::audio::write_wav(&path, heard.audio()) {
            eprintln!("callsim: cannot write {}: {e}", path.display());
        }
    }
    call.record
}

async fn run_twiml(ctx: &Ctx, call: &mut CallState) -> (Outcome, Option<String>) {
    let mut url = call
        .outbound_url
        .clone()
        .unwrap_or_else(|| ctx.webhook_url.clone());
    let mut method = "POST".to_string();
    let mut ended_by_twiml = false;
    // TwiML an app sent through the REST API (`Twiml=`): it runs instead of a fetched document.
    let mut replaced: Option<Vec<Verb>> = None;
    'fetch: loop {
        let fetched = match replaced.take() {
            Some(verbs) => Ok(verbs),
            None => fetch_twiml(ctx, &url, &method, call).await,
        };
        let verbs = match fetched {
            Ok(verbs) => verbs,
            Err(reason) => return (Outcome::Failed, Some(reason)),
        };
        for verb in verbs {
            match verb {
                Verb::ConnectStream(target) => {
                    match chaos_or_stream_leg(ctx, call, &target).await {
                        Err(reason) => return (Outcome::Failed, Some(reason)),
                        Ok(None) => return (Outcome::Connected, None),
                        Ok(Some(LegEnd::HungUp)) => return (Outcome::Connected, None),
                        Ok(Some(LegEnd::App(AppAction::HungUp { said }))) => {
                            call.record.said = said;
                            return (Outcome::HungUpByApp, None);
                        }
                        Ok(Some(LegEnd::App(AppAction::Transferred { to }))) => {
                            call.record.said = Some(format!("<Dial>{to}</Dial>"));
                            return (Outcome::Transferred, None);
                        }
                        // The app gave the call new instructions: Twilio ends the stream and
                        // runs them, as callsim does (not a `<Redirect>`: not counted as one).
                        Ok(Some(LegEnd::App(AppAction::Redirected {
                            url: next,
                            method: next_method,
                        }))) => {
                            url = next;
                            method = next_method;
                            continue 'fetch;
                        }
                        Ok(Some(LegEnd::App(AppAction::Replaced { twiml }))) => {
                            match twiml::parse(&twiml) {
                                Ok(verbs) => replaced = Some(verbs),
                                Err(e) => {
                                    return (Outcome::Failed, Some(format!("app's TwiML: {e}")))
                                }
                            }
                            continue 'fetch;
                        }
                        Ok(Some(LegEnd::Closed(end) | LegEnd::Refused(end))) => {
                            if end == "1001 handoff" {
                                call.record.handoffs += 1;
                                call.handoff_started = Some(Instant::now());
                            }
                            call.record.stream_ends.push(end);
                        }
                        Ok(Some(LegEnd::Broken(reason))) => {
                            call.record.stream_ends.push("broken".into());
                            return (Outcome::Failed, Some(reason));
                        }
                    }
                }
                Verb::Redirect {
                    url: next,
                    method: next_method,
                } => {
                    if call.record.redirects == MAX_REDIRECTS {
                        return (Outcome::Failed, Some("more than 10 redirects".into()));
                    }
                    call.record.redirects += 1;
                    url = resolve(&url, &next);
                    method = next_method;
                    continue 'fetch;
                }
                Verb::Say(text) => call.record.said = Some(text),
                Verb::Pause(secs) => sleep(Duration::from_secs(secs.into())).await,
                Verb::Hangup => {
                    ended_by_twiml = true;
                    break;
                }
                Verb::Reject { reason } => {
                    call.record.said.get_or_insert(format!("<Reject> {reason}"));
                    ended_by_twiml = true;
                    break;
                }
                Verb::Other(_) => {}
            }
        }
        break;
    }
    // The TwiML ran out (or hung up) before the call's duration: the caller was turned away.
    if ended_by_twiml || call.record.said.is_some() {
        (Outcome::Busy, None)
    } else if call.record.streams > 0 {
        // Twilio hangs up when the TwiML runs out: the server ended the call early.
        (
            Outcome::Failed,
            Some("stream closed by the server, no TwiML after it".into()),
        )
    } else {
        (
            Outcome::Failed,
            Some("TwiML ended without a stream or a message".into()),
        )
    }
}

/// The form parameters Twilio sends with every voice webhook request.
fn webhook_params(ctx: &Ctx, call: &CallState) -> Vec<(String, String)> {
    let outbound = call.outbound_url.is_some();
    // An outbound call's webhook comes once the callee has answered.
    let status = if call.record.redirects == 0 && call.record.streams == 0 && !outbound {
        "ringing"
    } else {
        "in-progress"
    };
    [
        ("CallSid", call.record.call_sid.as_str()),
        ("AccountSid", &ctx.account_sid),
        ("From", &ctx.from),
        ("Caller", &ctx.from),
        ("To", &ctx.to),
        ("Called", &ctx.to),
        ("CallStatus", status),
        (
            "Direction",
            if outbound { "outbound-api" } else { "inbound" },
        ),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn fetch_twiml(
    ctx: &Ctx,
    url: &str,
    method: &str,
    call: &CallState,
) -> Result<Vec<Verb>, String> {
    let params = webhook_params(ctx, call);
    let started = Instant::now();
    let response = if method == "GET" {
        let sep = if url.contains('?') { '&' } else { '?' };
        let query = serde_urlencoded::to_string(&params).expect("strings encode");
        let full = format!("{url}{sep}{query}");
        let mut req = ctx.client.get(&full);
        if let Some(token) = &ctx.auth_token {
            req = req.insert_header(("X-Twilio-Signature", sign(token, &full, &[])));
        }
        req.send().await
    } else {
        let mut req = ctx.client.post(url);
        if let Some(token) = &ctx.auth_token {
            req = req.insert_header(("X-Twilio-Signature", sign(token, url, &params)));
        }
        req.send_form(&params).await
    };
    let mut response = response.map_err(|e| format!("webhook request failed: {}", kind_of(&e)))?;
    let body = response
        .body()
        .limit(MAX_TWIML_BYTES)
        .await
        .map_err(|_| "webhook body unreadable".to_string())?;
    if !response.status().is_success() {
        return Err(format!("webhook HTTP {}", response.status().as_u16()));
    }
    ctx.stats
        .borrow_mut()
        .webhook_us
        .saturating_record(micros(started.elapsed()));
    let text = std::str::from_utf8(&body).map_err(|_| "TwiML not UTF-8".to_string())?;
    twiml::parse(text).map_err(|e| format!("bad TwiML: {e}"))
}

/// A few words for a client error, so that failures group by kind, not by detail.
fn kind_of(e: &awc::error::SendRequestError) -> &'static str {
    use awc::error::SendRequestError as E;
    match e {
        E::Connect(_) => "connect error",
        E::Timeout => "timeout",
        E::Send(_) | E::Response(_) => "connection error",
        _ => "error",
    }
}

/// Resolves a `<Redirect>` URL against the URL whose TwiML held it.
pub fn resolve(base: &str, next: &str) -> String {
    if next.contains("://") {
        return next.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if let Some(path) = next.strip_prefix('/') {
        return format!("{scheme}://{host}/{path}");
    }
    let path = &rest[host.len()..];
    let path = path.split('?').next().unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{scheme}://{host}{dir}{next}")
}

pub type Ws = Framed<BoxedSocket, Codec>;

/// A `<Stream>` as this caller runs it: a normal leg, or (`--chaos`) a misbehaving stream
/// (`Ok(None)`: the server answered as promised) or a duplicate's two streams.
async fn chaos_or_stream_leg(
    ctx: &Ctx,
    call: &mut CallState,
    target: &StreamTarget,
) -> Result<Option<LegEnd>, String> {
    let Some(plan) = call.plan else {
        return Ok(Some(stream_leg(ctx, call, target).await));
    };
    if !plan.kind.carries_audio() {
        return chaos::misbehave(ctx, &call.record.call_sid, target, &plan)
            .await
            .map(|()| None);
    }
    if plan.kind == Kind::Duplicate && call.record.streams == 0 {
        let first = chaos::first_of_duplicate(ctx, &call.record.call_sid, target).await?;
        let (superseded, end) = futures_util::join!(
            chaos::expect_superseded(first),
            stream_leg(ctx, call, target)
        );
        superseded?;
        return Ok(Some(end));
    }
    Ok(Some(stream_leg(ctx, call, target).await))
}

/// Opens the `<Stream>` and plays the caller's side until the stream or the call ends.
async fn stream_leg(ctx: &Ctx, call: &mut CallState, target: &StreamTarget) -> LegEnd {
    let mut req = ctx.client.ws(&target.url).max_frame_size(MAX_WS_FRAME);
    if let Some(token) = &ctx.auth_token {
        req = req.set_header("X-Twilio-Signature", sign(token, &target.url, &[]));
    }
    let mut ws = match req.connect().await {
        Ok((_, ws)) => ws,
        Err(WsClientError::InvalidResponseStatus(status)) => {
            return LegEnd::Refused(format!("HTTP {}", status.as_u16()))
        }
        Err(WsClientError::SendRequest(e)) => {
            return LegEnd::Broken(format!("stream handshake failed: {}", kind_of(&e)))
        }
        Err(_) => return LegEnd::Broken("stream handshake failed".into()),
    };
    call.record.streams += 1;
    ctx.stats.borrow_mut().streaming += 1;
    let (end, unanswered) = {
        let mut leg = Leg::new(ctx, call, target);
        let end = leg.play(&mut ws).await;
        (end, leg.sent.saturating_sub(leg.echoed))
    };
    ctx.stats.borrow_mut().streaming -= 1;
    if matches!(end, LegEnd::Closed(_)) {
        // In flight when the server closed the stream (a refusal right after `start`, a
        // hand-off): lost too, but not by a stream that was working.
        call.record.frames_lost_at_close += unanswered;
    }
    end
}

/// The caller's side of one stream: send audio in real time, check echoes, answer marks.
struct Leg<'a> {
    ctx: &'a Ctx,
    call: &'a mut CallState,
    target: &'a StreamTarget,
    stream_sid: String,
    sequence: u64,
    /// Frames written and not yet echoed, oldest first: (frame number, when written).
    in_flight: VecDeque<(u32, Instant)>,
    playback: Playback,
    audio: [u8; FRAME_BYTES],
    payload: String,
    sent: u64,
    echoed: u64,
    /// `--say`: when the caller's last utterance ended, until audio comes back.
    reply_wait: Option<Instant>,
}

impl<'a> Leg<'a> {
    fn new(ctx: &'a Ctx, call: &'a mut CallState, target: &'a StreamTarget) -> Self {
        // Twilio's shape (MZ + 32 hex), unique per stream: the call_sid's last 30 characters
        // (its run id's tail and the whole call index) and the stream's number. Call records
        // are keyed by stream_sid; a prefix of the call_sid gave up to 256 calls one sid.
        let sid = &call.record.call_sid;
        let stream_sid = format!(
            "MZ{}{:02x}",
            &sid[sid.len().saturating_sub(30).max(2)..],
            call.record.streams
        );
        Leg {
            ctx,
            call,
            target,
            stream_sid,
            sequence: 0,
            in_flight: VecDeque::new(),
            playback: Playback::default(),
            audio: [0xff; FRAME_BYTES], // mu-law silence
            payload: String::with_capacity(FRAME_BYTES * 4 / 3 + 4),
            sent: 0,
            echoed: 0,
            reply_wait: None,
        }
    }

    fn next_sequence(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    async fn play(&mut self, ws: &mut Ws) -> LegEnd {
        if let Err(end) = self.open(ws).await {
            return end;
        }
        let hang_up_at = *self
            .call
            .hang_up_at
            .get_or_insert_with(|| Instant::now() + self.ctx.duration);
        let mut ticks = tokio::time::interval(FRAME_INTERVAL);
        let mut chunk: u32 = 0;
        let mut stop_sent: Option<Instant> = None;
        // `--chaos` slow readers stop reading for a while (sending goes on), then catch up.
        let opened = Instant::now();
        let pause = self
            .call
            .plan
            .filter(|p| p.kind == Kind::SlowReader)
            .map(|p| (opened + p.pause_after, opened + p.pause_after + p.pause));
        loop {
            let reading = pause.is_none_or(|(from, to)| {
                let now = Instant::now();
                now < from || now >= to
            });
            tokio::select! {
                biased;
                frame = ws.next(), if reading => {
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        // A reset socket (the replica died) reads as an I/O error.
                        Some(Err(ProtocolError::Io(_))) => {
                            return LegEnd::Broken("stream dropped without a close frame".into())
                        }
                        Some(Err(_)) => return LegEnd::Broken("stream protocol error".into()),
                        None if stop_sent.is_some() => return LegEnd::HungUp,
                        None => return LegEnd::Broken("stream dropped without a close frame".into()),
                    };
                    match frame {
                        Frame::Text(text) => self.on_server_frame(&text),
                        Frame::Ping(data) if ws.send(Message::Pong(data.clone())).await.is_err() => {
                            return LegEnd::Broken("stream write failed".into());
                        }
                        Frame::Close(reason) => {
                            let _ = ws.send(Message::Close(reason.clone())).await;
                            if let Some(action) = self.app_action() {
                                return LegEnd::App(action);
                            }
                            if stop_sent.is_some() {
                                return LegEnd::HungUp;
                            }
                            return LegEnd::Closed(describe_close(reason.as_ref()));
                        }
                        _ => {}
                    }
                }
                scheduled = ticks.tick(), if stop_sent.is_none() => {
                    let now = Instant::now();
                    if let Some(action) = self.app_action() {
                        // Twilio ended the call for the app: its stream gets `stop`.
                        let _ = self.send_stop(ws).await;
                        return LegEnd::App(action);
                    }
                    if now >= hang_up_at {
                        // The caller hangs up: Twilio sends `stop` and the server closes.
                        if let Err(end) = self.send_stop(ws).await {
                            return end;
                        }
                        stop_sent = Some(now);
                        continue;
                    }
                    self.ctx.stats.borrow_mut().lag_us.saturating_record(micros(now - scheduled));
                    if let Err(end) = self.send_played_marks(ws, now).await {
                        return end;
                    }
                    chunk += 1;
                    if let Err(end) = self.send_media(ws, chunk).await {
                        return end;
                    }
                }
                // Wakes the loop when a slow reader's pause ends (the ticks stop after `stop`).
                _ = sleep_until(pause.map_or_else(Instant::now, |(_, to)| to)), if !reading => {}
                _ = sleep_until(stop_sent.unwrap_or_else(Instant::now) + STOP_GRACE), if stop_sent.is_some() => {
                    // The server never closed after `stop`; hang up anyway.
                    let _ = ws.send(Message::Close(Some(CloseCode::Normal.into()))).await;
                    return LegEnd::HungUp;
                }
            }
        }
    }

    /// What the app did to this call through `--twilio-api`, if anything.
    fn app_action(&self) -> Option<AppAction> {
        let api = self.ctx.api.as_ref()?;
        api.take_action(&self.call.record.call_sid)
    }

    async fn send_stop(&mut self, ws: &mut Ws) -> Result<(), LegEnd> {
        let stop = TwilioFrame::Stop {
            sequence_number: self.next_sequence(),
            stream_sid: &self.stream_sid,
            stop: Stop {
                account_sid: self.ctx.account_sid.clone(),
                call_sid: self.call.record.call_sid.clone(),
            },
        };
        ws.send(Message::Text(stop.to_json().into()))
            .await
            .map_err(|_| LegEnd::Broken("stream write failed".into()))
    }

    /// `connected` then `start`, with the `<Parameter>`s as custom parameters.
    async fn open(&mut self, ws: &mut Ws) -> Result<(), LegEnd> {
        let connected = TwilioFrame::Connected {
            protocol: "Call",
            version: "1.0.0",
        };
        let start = Start {
            account_sid: self.ctx.account_sid.clone(),
            stream_sid: self.stream_sid.clone(),
            call_sid: self.call.record.call_sid.clone(),
            tracks: vec!["inbound".into()],
            custom_parameters: self
                .target
                .parameters
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>(),
            media_format: MediaFormat::default(),
        };
        let start = TwilioFrame::Start {
            sequence_number: self.next_sequence(),
            stream_sid: &self.stream_sid,
            start: &start,
        };
        for frame in [connected.to_json(), start.to_json()] {
            ws.send(Message::Text(frame.into()))
                .await
                .map_err(|_| LegEnd::Broken("stream write failed".into()))?;
        }
        Ok(())
    }

    /// One 20 ms frame: with `--say`, the utterance's next 20 ms (or silence); otherwise its
    /// first four bytes carry the frame number, so that the echo can be timed.
    async fn send_media(&mut self, ws: &mut Ws, chunk: u32) -> Result<(), LegEnd> {
        let utterance_ended = match &self.ctx.say {
            Some(say) => utterance_frame(&mut self.audio, say, self.ctx.say_every, chunk),
            None => {
                self.audio[..4].copy_from_slice(&chunk.to_le_bytes());
                false
            }
        };
        self.payload.clear();
        STANDARD.encode_string(self.audio, &mut self.payload);
        let timestamp = ((chunk - 1) * 20).to_string();
        let chunk_text = chunk.to_string();
        let frame = TwilioFrame::Media {
            sequence_number: self.next_sequence(),
            stream_sid: &self.stream_sid,
            media: Media {
                track: Some("inbound".into()),
                chunk: Some(chunk_text.as_str().into()),
                timestamp: Some(timestamp.as_str().into()),
                payload: self.payload.as_str().into(),
            },
        };
        let json = frame.to_json();
        ws.send(Message::Text(json.into()))
            .await
            .map_err(|_| LegEnd::Broken("stream write failed".into()))?;
        if self.in_flight.len() == MAX_IN_FLIGHT {
            // A server that does not echo (a voice agent) must not grow this without bound.
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((chunk, Instant::now()));
        if utterance_ended {
            self.reply_wait = Some(Instant::now());
        }
        self.sent += 1;
        self.call.record.frames_sent += 1;
        self.ctx.stats.borrow_mut().frames_sent += 1;
        Ok(())
    }

    /// Twilio answers a `mark` once the audio sent before it has played.
    async fn send_played_marks(&mut self, ws: &mut Ws, now: Instant) -> Result<(), LegEnd> {
        while let Some(name) = self.playback.next_played(now) {
            let mark = TwilioFrame::Mark {
                sequence_number: self.next_sequence(),
                stream_sid: &self.stream_sid,
                mark: Mark { name },
            };
            ws.send(Message::Text(mark.to_json().into()))
                .await
                .map_err(|_| LegEnd::Broken("stream write failed".into()))?;
        }
        Ok(())
    }

    fn on_server_frame(&mut self, text: &[u8]) {
        let now = Instant::now();
        let Ok(frame) = std::str::from_utf8(text).map(ServerFrame::parse) else {
            return;
        };
        match frame {
            Ok(ServerFrame::Media { media, .. }) => {
                self.echoed += 1;
                self.call.record.frames_echoed += 1;
                let mut stats = self.ctx.stats.borrow_mut();
                stats.frames_echoed += 1;
                let model = self.ctx.model.as_ref();
                let sent = model.and_then(|m| m.sent_at(&media.payload));
                // With a stand-in model, a reply is its stamped audio: GPT-Live's silence
                // between replies is audio too, and answers nothing.
                if model.is_none() || sent.is_some() {
                    if let Some(ended) = self.reply_wait.take() {
                        let waited = micros(now - ended);
                        stats.reply_us.saturating_record(waited);
                        self.call.record.reply_ms.push((waited / 100) as f64 / 10.0);
                    }
                }
                if let Some(sent) = sent {
                    stats
                        .model_us
                        .saturating_record(micros(now.into_std().saturating_duration_since(sent)));
                }
                if let Some(heard) = &mut self.call.heard {
                    if let Ok(audio) = STANDARD.decode(media.payload.as_bytes()) {
                        heard.play(now, &audio);
                    }
                }
                let timed = self.ctx.say.is_none().then(|| frame_number(&media.payload));
                if let Some(chunk) = timed.flatten() {
                    // Echoes come back in order: anything older than this one was lost.
                    while self.in_flight.front().is_some_and(|(c, _)| *c < chunk) {
                        self.in_flight.pop_front();
                    }
                    if let Some((_, sent)) = self.in_flight.front().filter(|(c, _)| *c == chunk) {
                        // A slow reader's own pause is not the server's round trip.
                        if self.call.plan.is_none_or(|p| p.kind != Kind::SlowReader) {
                            stats.rtt_us.saturating_record(micros(now - *sent));
                        }
                        self.in_flight.pop_front();
                    }
                }
                if let Some(started) = self.call.handoff_started.take() {
                    stats
                        .handoff_gap_us
                        .saturating_record(micros(now - started));
                }
                let audio = Duration::from_micros(media.payload.len() as u64 * 3 / 4 * 125);
                self.playback.queue_audio(now, audio);
            }
            Ok(ServerFrame::Mark { mark, .. }) => self.playback.mark(now, mark.name),
            Ok(ServerFrame::Clear { .. }) => {
                self.playback.clear(now);
                if let Some(heard) = &mut self.call.heard {
                    heard.clear(now);
                }
            }
            Err(_) => {}
        }
    }
}

/// `--say`: fills `frame` with the `chunk`th 20 ms of the stream's audio: the utterance from the
/// stream's start and again every `every`, silence between. True when this frame ends it.
fn utterance_frame(
    frame: &mut [u8; FRAME_BYTES],
    say: &[u8],
    every: Option<Duration>,
    chunk: u32,
) -> bool {
    let cycle = every.map_or(usize::MAX, |e| {
        (e.as_millis() / FRAME_INTERVAL.as_millis()).max(1) as usize
    });
    let at = (chunk as usize - 1) % cycle * FRAME_BYTES;
    frame.fill(SILENCE);
    let Some(rest) = say.get(at..).filter(|r| !r.is_empty()) else {
        return false;
    };
    let n = rest.len().min(FRAME_BYTES);
    frame[..n].copy_from_slice(&rest[..n]);
    n == rest.len()
}

/// The frame number callsim wrote into the first four audio bytes, read back from an echo.
fn frame_number(payload_base64: &str) -> Option<u32> {
    // 8 base64 characters decode to the first 6 bytes without decoding the rest.
    let head = STANDARD.decode(payload_base64.get(..8)?).ok()?;
    Some(u32::from_le_bytes(head.get(..4)?.try_into().ok()?))
}

fn describe_close(reason: Option<&CloseReason>) -> String {
    match reason {
        Some(r) => {
            let code: u16 = r.code.into();
            match &r.description {
                Some(d) if !d.is_empty() => format!("{code} {d}"),
                _ => code.to_string(),
            }
        }
        None => "closed without a code".into(),
    }
}

/// The caller's loudspeaker: audio from the server plays in order, in real time; a mark is
/// "played" once the audio queued before it has.
#[derive(Debug, Default)]
pub struct Playback {
    playing_until: Option<Instant>,
    marks: VecDeque<(Instant, String)>,
}

impl Playback {
    pub fn queue_audio(&mut self, now: Instant, audio: Duration) {
        let from = self.playing_until.filter(|t| *t > now).unwrap_or(now);
        self.playing_until = Some(from + audio);
    }

    pub fn mark(&mut self, now: Instant, name: String) {
        let at = self.playing_until.filter(|t| *t > now).unwrap_or(now);
        self.marks.push_back((at, name));
    }

    /// `clear` drops the queued audio; its marks come back at once, as Twilio does.
    pub fn clear(&mut self, now: Instant) {
        self.playing_until = None;
        for (at, _) in &mut self.marks {
            *at = now;
        }
    }

    pub fn next_played(&mut self, now: Instant) -> Option<String> {
        if self.marks.front()?.0 <= now {
            self.marks.pop_front().map(|(_, name)| name)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_like_a_browser() {
        let base = "http://h:8080/voice/incoming-call?attempt=1";
        assert_eq!(resolve(base, "https://o/x?a=2"), "https://o/x?a=2");
        assert_eq!(
            resolve(base, "/incoming-call?attempt=2"),
            "http://h:8080/incoming-call?attempt=2"
        );
        assert_eq!(resolve(base, "next?a=1"), "http://h:8080/voice/next?a=1");
        assert_eq!(resolve("http://h", "next"), "http://h/next");
    }

    #[test]
    fn an_utterance_plays_from_the_start_and_repeats() {
        let say: Vec<u8> = (0..400).map(|i| (i % 200) as u8).collect(); // 50 ms
        let mut frame = [0u8; FRAME_BYTES];
        let every = Some(Duration::from_millis(100)); // 5 frames
        let ends: Vec<bool> = (1..=10)
            .map(|chunk| utterance_frame(&mut frame, &say, every, chunk))
            .collect();
        assert_eq!(
            ends,
            [false, false, true, false, false, false, false, true, false, false]
        );
        utterance_frame(&mut frame, &say, every, 3);
        assert_eq!(frame[..80], say[320..]);
        assert!(frame[80..].iter().all(|&b| b == SILENCE));
        utterance_frame(&mut frame, &say, every, 6);
        assert_eq!(frame[..], say[..160]);
        // Said once: silence after.
        assert!(!utterance_frame(&mut frame, &say, None, 8));
        assert!(frame.iter().all(|&b| b == SILENCE));
    }

    #[test]
    fn an_echo_tells_which_frame_it_was() {
        let mut audio = [0xffu8; FRAME_BYTES];
        audio[..4].copy_from_slice(&123_456u32.to_le_bytes());
        assert_eq!(frame_number(&STANDARD.encode(audio)), Some(123_456));
        assert_eq!(frame_number("abc"), None);
    }

    #[test]
    fn marks_come_back_once_the_audio_before_them_has_played() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Playback::default();
        p.mark(t0, "before-audio".into());
        p.queue_audio(t0, ms(20));
        p.queue_audio(t0, ms(20));
        p.mark(t0, "after-40ms".into());
        assert_eq!(p.next_played(t0).as_deref(), Some("before-audio"));
        assert_eq!(p.next_played(t0 + ms(39)), None);
        assert_eq!(p.next_played(t0 + ms(40)).as_deref(), Some("after-40ms"));
        // Audio arriving after a silence starts playing when it arrives.
        p.queue_audio(t0 + ms(100), ms(20));
        p.mark(t0 + ms(100), "late".into());
        assert_eq!(p.next_played(t0 + ms(119)), None);
        assert_eq!(p.next_played(t0 + ms(120)).as_deref(), Some("late"));
    }

    #[test]
    fn clear_returns_pending_marks_at_once() {
        let t0 = Instant::now();
        let mut p = Playback::default();
        p.queue_audio(t0, Duration::from_secs(5));
        p.mark(t0, "m1".into());
        assert_eq!(p.next_played(t0), None);
        p.clear(t0 + Duration::from_millis(1));
        assert_eq!(
            p.next_played(t0 + Duration::from_millis(1)).as_deref(),
            Some("m1")
        );
    }
}
