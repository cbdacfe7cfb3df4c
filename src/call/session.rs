//! One actor per call: owns the stream's socket, its `start` data, its timers and its handler.
//!
//! Inbound frames arrive as a stream attached to the actor's context; outbound frames wait in a
//! bounded [`OutboundQueue`] (a field of the actor) on their way into the actix-ws session. A
//! peer that does not take its frames is closed 1008 `not reading` when the queue is full. The
//! call's [`CallSlot`] is a field, so the slot is released when the actor stops, whatever
//! stopped it.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::fut::ActorFuture;
use actix::prelude::*;
use actix_ws::{
    AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Message, ProtocolError,
};
use base64::Engine;
use bytestring::ByteString;
use futures_util::{Stream, StreamExt};

use crate::call::handler::{
    Call, CallEnd, CallHandler, EndRequest, HandlerError, MediaChunk, Requests, UpstreamEvent,
};
use crate::call::outbound::OutboundQueue;
use crate::call::supervisor::{Attach, BindCall, CallSlot, CallSupervisor, CloseCall};
use crate::call::upstream::{self, UpstreamInput, UpstreamQueue, UpstreamState};
use crate::metrics::{MediaCounts, Metrics};
use crate::twilio::messages::StreamEvent;
use crate::twilio::rest::{CallControl, CallUpdate, ControlOutcome};

/// Logs about this call, with its CallSid and StreamSid as structured fields.
macro_rules! call_log {
    ($session:expr, $level:ident, $($fmt:tt)+) => {{
        let (call_sid, stream_sid) = $session.sids();
        log::log!(log::Level::$level, call_sid = call_sid, stream_sid = stream_sid; $($fmt)+);
    }};
}
use crate::http::socket::PEER_STALL_TIMEOUT;
use crate::twilio::signature::{unix_now, StreamTokens, STREAM_TOKEN_PARAM};

/// The largest frame a stream may send; Twilio's are well under 1 KiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// How long a closing stream may take to flush its close frame before the actor stops anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The same for a peer already known not to read: its close frame will not get through either.
const STALLED_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a parked inbound side outlives the kernel's cut (see `park_inbound`).
const PARKED_MARGIN: Duration = Duration::from_secs(5);
/// DTMF digits kept for the end-of-call log; a flood of `dtmf` events must not grow memory.
const MAX_DTMF_LOG: usize = 64;

/// What a session enforces, from the configuration.
#[derive(Clone)]
pub struct SessionSettings {
    pub start_timeout: Duration,
    pub idle_timeout: Duration,
    /// When set, `start` must carry a stream token minted for its CallSid.
    pub tokens: Option<StreamTokens>,
    /// Bytes of outbound frames a call may have waiting for its socket (`OUTBOUND_BUFFER_KIB`),
    /// on the Twilio side and on the app's upstream side alike.
    pub outbound_cap: usize,
    /// Twilio's REST API, for apps that hang up or transfer; `None` without credentials.
    pub control: Option<CallControl>,
}

/// Why a call ended; logged once at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Twilio sent `stop`.
    Stop,
    /// The peer closed the WebSocket without `stop`.
    ClientClosed,
    /// The connection dropped without a close frame.
    ClientGone,
    StartTimeout,
    IdleTimeout,
    ProtocolError,
    HandlerFailed,
    /// `start` carried no valid stream token for its CallSid.
    Unauthenticated,
    /// A newer stream of the same CallSid took over.
    Superseded,
    /// The replica is draining: closed so that Twilio redirects the call to a live replica.
    HandedOff,
    /// The peer left `OUTBOUND_BUFFER_KIB` of our frames unread.
    NotReading,
    /// The app hung up (or said a message and hung up) through Twilio's REST API.
    HungUp,
    /// The app transferred the call (`<Dial>` through REST).
    Transferred,
    /// The app gave the call up (its upstream is unavailable): closed 1011 so that Twilio
    /// redirects it to another replica.
    FailedOver,
}

