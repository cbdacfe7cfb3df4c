//! One actor per call: owns the stream's socket, its `start` data, its timers, its app, the app's
//! upstream and the call's REST call control. Its life is one [`CallState`]; every event (a
//! Twilio frame, an upstream frame, a REST answer, a timer, a drain) moves it through that type's
//! transitions, which live in this file:
//!
//! - `protocol.rs`: the Twilio stream protocol (inbound frames, the bounded outbound queue);
//! - `upstream.rs`: the app's upstream WebSocket as the call drives it;
//! - `control.rs`: ending a call through Twilio's REST API;
//! - `recording.rs`: `RECORD_CALLS`, Twilio recording the call (once per call);
//! - `answered.rs`: an outbound call's answering-machine detection result, read from Twilio;
//! - `http.rs`: an app's HTTP requests (the agent's tools).
//!
//! The call's [`CallSlot`] is a field, so the slot is released when the actor stops, whatever
//! stopped it; the actor does not stop while a REST call update of the call is in flight, so a
//! drain waits for it (a recording request is not waited for: it runs beside the call).

mod answered;
mod control;
mod http;
mod protocol;
mod recording;
mod upstream;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessageStream, CloseCode, CloseReason, Message};
use bytestring::ByteString;

use crate::call::handler::{Call, CallEnd, CallHandler, EndRequest, HandlerError, Requests};
use crate::call::outbound::OutboundQueue;
use crate::call::supervisor::{Attach, CallSlot, CallSupervisor, CloseCall};
use crate::metrics::{MediaCounts, Metrics};
use crate::records::recording::RecordingSettings;
use crate::records::{CallRecords, Recorder};
use crate::twilio::rest::{CallControl, CallUpdate};
use crate::twilio::signature::StreamTokens;

use self::upstream::UpstreamLink;

/// Logs about this call, with its CallSid and StreamSid as structured fields.
macro_rules! call_log {
    ($session:expr, $level:ident, $($fmt:tt)+) => {{
        let (call_sid, stream_sid) = $session.sids();
        log::log!(log::Level::$level, call_sid = call_sid, stream_sid = stream_sid; $($fmt)+);
    }};
}
pub(crate) use call_log;

pub use self::answered::{poll_answered_by, ANSWERED_BY_POLL};
pub use self::protocol::MAX_FRAME_BYTES;
pub use self::recording::{ensure_recording, RecordingOutcome};
pub use crate::call::handler::EndReason;

/// How long a closing stream may take to flush its close frame before the actor stops anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The same for a peer already known not to read: its close frame will not get through either.
const STALLED_CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    /// Where the call's records go (`CALL_EVENTS_URL`); `None`: no records.
    pub recorder: Option<Recorder>,
    /// `RECORD_CALLS`: Twilio records the call (through `control`); `None`: it does not.
    pub recording: Option<RecordingSettings>,
    /// `AMD_GREETING_WAIT_MS`: how long an outbound call with detection waits for its answer.
    pub amd_wait: Duration,
}

/// What ended a call whose REST `update` had been sent when the stream ended: Twilio ends the
/// stream because the update took effect, so the app's action is the reason.
fn reason_of_update(update: &CallUpdate) -> EndReason {
    match update {
        CallUpdate::Transfer { .. } => EndReason::Transferred,
        CallUpdate::HangUp | CallUpdate::SayAndHangUp { .. } => EndReason::HungUp,
    }
}

fn transfer_target(update: &CallUpdate) -> Option<String> {
    match update {
        CallUpdate::Transfer { to } => Some(to.clone()),
        _ => None,
    }
}

/// Where a call is in its life. Only the transitions below move it:
///
/// ```text
///                 start                     app ends the call (REST)
///  AwaitingStart ───────▶ Live ─────────────────────────────────────▶ Ending
///        │                 │ ▲  transfer failed: the app hears it, then     │ │
///        │                 │ └──── a queued end request (if any) runs ──────┘ │ REST done (hung up,
///        │                 │                                                  │ transferred), or
///        │ stop, close,    │ stop, close, timeouts, errors, not reading,     │ stop / close / gone
///        │ timeout, error  │ fail-over, superseded, hand-off (drain)         │ (never a hand-off)
///        ▼                 ▼                                                  ▼
///      Closing { reason, code }: the app has heard `on_end` (once), the close frame is queued,
///      the upstream is closing ──▶ the actor stops once the Twilio side is flushed (or gone),
///      the upstream is done and no REST request is in flight (a grace timer bounds the first
///      two, the request's own timeout the third)
/// ```
#[derive(Debug)]
enum CallState {
    /// The socket is open; Twilio's `start` has not come.
    AwaitingStart,
    /// Streaming: frames flow both ways, the app runs.
    Live,
    /// The app asked Twilio's REST API to end the call and the request is in flight. Audio
    /// still flows (the goodbye plays on); a drain does not hand this call off.
    Ending {
        update: CallUpdate,
        /// An end request the app made meanwhile: it runs if this one leaves the call up.
        queued: Option<EndRequest>,
    },
    /// The call is over; what is left is flushing.
    Closing(Closing),
}

