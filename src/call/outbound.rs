//! A call's outbound queue: frames waiting for a socket that is not ready, bounded in bytes.
//!
//! actix's `SinkWrite` queues without limit, so a peer that never reads (or a path that cannot
//! keep up) grew the server by the whole flood. Here every queued frame is counted; a push that
//! would pass the cap is refused, and the caller closes the call. Audio that is that late is
//! worthless anyway: the queued frames are dropped, and only the close frame is queued after them.
//!
//! Below this queue sit fixed, bounded stages: actix-ws's 32-message channel, the HTTP layer's
//! ~32 KiB write buffer and the kernel's socket send buffer (capped per connection in
//! `app.rs`). The queue is a plain field of the call's actor; a small actor future
//! (`FlushOutbound` in session.rs) moves frames from it into the socket whenever the socket is ready.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_util::Sink;

/// How many bytes a frame occupies in the queue.
pub trait WireSize {
    fn wire_size(&self) -> usize;
}

impl WireSize for actix_ws::Message {
    fn wire_size(&self) -> usize {
        use actix_ws::Message;
        // The WebSocket frame header is at most 14 bytes; counted so that a flood of empty
        // frames is not free.
        14 + match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(Some(r)) => 2 + r.description.as_ref().map_or(0, |d| d.len()),
            Message::Close(None) | Message::Nop => 0,
            Message::Continuation(item) => match item {
                actix_ws::Item::FirstText(b)
                | actix_ws::Item::FirstBinary(b)
                | actix_ws::Item::Continue(b)
                | actix_ws::Item::Last(b) => b.len(),
            },
        }
    }
}

/// The queue refused a frame: the peer has not taken `cap` bytes of earlier frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub cap: usize,
}

/// The socket underneath is gone: nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkGone;

/// Frames on their way into `sink`, at most `cap` bytes of them waiting at once.
pub struct OutboundQueue<S, I> {
    sink: S,
    frames: VecDeque<I>,
    /// Sum of `wire_size` over `frames`.
    queued: usize,
    cap: usize,
    /// The most ever queued at once (for the end-of-call log).
    peak: usize,
    /// The flushing task, to wake when a frame arrives; taken on wake so a burst of frames
    /// costs one wake-up.
    waker: Option<Waker>,
    /// Set by [`OutboundQueue::close`]: flush what is queued, then close the sink.
    closing: bool,
    /// Set once the sink is closed (or gone): pushes are ignored.
    done: bool,
    /// Whether a close also closes the sink (shuts the socket down). A WebSocket client must
    /// not: it sends its close frame, then waits for the server's before the connection ends.
    shutdown_on_close: bool,
    /// Frames refused (overflow) or dropped unsent (a close that drops what is queued).
    dropped: u64,
}