impl EndReason {
    /// The `reason` label of `callvisor_calls_ended_total`, also used in the end-of-call log.
    pub fn label(self) -> &'static str {
        match self {
            EndReason::Stop => "stop",
            EndReason::ClientClosed => "client_closed",
            EndReason::ClientGone => "client_gone",
            EndReason::StartTimeout => "start_timeout",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::ProtocolError => "protocol_error",
            EndReason::HandlerFailed => "handler_failed",
            EndReason::Unauthenticated => "auth",
            EndReason::Superseded => "superseded",
            EndReason::HandedOff => "handoff",
            EndReason::NotReading => "not_reading",
            EndReason::HungUp => "hangup",
            EndReason::Transferred => "transfer",
            EndReason::FailedOver => "failed_over",
        }
    }
}

enum Phase {
    AwaitingStart,
    Streaming {
        stream_sid: String,
        call_sid: String,
    },
}

type Outbound = OutboundQueue<actix_ws::Session, Message>;

pub struct CallSession {
    /// Held, never read: dropping it with the actor releases the supervisor's slot.
    slot: CallSlot,
    supervisor: Addr<CallSupervisor>,
    handler: Box<dyn CallHandler>,
    settings: SessionSettings,
    phase: Phase,
    /// Set once the session decided to close: later frames are ignored.
    ending: Option<(EndReason, u16)>,
    /// The app has heard `on_end` (it hears it exactly once).
    app_ended: bool,
    /// The Twilio side has nothing more to send (its close is handed over, or it is gone).
    twilio_done: bool,
    /// The app's upstream: its bounded sending half, once open, and where it is.
    upstream: Option<UpstreamQueue>,
    upstream_state: UpstreamState,
    /// Frames the app sent before the upstream opened (bounded like the queue).
    upstream_pending: Vec<Message>,
    upstream_pending_bytes: usize,
    /// What the app's last callback asked for besides Twilio frames.
    requests: Requests,
    /// A REST update is in flight: later end requests are ignored.
    controlling: bool,
    /// `start.accountSid`, for REST call control.
    account_sid: String,
    /// The Twilio frame being handled (shared bytes), for apps that relay it as it is.
    inbound_frame: Option<ByteString>,
    /// Frames on their way to the socket, bounded in bytes; [`FlushOutbound`] drains it.
    outbound: Outbound,
    /// The socket's inbound frames; the context polls them through [`Inbound`]. Shared so that
    /// a peer closed for not reading can be set aside unread (see [`CallSession::park_inbound`]).
    inbound: Rc<RefCell<Option<AggregatedMessageStream>>>,
    /// For the idle timeout; refreshed on every inbound frame.
    last_rx: Instant,
    opened: Instant,
    /// Reused for each frame: decoded audio and the handler's outbound frames.
    audio_buf: Vec<u8>,
    out_buf: Vec<String>,
    /// This call's media counts; plain fields, so counting a frame touches nothing shared.
    counts: MediaCounts,
    /// What of `counts` is already in the shared metrics (reported every tick and at the end).
    reported: MediaCounts,
    metrics: Metrics,
    /// The first [`MAX_DTMF_LOG`] digits, for the end-of-call log; `dtmf_count` counts all.
    dtmf: String,
    dtmf_count: u64,
    marks: u64,
}

impl CallSession {
    pub fn new(
        slot: CallSlot,
        supervisor: Addr<CallSupervisor>,
        handler: Box<dyn CallHandler>,
        settings: SessionSettings,
        ws: actix_ws::Session,
        inbound: actix_ws::MessageStream,
        metrics: Metrics,
    ) -> Self {
        CallSession {
            slot,
            supervisor,
            handler,
            phase: Phase::AwaitingStart,
            ending: None,
            app_ended: false,
            twilio_done: false,
            upstream: None,
            upstream_state: UpstreamState::None,
            upstream_pending: Vec::new(),
            upstream_pending_bytes: 0,
            requests: Requests::default(),
            controlling: false,
            account_sid: String::new(),
            inbound_frame: None,
            outbound: OutboundQueue::new(ws, settings.outbound_cap),
            inbound: Rc::new(RefCell::new(Some(
                inbound
                    .max_frame_size(MAX_FRAME_BYTES)
                    .aggregate_continuations()
                    .max_continuation_size(MAX_FRAME_BYTES),
            ))),
            last_rx: Instant::now(),
            opened: Instant::now(),
            audio_buf: Vec::with_capacity(256),
            out_buf: Vec::with_capacity(4),
            counts: MediaCounts::default(),
            reported: MediaCounts::default(),
            metrics,
            dtmf: String::new(),
            dtmf_count: 0,
            marks: 0,
            settings,
        }
    }

