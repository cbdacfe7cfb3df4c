//! The Twilio side of a call: Media Streams frames in (`connected`, `start`, `media`, `dtmf`,
//! `mark`, `stop`), each checked and handed to the app, and frames out through the bounded
//! [`OutboundQueue`](crate::call::outbound::OutboundQueue). A peer that does not take its frames
//! is closed 1008 `not reading` when the queue is full.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::fut::ActorFuture;
use actix::prelude::*;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, Message, ProtocolError};
use base64::Engine;
use futures_util::Stream;

use super::{call_log, CallSession, CallState, EndReason, Sids};
use crate::call::handler::MediaChunk;
use crate::call::supervisor::BindCall;
use crate::http::socket::PEER_STALL_TIMEOUT;
use crate::records::{CallIdentity, CallRecords};
use crate::twilio::messages::StreamEvent;
use crate::twilio::signature::{unix_now, BOUND_PARAM, STREAM_TOKEN_PARAM};

/// The largest frame a stream may send; Twilio's are well under 1 KiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// How long a parked inbound side outlives the kernel's cut (see `park_inbound`).
const PARKED_MARGIN: Duration = Duration::from_secs(5);
/// DTMF digits kept for the end-of-call log; a flood of `dtmf` events must not grow memory.
const MAX_DTMF_LOG: usize = 64;

/// The socket's inbound frames, with the frame and message size limits applied.
pub(super) fn limit(inbound: actix_ws::MessageStream) -> AggregatedMessageStream {
    inbound
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES)
}

impl CallSession {
    /// Queues a frame for the socket; a peer that left the whole queue unread is closed.
    pub(super) fn send(&mut self, ctx: &mut Context<Self>, frame: Message) {
        if let Err(overflow) = self.outbound.push(frame) {
            self.not_reading(ctx, overflow.cap);
        }
    }

    pub(super) fn not_reading(&mut self, ctx: &mut Context<Self>, cap: usize) {
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
        let awaiting_start = matches!(self.state, CallState::AwaitingStart);
        let result = match (awaiting_start, event) {
            (_, StreamEvent::Connected | StreamEvent::Unknown) => Ok(()),
            (true, StreamEvent::Start(mut start)) => {
                if let Some(tokens) = &self.settings.tokens {
                    let token = start.custom_parameters.get(STREAM_TOKEN_PARAM);
                    match tokens.check(token.map(String::as_str), &start.call_sid, unix_now()) {
                        // What the token binds (the agent the webhook chose) is what the app
                        // sees, whatever parameter of that name the stream claims.
                        Ok(Some(bound)) => {
                            start.custom_parameters.insert(BOUND_PARAM.into(), bound);
                        }
                        Ok(None) => {
                            start.custom_parameters.remove(BOUND_PARAM);
                        }
                        Err(e) => {
                            // Before the handler or the supervisor hear of this call: a forged
                            // stream must not reach the voice backend nor supersede a real call.
                            call_log!(
                                self,
                                Warn,
                                "stream claiming {} refused: {e}",
                                start.call_sid
                            );
                            self.metrics.rejected("auth");
                            return self.close(
                                ctx,
                                EndReason::Unauthenticated,
                                1008,
                                &e.to_string(),
                            );
                        }
                    }
                }
                self.sids = Some(Sids {
                    stream_sid: start.stream_sid.clone(),
                    call_sid: start.call_sid.clone(),
                    account_sid: start.account_sid.clone(),
                });
                self.state = CallState::Live;
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
                    call_sid: start.call_sid.clone(),
                });
                self.records = self.settings.recorder.as_ref().map(|recorder| {
                    let param = |name: &str| start.custom_parameters.get(name).cloned();
                    CallRecords::new(
                        recorder,
                        CallIdentity {
                            call_sid: start.call_sid.clone(),
                            stream_sid: start.stream_sid.clone(),
                            account_sid: start.account_sid.clone(),
                            from: param("From"),
                            to: param("To"),
                            app: recorder.app,
                            // The app names it (`Call::record`), in its start.
                            agent: None,
                            replica: recorder.replica.clone(),
                            attempt: param("attempt").and_then(|a| a.parse().ok()).unwrap_or(1),
                            direction: match param(crate::outbound::DIRECTION_PARAM).as_deref() {
                                Some("outbound") => "outbound",
                                _ => "inbound",
                            },
                        },
                    )
                });
                let result = self.dispatch(ctx, |h, out| h.on_start(&start, out));
                // After the app's start: the agent it chose is in the record.
                if let Some(records) = &mut self.records {
                    records.started();
                }
                // A call whose app failed at its start is failed over: its next stream records it.
                if result.is_ok() {
                    let attempt = start.custom_parameters.get("attempt");
                    self.start_recording(attempt.and_then(|a| a.parse().ok()).unwrap_or(1), ctx);
                    if crate::outbound::awaits_detection(&start.custom_parameters) {
                        self.await_answered_by(ctx);
                    }
                }
                result
            }
            (false, StreamEvent::Start(_)) => {
                return self.protocol_error(ctx, 1008, "second start on one stream")
            }
            (_, StreamEvent::Stop) => {
                return self.close(ctx, EndReason::Stop, 1000, "stop");
            }
            (true, _) => return self.protocol_error(ctx, 1008, "media, dtmf or mark before start"),
            (false, StreamEvent::Media(media)) => {
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
            (false, StreamEvent::Dtmf(dtmf)) => {
                call_log!(self, Debug, "dtmf {}", dtmf.digit);
                self.dtmf_count += 1;
                if self.dtmf.len() < MAX_DTMF_LOG {
                    self.dtmf
                        .extend(dtmf.digit.chars().take(MAX_DTMF_LOG - self.dtmf.len()));
                }
                self.dispatch(ctx, |h, out| h.on_dtmf(&dtmf.digit, out))
            }
            (false, StreamEvent::Mark(mark)) => {
                call_log!(self, Debug, "mark {}", mark.name);
                self.marks += 1;
                self.dispatch(ctx, |h, out| h.on_mark(&mark.name, out))
            }
        };
        self.after_handler(ctx, result);
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for CallSession {
    fn handle(&mut self, msg: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        if self.is_closing() {
            // Closing: only the peer's close frame matters now.
            if let Ok(AggregatedMessage::Close(_)) = msg {
                self.twilio_gone(ctx);
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
            // actix-http reports reserved bits (no extension is negotiated) as InvalidData too.
            Err(ProtocolError::Io(e)) if e.to_string().contains("reserved bits") => {
                self.protocol_error(ctx, 1002, "a frame with reserved bits set")
            }
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
pub(super) struct Inbound(pub(super) Rc<RefCell<Option<AggregatedMessageStream>>>);

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
pub(super) struct FlushOutbound;

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