#[derive(Debug)]
struct Closing {
    reason: EndReason,
    code: u16,
    /// The Twilio side has nothing more to send (its close is handed over, or it is gone).
    twilio_done: bool,
    /// A REST request of this call has not answered yet: the actor waits for it.
    rest_in_flight: bool,
    /// The grace timer fired: stop as soon as no REST request is in flight.
    grace_over: bool,
}

/// The Twilio ids of a started call.
struct Sids {
    stream_sid: String,
    call_sid: String,
    /// `start.accountSid`, for REST call control.
    account_sid: String,
}

type Outbound = OutboundQueue<actix_ws::Session, Message>;

pub struct CallSession {
    /// Held, never read: dropping it with the actor releases the supervisor's slot.
    slot: CallSlot,
    supervisor: Addr<CallSupervisor>,
    handler: Box<dyn CallHandler>,
    settings: SessionSettings,
    state: CallState,
    /// Set by `start`.
    sids: Option<Sids>,
    /// The app's upstream WebSocket.
    upstream: UpstreamLink,
    /// What the app's last callback asked for besides Twilio frames.
    requests: Requests,
    /// The Twilio frame being handled (shared bytes), for apps that relay it as it is.
    inbound_frame: Option<ByteString>,
    /// Frames on their way to the socket, bounded in bytes; `FlushOutbound` drains it.
    outbound: Outbound,
    /// The socket's inbound frames; the context polls them through `Inbound`. Shared so that
    /// a peer closed for not reading can be set aside unread (see `park_inbound`).
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
    /// The first `MAX_DTMF_LOG` digits, for the end-of-call log; `dtmf_count` counts all.
    dtmf: String,
    dtmf_count: u64,
    marks: u64,
    /// The call's records, from its `start` (with `CALL_EVENTS_URL`).
    records: Option<CallRecords>,
    /// Where a transfer that ended the call went (for the record).
    transfer_to: Option<String>,
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
            state: CallState::AwaitingStart,
            sids: None,
            upstream: UpstreamLink::Pending {
                frames: Vec::new(),
                bytes: 0,
                connecting: false,
            },
            requests: Requests::default(),
            inbound_frame: None,
            outbound: OutboundQueue::new(ws, settings.outbound_cap),
            inbound: Rc::new(RefCell::new(Some(protocol::limit(inbound)))),
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
            records: None,
            transfer_to: None,
            settings,
        }
    }

    /// The CallSid and StreamSid every log line about this call carries ("-" before `start`).
    fn sids(&self) -> (&str, &str) {
        match &self.sids {
            None => ("-", "-"),
            Some(s) => (&s.call_sid, &s.stream_sid),
        }
    }

    fn is_closing(&self) -> bool {
        matches!(self.state, CallState::Closing(_))
    }

    /// Ends the call: the app hears how (once), the stream is closed with `code`, the upstream
    /// is closed. A no-op once closing. A call whose REST update is in flight keeps waiting for
    /// it (the update's action becomes the reason when Twilio ends the stream meanwhile).
    fn close(&mut self, ctx: &mut Context<Self>, why: EndReason, code: u16, reason: &str) {
        let why = match (&self.state, why) {
            (CallState::Closing(_), _) => return,
            (CallState::Ending { update, .. }, EndReason::Stop | EndReason::ClientClosed) => {
                self.transfer_to = transfer_target(update);
                reason_of_update(update)
            }
            (_, why) => why,
        };
        if why != EndReason::Stop {
            call_log!(self, Info, "closing {code} ({reason})");
        }
        self.enter_closing(ctx, why, code, false);
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
        ctx.run_later(grace, |act, ctx| {
            if let CallState::Closing(closing) = &mut act.state {
                closing.grace_over = true;
            }
            act.maybe_stop(ctx);
        });
    }

    /// The Twilio socket is gone (no close frame can be sent): the app still hears the end and
    /// its upstream is still closed properly before the actor stops.
    fn twilio_gone(&mut self, ctx: &mut Context<Self>) {
        if !self.is_closing() {
            let why = match &self.state {
                CallState::Ending { update, .. } => {
                    self.transfer_to = transfer_target(update);
                    reason_of_update(update)
                }
                _ => EndReason::ClientGone,
            };
            self.enter_closing(ctx, why, 1006, true);
            ctx.run_later(CLOSE_GRACE, |act, ctx| {
                if let CallState::Closing(closing) = &mut act.state {
                    closing.grace_over = true;
                }
                act.maybe_stop(ctx);
            });
        }
        if let CallState::Closing(closing) = &mut self.state {
            closing.twilio_done = true;
        }
        self.maybe_stop(ctx);
    }

    /// The transition into `Closing`: tells the app how the call ended (once), sends what it
    /// queued for its upstream, and closes the upstream (1000 unless the app chose a code).
    fn enter_closing(
        &mut self,
        ctx: &mut Context<Self>,
        reason: EndReason,
        code: u16,
        twilio_done: bool,
    ) {
        let rest_in_flight = matches!(self.state, CallState::Ending { .. });
        let was_streaming = !matches!(self.state, CallState::AwaitingStart);
        self.state = CallState::Closing(Closing {
            reason,
            code,
            twilio_done,
            rest_in_flight,
            grace_over: false,
        });
        if was_streaming {
            let end = CallEnd { reason, code };
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

    /// Stops the actor once a closing call has nothing left to send on either side and no
    /// REST request in flight (past the grace, only the REST request is waited for).
    fn maybe_stop(&mut self, ctx: &mut Context<Self>) {
        let CallState::Closing(closing) = &self.state else {
            return;
        };
        let flushed = closing.twilio_done && self.upstream.is_done();
        if !closing.rest_in_flight && (flushed || closing.grace_over) {
            ctx.stop();
        }
    }

    /// An app's way to end its call: the transition out of `Live` (or a request queued while
    /// another is in flight).
    fn end_request(&mut self, end: EndRequest, ctx: &mut Context<Self>) {
        match &mut self.state {
            CallState::Closing(_) | CallState::AwaitingStart => {}
            CallState::Ending { queued, .. } => {
                let first = queued.is_none();
                queued.get_or_insert(end);
                if first {
                    call_log!(
                        self,
                        Info,
                        "an end request waits for the call update in flight"
                    );
                }
            }
            CallState::Live => match end {
                EndRequest::FailOver(reason) => {
                    call_log!(self, Warn, "app fails the call over: {reason}");
                    self.close(ctx, EndReason::FailedOver, 1011, &reason);
                }
                EndRequest::Control(update) => self.send_control(update, ctx),
            },
        }
    }

    /// Runs one handler callback and queues what it sent.
    fn dispatch(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut dyn CallHandler, &mut Call<'_>) -> Result<(), HandlerError>,
    ) -> Result<(), HandlerError> {
        let Some(sids) = &self.sids else {
            return Ok(());
        };
        let mut call = Call::new(
            &sids.stream_sid,
            &sids.call_sid,
            self.inbound_frame.as_ref(),
            &mut self.out_buf,
            &mut self.counts,
            &mut self.requests,
        )
        .with_record(self.records.as_mut());
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
            if !self.is_closing() {
                self.connect_upstream(request, ctx);
            }
        }
        if let Some((code, reason)) = self.requests.close_upstream.take() {
            if self.is_closing() {
                self.requests.close_upstream = Some((code, reason));
            } else {
                self.close_upstream(code, &reason);
            }
        }
        for post in std::mem::take(&mut self.requests.http) {
            if !self.is_closing() {
                self.http_post(post, ctx);
            }
        }
        for (id, delay) in std::mem::take(&mut self.requests.timers) {
            if !self.is_closing() {
                ctx.run_later(delay, move |act, ctx| {
                    if !act.is_closing() {
                        let result = act.dispatch(ctx, |h, call| h.on_timer(id, call));
                        act.after_handler(ctx, result);
                    }
                });
            }
        }
        if let Some(end) = self.requests.end.take() {
            self.end_request(end, ctx);
        }
    }
}