    /// The CallSid and StreamSid every log line about this call carries ("-" before `start`).
    fn sids(&self) -> (&str, &str) {
        match &self.phase {
            Phase::AwaitingStart => ("-", "-"),
            Phase::Streaming {
                stream_sid,
                call_sid,
            } => (call_sid, stream_sid),
        }
    }

    /// Closes the stream with `code`, once; the actor stops when the close frame is flushed.
    fn close(&mut self, ctx: &mut Context<Self>, why: EndReason, code: u16, reason: &str) {
        if self.ending.is_some() {
            return;
        }
        self.ending = Some((why, code));
        if why != EndReason::Stop {
            call_log!(self, Info, "closing {code} ({reason})");
        }
        self.end_app(ctx, why, code);
        let stalled = why == EndReason::NotReading;
        // Frames queued for a peer that does not read are late audio: the close goes alone.
        self.outbound.close_with(
            Message::Close(Some(CloseReason {
                code: CloseCode::from(code),
                description: Some(reason.to_string()),
            })),
            stalled,
        );
        // A peer that never reads could keep the close frame unflushed forever.
        let grace = if stalled {
            STALLED_CLOSE_GRACE
        } else {
            CLOSE_GRACE
        };
        ctx.run_later(grace, |_, ctx| ctx.stop());
    }

    /// The Twilio socket is gone (no close frame can be sent): the app still hears the end and
    /// its upstream is still closed properly before the actor stops.
    fn twilio_gone(&mut self, ctx: &mut Context<Self>) {
        if self.ending.is_none() {
            self.ending = Some((EndReason::ClientGone, 1006));
            self.end_app(ctx, EndReason::ClientGone, 1006);
            ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
        }
        self.twilio_done = true;
        self.maybe_stop(ctx);
    }

    /// Tells the app how the call ended (once), sends what it queued for its upstream, and
    /// closes the upstream (1000 unless the app chose a code).
    fn end_app(&mut self, ctx: &mut Context<Self>, why: EndReason, code: u16) {
        if self.app_ended {
            return;
        }
        self.app_ended = true;
        if matches!(self.phase, Phase::Streaming { .. }) {
            let end = CallEnd {
                reason: why.label(),
                code,
            };
            let _ = self.dispatch(ctx, |h, call| {
                h.on_end(&end, call);
                Ok(())
            });
            self.flush_upstream_requests();
            // The call is ending: whatever else the app asked for no longer applies.
            self.requests.connect = None;
            self.requests.end = None;
        }
        let (code, reason) = self
            .requests
            .close_upstream
            .take()
            .unwrap_or((1000, String::new()));
        self.close_upstream(code, &reason);
    }

    fn close_upstream(&mut self, code: u16, reason: &str) {
        if let Some(queue) = self.upstream.as_mut() {
            queue.close_with(
                Message::Close(Some(CloseReason {
                    code: CloseCode::from(code),
                    description: (!reason.is_empty()).then(|| reason.to_string()),
                })),
                false,
            );
        }
        if self.upstream_state == UpstreamState::Connecting {
            // The handshake's answer finds the state Done and drops the socket.
            self.upstream_state = UpstreamState::Done;
        }
    }

    /// Stops the actor once a closing call has nothing left to send on either side.
    fn maybe_stop(&mut self, ctx: &mut Context<Self>) {
        let upstream_done = self.upstream.is_none();
        if self.ending.is_some() && self.twilio_done && upstream_done {
            ctx.stop();
        }
    }

    /// Queues a frame for the socket; a peer that left the whole queue unread is closed.
    fn send(&mut self, ctx: &mut Context<Self>, frame: Message) {
        if let Err(overflow) = self.outbound.push(frame) {
            self.not_reading(ctx, overflow.cap);
        }
    }

    fn not_reading(&mut self, ctx: &mut Context<Self>, cap: usize) {
        call_log!(
            self,
            Warn,
            "peer is not reading: {} KiB of frames waiting",
            cap / 1024
        );
        self.close(ctx, EndReason::NotReading, 1008, "not reading");
        self.park_inbound();
    }

