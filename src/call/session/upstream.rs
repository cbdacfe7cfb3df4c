//! The app's upstream WebSocket (a bot, a model) as the call drives it: opened when the app
//! asks, frames to it through a bounded queue (held while the handshake runs), its frames and
//! its end handed to the app as [`UpstreamEvent`]s, closed with the call.

use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use actix::fut::ActorFuture;
use actix::prelude::*;
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;

use super::{call_log, CallSession};
use crate::call::handler::{UpstreamEvent, UpstreamRequest};
use crate::call::outbound::{OutboundQueue, WireSize};
use crate::call::upstream::{self, UpstreamInput, UpstreamQueue, UpstreamSocket};

/// Where the call's upstream is.
pub(super) enum UpstreamLink {
    /// Not open yet: not asked for, or its handshake under way (`connecting`). Frames the app
    /// sends meanwhile wait here, bounded by the same cap as the open queue.
    Pending {
        frames: Vec<Message>,
        bytes: usize,
        connecting: bool,
    },
    /// Open: frames go out through the bounded queue and come in as events. Once our close
    /// frame is queued, the upstream's close (or the close grace) finishes it.
    Open(UpstreamQueue),
    /// The upstream closed first: nothing more is read, our answering close is flushing.
    Answering(UpstreamQueue),
    /// Closed, failed or given up: nothing more comes from it.
    Done,
}

impl UpstreamLink {
    /// Nothing is left to send nor to wait for.
    pub(super) fn is_done(&self) -> bool {
        !matches!(self, UpstreamLink::Open(_) | UpstreamLink::Answering(_))
    }
}

impl CallSession {
    pub(super) fn connect_upstream(&mut self, request: UpstreamRequest, ctx: &mut Context<Self>) {
        let UpstreamLink::Pending { connecting, .. } = &mut self.upstream else {
            return; // one upstream per call
        };
        if std::mem::replace(connecting, true) {
            return;
        }
        let started = Instant::now();
        ctx.spawn(
            upstream::connect(request)
                .into_actor(self)
                .map(move |result, act, ctx| act.upstream_connected(result, started, ctx)),
        );
    }

    pub(super) fn close_upstream(&mut self, code: u16, reason: &str) {
        match &mut self.upstream {
            UpstreamLink::Open(queue) => queue.close_with(
                Message::Close(Some(CloseReason {
                    code: CloseCode::from(code),
                    description: (!reason.is_empty()).then(|| reason.to_string()),
                })),
                false,
            ),
            // The handshake's answer finds the link Done and drops the socket.
            UpstreamLink::Pending { .. } => self.upstream = UpstreamLink::Done,
            _ => {}
        }
    }

    /// Moves the frames the app sent to its upstream into the upstream's queue. The request
    /// list keeps its capacity, so a relay allocates nothing per frame here.
    pub(super) fn flush_upstream_requests(&mut self) {
        if self.requests.upstream_out.is_empty() {
            return;
        }
        let mut frames = std::mem::take(&mut self.requests.upstream_out);
        for frame in frames.drain(..) {
            self.send_upstream(frame);
        }
        self.requests.upstream_out = frames;
    }

    pub(super) fn send_upstream(&mut self, frame: Message) {
        let accepted = match &mut self.upstream {
            UpstreamLink::Open(queue) => queue.push(frame).is_ok(),
            UpstreamLink::Pending { frames, bytes, .. } => {
                let size = frame.wire_size();
                if *bytes + size > self.settings.outbound_cap {
                    false
                } else {
                    *bytes += size;
                    frames.push(frame);
                    return;
                }
            }
            UpstreamLink::Answering(_) | UpstreamLink::Done => false,
        };
        if accepted {
            self.counts.upstream_out += 1;
            return;
        }
        self.counts.upstream_dropped += 1;
        if self.counts.upstream_dropped == 1 {
            call_log!(
                self,
                Warn,
                "upstream is not keeping up: dropping frames to it"
            );
        }
    }