impl Actor for CallSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.supervisor.do_send(Attach {
            slot: self.slot.id(),
            session: ctx.address().recipient(),
        });
        ctx.spawn(protocol::FlushOutbound);
        ctx.add_stream(protocol::Inbound(self.inbound.clone()));
        let start_timeout = self.settings.start_timeout;
        ctx.run_later(start_timeout, move |act, ctx| {
            if matches!(act.state, CallState::AwaitingStart) {
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
            let streaming = matches!(act.state, CallState::Live | CallState::Ending { .. });
            if streaming && act.last_rx.elapsed() >= idle {
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
        if !self.is_closing() {
            // Stopped without a close (the connection failed): the app still hears it, once.
            self.enter_closing(ctx, EndReason::ClientGone, 1006, true);
        }
        let CallState::Closing(Closing { reason, code, .. }) = self.state else {
            unreachable!("entered above")
        };
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
        if let Some(records) = self.records.take() {
            let counts = &self.counts;
            records.end(crate::records::Ending {
                reason,
                code,
                transfer_to: self.transfer_to.take(),
                frames: crate::records::Frames {
                    in_: counts.frames_in,
                    out: counts.frames_out,
                    dropped_out: self.outbound.unsent(),
                    upstream_in: counts.upstream_in,
                    upstream_out: counts.upstream_out,
                    upstream_dropped: counts.upstream_dropped,
                },
            });
        }
    }
}

impl Handler<CloseCall> for CallSession {
    type Result = ();

    fn handle(&mut self, msg: CloseCall, ctx: &mut Self::Context) {
        let why = match msg {
            CloseCall::Superseded => EndReason::Superseded,
            CloseCall::Handoff => EndReason::HandedOff,
        };
        if why == EndReason::HandedOff {
            if let CallState::Ending { update, .. } = &self.state {
                // Handing it off would make Twilio run the `<Redirect>`: the call the app
                // ended would come back on another replica. It closes once its update answers.
                call_log!(
                    self,
                    Info,
                    "not handed off: its {} is in flight",
                    update.label()
                );
                return;
            }
        }
        let (code, reason) = msg.close();
        self.close(ctx, why, code, reason);
    }
}