    /// Stops reading a peer that does not read, and keeps its inbound side unread beyond this
    /// actor's life. Dropping it would put the HTTP layer into discard mode, reading the flood
    /// for as long as the peer sends it; unread, the peer's sends stall, and the kernel cuts the
    /// connection after `PEER_STALL_TIMEOUT` (TCP_USER_TIMEOUT). The parked stream holds at
    /// most the HTTP layer's 32 KiB read buffer.
    fn park_inbound(&mut self) {
        if let Some(stream) = self.inbound.borrow_mut().take() {
            actix_web::rt::spawn(async move {
                actix_web::rt::time::sleep(PEER_STALL_TIMEOUT + PARKED_MARGIN).await;
                drop(stream);
            });
        }
    }

    fn protocol_error(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        call_log!(self, Warn, "protocol error: {reason}");
        self.close(ctx, EndReason::ProtocolError, code, reason);
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let event = match StreamEvent::parse(text) {
            Ok(event) => event,
            Err(e) => return self.protocol_error(ctx, 1007, &e.to_string()),
        };
        let result = match (&self.phase, event) {
            (_, StreamEvent::Connected | StreamEvent::Unknown) => Ok(()),
            (Phase::AwaitingStart, StreamEvent::Start(start)) => {
                if let Some(tokens) = &self.settings.tokens {
                    let token = start.custom_parameters.get(STREAM_TOKEN_PARAM);
                    if let Err(e) =
                        tokens.check(token.map(String::as_str), &start.call_sid, unix_now())
                    {
                        // Before the handler or the supervisor hear of this call: a forged
                        // stream must not reach the voice backend nor supersede a real call.
                        call_log!(
                            self,
                            Warn,
                            "stream claiming {} refused: {e}",
                            start.call_sid
                        );
                        self.metrics.rejected("auth");
                        return self.close(ctx, EndReason::Unauthenticated, 1008, &e.to_string());
                    }
                }
                let (stream_sid, call_sid) = (start.stream_sid.clone(), start.call_sid.clone());
                self.account_sid = start.account_sid.clone();
                self.phase = Phase::Streaming {
                    stream_sid,
                    call_sid: call_sid.clone(),
                };
                call_log!(
                    self,
                    Info,
                    "call started: from={} to={} attempt={} tracks={:?}",
                    start.custom_parameters.get("From").map_or("?", |s| s),
                    start.custom_parameters.get("To").map_or("?", |s| s),
                    start.custom_parameters.get("attempt").map_or("?", |s| s),
                    start.tracks,
                );
                self.supervisor.do_send(BindCall {
                    slot: self.slot.id(),
                    call_sid,
                });
                self.dispatch(ctx, |h, out| h.on_start(&start, out))
            }
            (Phase::Streaming { .. }, StreamEvent::Start(_)) => {
                return self.protocol_error(ctx, 1008, "second start on one stream")
            }
            (_, StreamEvent::Stop) => {
                return self.close(ctx, EndReason::Stop, 1000, "stop");
            }
            (Phase::AwaitingStart, _) => {
                return self.protocol_error(ctx, 1008, "media, dtmf or mark before start")
            }
            (Phase::Streaming { .. }, StreamEvent::Media(media)) => {
                self.audio_buf.clear();
                if base64::engine::general_purpose::STANDARD
                    .decode_vec(media.payload.as_bytes(), &mut self.audio_buf)
                    .is_err()
                {
                    return self.protocol_error(ctx, 1007, "media payload is not valid base64");
                }
                self.counts.frames_in += 1;
                self.counts.bytes_in += self.audio_buf.len() as u64;
                let audio = std::mem::take(&mut self.audio_buf);
                let chunk = MediaChunk {
                    payload_base64: &media.payload,
                    audio: &audio,
                };
                let result = self.dispatch(ctx, |h, out| h.on_media(&chunk, out));
                self.audio_buf = audio;
                result
            }
            (Phase::Streaming { .. }, StreamEvent::Dtmf(dtmf)) => {
                call_log!(self, Debug, "dtmf {}", dtmf.digit);
                self.dtmf_count += 1;
                if self.dtmf.len() < MAX_DTMF_LOG {
                    self.dtmf
                        .extend(dtmf.digit.chars().take(MAX_DTMF_LOG - self.dtmf.len()));
                }
                self.dispatch(ctx, |h, out| h.on_dtmf(&dtmf.digit, out))
            }
            (Phase::Streaming { .. }, StreamEvent::Mark(mark)) => {
                call_log!(self, Debug, "mark {}", mark.name);
                self.marks += 1;
                self.dispatch(ctx, |h, out| h.on_mark(&mark.name, out))
            }
        };
        self.after_handler(ctx, result);
    }