    fn upstream_connected(
        &mut self,
        result: Result<UpstreamSocket, upstream::ConnectError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        let UpstreamLink::Pending {
            frames: pending,
            connecting: true,
            ..
        } = std::mem::replace(&mut self.upstream, UpstreamLink::Done)
        else {
            // The call ended meanwhile: dropping the socket closes it.
            return;
        };
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
                for frame in pending {
                    if queue.push(frame).is_ok() {
                        self.counts.upstream_out += 1;
                    } else {
                        self.counts.upstream_dropped += 1;
                    }
                }
                self.metrics
                    .upstream_connect
                    .observe(started.elapsed().as_secs_f64());
                self.upstream = UpstreamLink::Open(queue);
                ctx.spawn(FlushUpstream);
                ctx.add_message_stream(
                    stream
                        .map(UpstreamInput::Frame)
                        .chain(futures_util::stream::once(async { UpstreamInput::Ended })),
                );
                UpstreamEvent::Open
            }
            Err(e) => {
                call_log!(self, Warn, "upstream unreachable: {}", e.message);
                self.metrics
                    .upstream_failures
                    .get_or_create(&[("reason", "unreachable")])
                    .inc();
                UpstreamEvent::Failed {
                    status: e.status,
                    reason: e.message,
                }
            }
        };
        self.upstream_event(event, ctx);
    }

    fn upstream_event(&mut self, event: UpstreamEvent, ctx: &mut Context<Self>) {
        if self.is_closing() {
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
}

/// Moves the upstream's queued frames out, then its close.
pub(super) struct FlushUpstream;

impl ActorFuture<CallSession> for FlushUpstream {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut CallSession,
        ctx: &mut Context<CallSession>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let (UpstreamLink::Open(queue) | UpstreamLink::Answering(queue)) = &mut act.upstream else {
            return Poll::Ready(());
        };
        let result = match queue.poll_flush(task) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        match (&act.upstream, result) {
            // Our close frame is out: the upstream's answer (or the close grace) finishes it.
            (UpstreamLink::Open(_), Ok(())) => return Poll::Ready(()),
            (UpstreamLink::Open(_), Err(_)) => {
                act.upstream = UpstreamLink::Done;
                act.upstream_event(
                    UpstreamEvent::Closed {
                        code: 1006,
                        reason: "upstream connection lost".into(),
                    },
                    ctx,
                );
            }
            _ => act.upstream = UpstreamLink::Done,
        }
        act.maybe_stop(ctx);
        Poll::Ready(())
    }
}

impl Handler<UpstreamInput> for CallSession {
    type Result = ();

    fn handle(&mut self, input: UpstreamInput, ctx: &mut Self::Context) {
        use awc::ws::Frame;
        let UpstreamLink::Open(queue) = &mut self.upstream else {
            return;
        };
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
                if queue.is_closing() {
                    // The answer to our close: the closing handshake is complete.
                    self.upstream = UpstreamLink::Done;
                } else {
                    // Theirs: answer it; the link is done once the answer is out.
                    queue.close_with(Message::Close(reason.clone()), false);
                    let UpstreamLink::Open(queue) =
                        std::mem::replace(&mut self.upstream, UpstreamLink::Done)
                    else {
                        unreachable!("matched above")
                    };
                    self.upstream = UpstreamLink::Answering(queue);
                }
                if self.is_closing() {
                    return self.maybe_stop(ctx);
                }
                UpstreamEvent::Closed {
                    code: reason.as_ref().map_or(1005, |r| u16::from(r.code)),
                    reason: reason.and_then(|r| r.description).unwrap_or_default(),
                }
            }
            UpstreamInput::Frame(Ok(Frame::Continuation(_))) => {
                self.close_upstream(1003, "fragmented messages are not supported");
                if let UpstreamLink::Open(queue) =
                    std::mem::replace(&mut self.upstream, UpstreamLink::Done)
                {
                    self.upstream = UpstreamLink::Answering(queue);
                }
                UpstreamEvent::Closed {
                    code: 1003,
                    reason: "fragmented messages are not supported".into(),
                }
            }
            UpstreamInput::Frame(Err(e)) => {
                self.upstream = UpstreamLink::Done;
                UpstreamEvent::Closed {
                    code: 1006,
                    reason: format!("upstream connection failed: {e}"),
                }
            }
            UpstreamInput::Ended => {
                self.upstream = UpstreamLink::Done;
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