impl<S, I> OutboundQueue<S, I>
where
    S: Sink<I> + Unpin,
    I: WireSize,
{
    pub fn new(sink: S, cap: usize) -> Self {
        OutboundQueue {
            sink,
            frames: VecDeque::new(),
            queued: 0,
            cap,
            peak: 0,
            waker: None,
            closing: false,
            done: false,
            shutdown_on_close: true,
            dropped: 0,
        }
    }

    /// A queue whose close sends the close frame but leaves the socket open (client side).
    pub fn without_shutdown(mut self) -> Self {
        self.shutdown_on_close = false;
        self
    }

    /// Queues a frame, unless that would hold more than the cap. A frame larger than the whole
    /// cap is still taken when nothing is queued, so one big frame never wedges a call.
    pub fn push(&mut self, frame: I) -> Result<(), Overflow> {
        if self.closing || self.done {
            return Ok(());
        }
        let size = frame.wire_size();
        if self.queued > 0 && self.queued + size > self.cap {
            self.dropped += 1;
            return Err(Overflow { cap: self.cap });
        }
        self.queued += size;
        self.peak = self.peak.max(self.queued);
        self.frames.push_back(frame);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Drops every queued frame (late audio), then sends `last` and closes the sink.
    pub fn close_with(&mut self, last: I, drop_queued: bool) {
        if self.closing || self.done {
            return;
        }
        if drop_queued {
            self.dropped += self.frames.len() as u64;
            self.frames.clear();
            self.queued = 0;
        }
        self.queued += last.wire_size();
        self.frames.push_back(last);
        self.closing = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Whether a close was asked for (its frame may still be on its way).
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The most bytes ever queued at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Frames that never reached the socket: refused when the queue was full, dropped by a
    /// close, or still queued now.
    pub fn unsent(&self) -> u64 {
        self.dropped + self.frames.len() as u64
    }

    /// Moves queued frames into the sink while it is ready. `Ready(Ok)` once a close is done,
    /// `Ready(Err)` when the sink is gone, else `Pending` (woken by the sink or by a push).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SinkGone>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let mut sink = Pin::new(&mut self.sink);
        while !self.frames.is_empty() {
            match sink.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let frame = self.frames.pop_front().expect("not empty");
                    self.queued -= frame.wire_size();
                    if sink.as_mut().start_send(frame).is_err() {
                        return self.gone();
                    }
                }
                Poll::Ready(Err(_)) => return self.gone(),
                Poll::Pending => {
                    self.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let mut flushed = sink.as_mut().poll_flush(cx);
        if self.closing && self.shutdown_on_close && matches!(flushed, Poll::Ready(Ok(()))) {
            // Flushed first: actix-codec's `Framed` closes its socket without writing what its
            // own buffer still holds (the close frame, for one).
            flushed = sink.as_mut().poll_close(cx);
        }
        match flushed {
            Poll::Ready(Err(_)) => self.gone(),
            Poll::Ready(Ok(())) if self.closing => {
                self.done = true;
                Poll::Ready(Ok(()))
            }
            _ => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn gone(&mut self) -> Poll<Result<(), SinkGone>> {
        self.done = true;
        self.frames.clear();
        self.queued = 0;
        Poll::Ready(Err(SinkGone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    /// A sink that takes `room` frames, then is pending until given more room.
    #[derive(Default)]
    struct Pipe {
        room: usize,
        taken: Vec<Vec<u8>>,
        closed: bool,
        /// Frames taken but not yet flushed; a close with any left would lose them.
        unflushed: usize,
        lost_at_close: usize,
    }

    impl WireSize for Vec<u8> {
        fn wire_size(&self) -> usize {
            self.len()
        }
    }

    impl Sink<Vec<u8>> for Pipe {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.room > 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn start_send(mut self: Pin<&mut Self>, item: Vec<u8>) -> Result<(), ()> {
            self.room -= 1;
            self.taken.push(item);
            self.unflushed += 1;
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            self.unflushed = 0;
            Poll::Ready(Ok(()))
        }
        fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            self.lost_at_close += self.unflushed;
            self.closed = true;
            Poll::Ready(Ok(()))
        }
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn waker() -> (std::sync::Arc<Count>, Waker) {
        let count = std::sync::Arc::new(Count(Default::default()));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_reader_that_keeps_up_never_sees_the_cap() {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut q = OutboundQueue::new(
            Pipe {
                room: usize::MAX,
                ..Default::default()
            },
            100,
        );
        for _ in 0..1_000 {
            q.push(vec![0; 60]).unwrap();
            assert!(q.poll_flush(&mut cx).is_pending());
        }
        assert_eq!((q.queued(), q.peak(), q.sink.taken.len()), (0, 60, 1_000));
    }

    #[test]
    fn a_stalled_reader_is_refused_at_the_cap_and_nothing_grows_past_it() {
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut q = OutboundQueue::new(
            Pipe {
                room: 2,
                ..Default::default()
            },
            100,
        );
        let mut accepted = 0;
        let overflow = loop {
            match q.push(vec![0; 30]) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            let _ = q.poll_flush(&mut cx);
        };
        assert_eq!(overflow, Overflow { cap: 100 });
        // Two frames went into the sink, three (90 bytes) wait: a fourth would pass 100.
        assert_eq!((accepted, q.sink.taken.len(), q.queued()), (5, 2, 90));
        assert!(q.peak() <= 100);

        // The close drops the late frames and goes out alone once the sink has room.
        q.close_with(vec![1; 4], true);
        assert_eq!(q.queued(), 4);
        assert!(q.poll_flush(&mut cx).is_pending());
        let woken = wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        q.sink.room = 1;
        assert_eq!(q.poll_flush(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(q.sink.taken.last(), Some(&vec![1; 4]));
        assert!(q.sink.closed);
        assert_eq!(
            q.sink.lost_at_close, 0,
            "the close frame was flushed before the close"
        );
        // Pushing after the close is a no-op, and wakes no one.
        q.push(vec![0; 10]).unwrap();
        assert_eq!(q.queued(), 0);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), woken);
    }

    #[test]
    fn one_frame_larger_than_the_cap_still_goes_when_nothing_waits() {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut q = OutboundQueue::new(Pipe::default(), 100);
        q.push(vec![0; 500]).unwrap();
        assert_eq!(q.push(vec![0; 1]), Err(Overflow { cap: 100 }));
        assert!(q.poll_flush(&mut cx).is_pending());
        q.sink.room = 1;
        assert!(q.poll_flush(&mut cx).is_pending());
        assert_eq!(q.queued(), 0);
        q.push(vec![0; 1]).unwrap();
    }

    #[test]
    fn a_push_wakes_the_flusher_once_per_poll() {
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut q = OutboundQueue::new(Pipe::default(), 1_000);
        assert!(q.poll_flush(&mut cx).is_pending());
        for _ in 0..10 {
            q.push(vec![0; 10]).unwrap();
        }
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