    /// A callback's error fails the call (1011); else what it asked for is carried out.
    fn after_handler(&mut self, ctx: &mut Context<Self>, result: Result<(), HandlerError>) {
        if let Err(e) = result {
            call_log!(self, Error, "handler failed: {e}");
            self.close(ctx, EndReason::HandlerFailed, 1011, "handler failed");
            return;
        }
        self.apply_requests(ctx);
    }

    /// Carries out what the app's last callback asked for: upstream frames, opening or closing
    /// the upstream, ending the call.
    fn apply_requests(&mut self, ctx: &mut Context<Self>) {
        self.flush_upstream_requests();
        if let Some(request) = self.requests.connect.take() {
            if self.upstream_state == UpstreamState::None && self.ending.is_none() {
                self.upstream_state = UpstreamState::Connecting;
                let started = Instant::now();
                ctx.spawn(
                    upstream::connect(request)
                        .into_actor(self)
                        .map(move |result, act, ctx| act.upstream_connected(result, started, ctx)),
                );
            }
        }
        if let Some((code, reason)) = self.requests.close_upstream.take() {
            if self.ending.is_none() {
                self.close_upstream(code, &reason);
            } else {
                self.requests.close_upstream = Some((code, reason));
            }
        }
        if let Some(end) = self.requests.end.take() {
            self.end_request(end, ctx);
        }
    }

    /// Moves the frames the app sent to its upstream into the upstream's queue. The request
    /// list keeps its capacity, so a relay allocates nothing per frame here.
    fn flush_upstream_requests(&mut self) {
        if self.requests.upstream_out.is_empty() {
            return;
        }
        let mut frames = std::mem::take(&mut self.requests.upstream_out);
        for frame in frames.drain(..) {
            self.send_upstream(frame);
        }
        self.requests.upstream_out = frames;
    }

    fn send_upstream(&mut self, frame: Message) {
        use crate::call::outbound::WireSize;
        match (self.upstream_state, self.upstream.as_mut()) {
            (UpstreamState::Open, Some(queue)) => {
                if queue.push(frame).is_ok() {
                    self.counts.upstream_out += 1;
                } else {
                    self.counts.upstream_dropped += 1;
                    if self.counts.upstream_dropped == 1 {
                        call_log!(
                            self,
                            Warn,
                            "upstream is not keeping up: dropping frames to it"
                        );
                    }
                }
            }
            (UpstreamState::None | UpstreamState::Connecting, _) => {
                let size = frame.wire_size();
                if self.upstream_pending_bytes + size > self.settings.outbound_cap {
                    self.counts.upstream_dropped += 1;
                } else {
                    self.upstream_pending_bytes += size;
                    self.upstream_pending.push(frame);
                }
            }
            _ => self.counts.upstream_dropped += 1,
        }
    }

    fn upstream_connected(
        &mut self,
        result: Result<upstream::UpstreamSocket, String>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        if self.upstream_state != UpstreamState::Connecting {
            // The call ended meanwhile: dropping the socket closes it.
            return;
        }
        let event = match result {
            Ok(socket) => {
                call_log!(
                    self,
                    Info,
                    "upstream open in {} ms",
                    started.elapsed().as_millis()
                );
                let (sink, stream) = socket.split();
                // As a WebSocket client it closes by sending its close frame and waiting for
                // the upstream's; the upstream then ends the connection.
                let mut queue =
                    OutboundQueue::new(sink, self.settings.outbound_cap).without_shutdown();
                for frame in self.upstream_pending.drain(..) {
                    if queue.push(frame).is_ok() {
                        self.counts.upstream_out += 1;
                    } else {
                        self.counts.upstream_dropped += 1;
                    }
                }
                self.metrics
                    .upstream_connect
                    .observe(started.elapsed().as_secs_f64());
                self.upstream_pending_bytes = 0;
                self.upstream = Some(queue);
                self.upstream_state = UpstreamState::Open;
                ctx.spawn(FlushUpstream);
                ctx.add_message_stream(
                    stream
                        .map(UpstreamInput::Frame)
                        .chain(futures_util::stream::once(async { UpstreamInput::Ended })),
                );
                UpstreamEvent::Open
            }
            Err(why) => {
                call_log!(self, Warn, "upstream unreachable: {why}");
                self.metrics
                    .upstream_failures
                    .get_or_create(&[("reason", "unreachable")])
                    .inc();
                self.upstream_state = UpstreamState::Done;
                UpstreamEvent::Failed(why)
            }
        };
        self.upstream_event(event, ctx);
    }

    fn upstream_event(&mut self, event: UpstreamEvent, ctx: &mut Context<Self>) {
        if self.ending.is_some() {
            return;
        }
        if matches!(&event, UpstreamEvent::Closed { code, .. } if *code != 1000) {
            self.metrics
                .upstream_failures
                .get_or_create(&[("reason", "lost")])
                .inc();
        }
        let result = self.dispatch(ctx, |h, call| h.on_upstream(event, call));
        self.after_handler(ctx, result);
    }

    /// An app's way to end its call.
    fn end_request(&mut self, end: EndRequest, ctx: &mut Context<Self>) {
        if self.ending.is_some() || self.controlling {
            return;
        }
        match end {
            EndRequest::FailOver(reason) => {
                call_log!(self, Warn, "app fails the call over: {reason}");
                self.close(ctx, EndReason::FailedOver, 1011, &reason);
            }
            EndRequest::Control(update) => {
                let (Some(control), Phase::Streaming { call_sid, .. }) =
                    (self.settings.control.clone(), &self.phase)
                else {
                    call_log!(
                        self,
                        Error,
                        "cannot {}: no Twilio REST credentials (TWILIO_API_KEY_SID/SECRET or TWILIO_AUTH_TOKEN)",
                        update.label()
                    );
                    return self.close(ctx, EndReason::HandlerFailed, 1011, "no call control");
                };
                self.controlling = true;
                let (account, call_sid) = (self.account_sid.clone(), call_sid.clone());
                ctx.spawn(
                    async move {
                        let outcome = control.update(&account, &call_sid, &update).await;
                        (update, outcome)
                    }
                    .into_actor(self)
                    .map(|(update, outcome), act, ctx| act.control_done(update, outcome, ctx)),
                );
            }
        }
    }

    /// A REST update finished. A hang-up closes the stream whatever Twilio said (a failed one
    /// is logged and counted: the call then comes back through the `<Redirect>`); a transfer
    /// that failed leaves the call up and tells the app.
    fn control_done(
        &mut self,
        update: CallUpdate,
        outcome: ControlOutcome,
        ctx: &mut Context<Self>,
    ) {
        self.controlling = false;
        match update {
            CallUpdate::Transfer { .. } if outcome.succeeded() => {
                self.close(ctx, EndReason::Transferred, 1000, "transfer")
            }
            CallUpdate::Transfer { .. } => {
                if self.ending.is_none() {
                    let result =
                        self.dispatch(ctx, |h, call| h.on_control(&update, &outcome, call));
                    self.after_handler(ctx, result);
                }
            }
            CallUpdate::HangUp | CallUpdate::SayAndHangUp { .. } => {
                self.close(ctx, EndReason::HungUp, 1000, "hangup")
            }
        }
    }

    /// Runs one handler callback and queues what it sent.
    fn dispatch(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut dyn CallHandler, &mut Call<'_>) -> Result<(), HandlerError>,
    ) -> Result<(), HandlerError> {
        let Phase::Streaming {
            stream_sid,
            call_sid,
        } = &self.phase
        else {
            return Ok(());
        };
        let mut call = Call::new(
            stream_sid,
            call_sid,
            self.inbound_frame.as_ref(),
            &mut self.out_buf,
            &mut self.counts,
            &mut self.requests,
        );
        let result = f(self.handler.as_mut(), &mut call);
        let mut overflow = None;
        for frame in self.out_buf.drain(..) {
            if overflow.is_none() {
                overflow = self.outbound.push(Message::Text(frame.into())).err();
            }
        }
        if let Some(overflow) = overflow {
            self.not_reading(ctx, overflow.cap);
        }
        result
    }
}

impl Actor for CallSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.supervisor.do_send(Attach {
            slot: self.slot.id(),
            session: ctx.address().recipient(),
        });
        ctx.spawn(FlushOutbound);
        ctx.add_stream(Inbound(self.inbound.clone()));
        let start_timeout = self.settings.start_timeout;
        ctx.run_later(start_timeout, move |act, ctx| {
            if matches!(act.phase, Phase::AwaitingStart) {
                act.close(
                    ctx,
                    EndReason::StartTimeout,
                    1008,
                    &format!("no start within {}s", start_timeout.as_secs()),
                );
            }
        });
        let idle = self.settings.idle_timeout;
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.run_interval(tick, move |act, ctx| {
            act.counts.report(&mut act.reported, &act.metrics);
            if matches!(act.phase, Phase::Streaming { .. }) && act.last_rx.elapsed() >= idle {
                act.close(
                    ctx,
                    EndReason::IdleTimeout,
                    1001,
                    &format!("nothing received for {}s", idle.as_secs()),
                );
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let (reason, code) = self.ending.unwrap_or((EndReason::ClientGone, 1006));
        // Stopped without a close (the connection failed): the app still hears it, once.
        self.end_app(ctx, reason, code);
        let duration = self.opened.elapsed().as_secs_f64();
        self.metrics
            .calls_ended
            .get_or_create(&[("reason", reason.label())])
            .inc();
        self.metrics.call_duration.observe(duration);
        self.counts.report(&mut self.reported, &self.metrics);
        let MediaCounts {
            frames_in,
            frames_out,
            ..
        } = self.counts;
        call_log!(
            self,
            Info,
            "call ended: reason={} code={code} duration={duration:.1}s frames_in={frames_in} frames_out={frames_out} dtmf={:?}{} marks={} outbound_peak={}B upstream_dropped={}",
            reason.label(),
            self.dtmf,
            if self.dtmf_count > self.dtmf.len() as u64 {
                format!(" (+{} more)", self.dtmf_count - self.dtmf.len() as u64)
            } else {
                String::new()
            },
            self.marks,
            self.outbound.peak(),
            self.counts.upstream_dropped,
        );
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for CallSession {
    fn handle(&mut self, msg: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        if self.ending.is_some() {
            // Closing: only the peer's close frame matters now.
            if let Ok(AggregatedMessage::Close(_)) = msg {
                self.twilio_done = true;
                self.maybe_stop(ctx);
            }
            return;
        }
        self.last_rx = Instant::now();
        match msg {
            Ok(AggregatedMessage::Text(text)) => {
                self.inbound_frame = Some(text.clone());
                self.on_text(&text, ctx);
                self.inbound_frame = None;
            }
            Ok(AggregatedMessage::Binary(_)) => {
                self.protocol_error(ctx, 1003, "binary frames are not part of the protocol")
            }
            Ok(AggregatedMessage::Ping(bytes)) => self.send(ctx, Message::Pong(bytes)),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                let code = reason.as_ref().map_or(1000, |r| u16::from(r.code));
                self.close(ctx, EndReason::ClientClosed, code, "peer closed");
            }
            Err(ProtocolError::Overflow) => self.protocol_error(
                ctx,
                1009,
                &format!("frame larger than {MAX_FRAME_BYTES} bytes"),
            ),
            Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.protocol_error(ctx, 1007, "text frame is not valid UTF-8")
            }
            // actix-ws reports an oversized fragmented message this way.
            Err(ProtocolError::Io(e)) if e.to_string().contains("continuation size") => self
                .protocol_error(
                    ctx,
                    1009,
                    &format!("message larger than {MAX_FRAME_BYTES} bytes"),
                ),
            // The connection itself failed: nothing can be sent anymore.
            Err(ProtocolError::Io(_)) => self.twilio_gone(ctx),
            Err(e) => self.protocol_error(ctx, 1002, &format!("websocket error: {e}")),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The connection is gone: no close frame can be sent anymore.
        self.twilio_gone(ctx);
    }
}

/// The call's inbound frames, read through the shared cell; once the stream is parked the
/// actor hears nothing more from the socket.
struct Inbound(Rc<RefCell<Option<AggregatedMessageStream>>>);

impl Stream for Inbound {
    type Item = Result<AggregatedMessage, ProtocolError>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        match self.0.borrow_mut().as_mut() {
            Some(stream) => Pin::new(stream).poll_next(cx),
            // Parked: the actor is closing and stops on its own timer.
            None => Poll::Pending,
        }
    }
}

/// Moves the call's queued frames into its socket whenever the socket takes them. Once the
/// close frame is handed over (or the socket is gone) the Twilio side is done; the actor stops
/// when the app's upstream is done too.
struct FlushOutbound;

impl ActorFuture<CallSession> for FlushOutbound {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut CallSession,
        ctx: &mut Context<CallSession>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        match act.outbound.poll_flush(task) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                act.twilio_gone(ctx);
                Poll::Ready(())
            }
        }
    }
}

/// The same for the app's upstream: its queued frames go out, then its close.
struct FlushUpstream;

impl ActorFuture<CallSession> for FlushUpstream {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut CallSession,
        ctx: &mut Context<CallSession>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let Some(queue) = act.upstream.as_mut() else {
            return Poll::Ready(());
        };
        match queue.poll_flush(task) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                if result.is_ok() && act.upstream_state == UpstreamState::Open {
                    // Our close frame is out: the upstream's answer (or the close grace)
                    // finishes it.
                    return Poll::Ready(());
                }
                act.upstream = None;
                if result.is_err() && act.upstream_state == UpstreamState::Open {
                    act.upstream_state = UpstreamState::Done;
                    act.upstream_event(
                        UpstreamEvent::Closed {
                            code: 1006,
                            reason: "upstream connection lost".into(),
                        },
                        ctx,
                    );
                }
                act.maybe_stop(ctx);
                Poll::Ready(())
            }
        }
    }
}

impl Handler<UpstreamInput> for CallSession {
    type Result = ();

    fn handle(&mut self, input: UpstreamInput, ctx: &mut Self::Context) {
        use awc::ws::Frame;
        if self.upstream_state != UpstreamState::Open {
            return;
        }
        let event = match input {
            UpstreamInput::Frame(Ok(Frame::Text(text))) => {
                self.counts.upstream_in += 1;
                UpstreamEvent::Text(text)
            }
            UpstreamInput::Frame(Ok(Frame::Binary(data))) => {
                self.counts.upstream_in += 1;
                UpstreamEvent::Binary(data)
            }
            UpstreamInput::Frame(Ok(Frame::Ping(data))) => {
                self.send_upstream(Message::Pong(data));
                return;
            }
            UpstreamInput::Frame(Ok(Frame::Pong(_))) => return,
            UpstreamInput::Frame(Ok(Frame::Close(reason))) => {
                self.upstream_state = UpstreamState::Done;
                match self.upstream.as_mut() {
                    // The answer to our close: the closing handshake is complete.
                    Some(queue) if queue.is_closing() => self.upstream = None,
                    // Theirs: answer it; the queue is dropped once the answer is out.
                    Some(queue) => queue.close_with(Message::Close(reason.clone()), false),
                    None => {}
                }
                if self.ending.is_some() {
                    return self.maybe_stop(ctx);
                }
                UpstreamEvent::Closed {
                    code: reason.as_ref().map_or(1005, |r| u16::from(r.code)),
                    reason: reason.and_then(|r| r.description).unwrap_or_default(),
                }
            }
            UpstreamInput::Frame(Ok(Frame::Continuation(_))) => {
                self.upstream_state = UpstreamState::Done;
                self.close_upstream(1003, "fragmented messages are not supported");
                UpstreamEvent::Closed {
                    code: 1003,
                    reason: "fragmented messages are not supported".into(),
                }
            }
            UpstreamInput::Frame(Err(e)) => {
                self.upstream_state = UpstreamState::Done;
                self.upstream = None;
                UpstreamEvent::Closed {
                    code: 1006,
                    reason: format!("upstream connection failed: {e}"),
                }
            }
            UpstreamInput::Ended => {
                self.upstream_state = UpstreamState::Done;
                self.upstream = None;
                UpstreamEvent::Closed {
                    code: 1006,
                    reason: "upstream connection ended without a close frame".into(),
                }
            }
        };
        self.upstream_event(event, ctx);
        self.maybe_stop(ctx);
    }
}

impl Handler<CloseCall> for CallSession {
    type Result = ();

    fn handle(&mut self, msg: CloseCall, ctx: &mut Self::Context) {
        let why = match msg {
            CloseCall::Superseded => EndReason::Superseded,
            CloseCall::Handoff => EndReason::HandedOff,
        };
        let (code, reason) = msg.close();
        self.close(ctx, why, code, reason);
    }
}
