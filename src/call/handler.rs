//! What a call does: the contract between the call's actor ([`CallSession`]) and its app.
//!
//! The session drives a [`CallHandler`] with typed events, always inside the call's own actor, so
//! an app needs no lock and can never touch another call. Every callback gets a [`Call`]: it can
//! send Twilio the three frames Twilio accepts (`media`, `mark`, `clear`, always with the stream's
//! own streamSid), open and use one upstream WebSocket (owned by the session; its events come
//! back as [`CallHandler::on_upstream`], at any time, not only on an inbound frame), and end the
//! call: hang up, transfer or say-and-hang-up through Twilio's REST API, or fail it over (close
//! 1011, Twilio runs the `<Redirect>` to another replica). [`CallHandler::on_end`] tells the app
//! how the call ended, exactly once, whatever ended it.
//!
//! [`CallSession`]: crate::call::session::CallSession

use std::time::Duration;

use actix_web::web::Bytes;
use base64::Engine;
use bytestring::ByteString;
use serde::Serialize;

use crate::metrics::MediaCounts;
use crate::records::{AppRecord, CallRecords};
use crate::twilio::messages::{ServerFrame, Start};
use crate::twilio::rest::{CallUpdate, ControlOutcome};

/// A handler gave up on its call; the session closes the stream with 1011.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// One inbound `media` frame, handed over both ways: the base64 text as Twilio sent it (so a
/// handler that forwards audio need not re-encode it) and the decoded mu-law bytes.
pub struct MediaChunk<'a> {
    pub payload_base64: &'a str,
    pub audio: &'a [u8],
}

/// What the app's upstream WebSocket did (see [`Call::connect_upstream`]).
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamEvent {
    /// The handshake succeeded: frames sent before this were queued and go out now.
    Open,
    Text(Bytes),
    Binary(Bytes),
    /// The upstream closed (its close frame's code, or 1006 when the connection just ended).
    Closed {
        code: u16,
        reason: String,
    },
    /// It could not be reached (refused, handshake error, no answer within the timeout);
    /// `status` is the HTTP status that refused the handshake, if it got that far.
    Failed {
        status: Option<u16>,
        reason: String,
    },
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

/// How a call ended, as [`CallHandler::on_end`] hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallEnd {
    /// Why (its `label()` is `callvisor_calls_ended_total`'s `reason`).
    pub reason: EndReason,
    /// The close code of the Twilio stream (1006: the connection dropped without one).
    pub code: u16,
}

impl CallEnd {
    /// The replica handed the call over (drain): it goes on elsewhere with the same CallSid.
    pub fn handed_off(&self) -> bool {
        self.reason == EndReason::HandedOff
    }
}

/// The behaviour of one call. Every method but `on_media` has a do-nothing default.
pub trait CallHandler: 'static {
    /// Twilio's `start`: the call is live. Open the app's upstream here.
    fn on_start(&mut self, _start: &Start, _call: &mut Call<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    fn on_media(&mut self, media: &MediaChunk<'_>, call: &mut Call<'_>)
        -> Result<(), HandlerError>;
    fn on_dtmf(&mut self, _digit: &str, _call: &mut Call<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// Twilio played (or cleared) the audio sent before the mark called `name`.
    fn on_mark(&mut self, _name: &str, _call: &mut Call<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// The upstream opened by [`Call::connect_upstream`] did something.
    fn on_upstream(
        &mut self,
        _event: UpstreamEvent,
        _call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
    /// A [`Call::transfer`] (or another REST update that leaves the call up) finished.
    fn on_control(
        &mut self,
        _update: &CallUpdate,
        _outcome: &ControlOutcome,
        _call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
    /// The answer to a [`Call::http_post`] (`id` is the request's).
    fn on_http(
        &mut self,
        _id: u64,
        _answer: HttpAnswer,
        _call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
    /// An outbound call with answering-machine detection: who answered, as Twilio's detection
    /// found it (`human`, `machine_start`, `machine_end_beep`, `machine_end_silence`,
    /// `machine_end_other`, `fax`, `unknown`), or `None` when it had not said within
    /// `AMD_GREETING_WAIT_MS`. Called at most once, after `on_start`, and only for such calls
    /// (their stream's `direction` is `outbound` and `amd` is `hangup` or `message`); an app that
    /// speaks first waits for it (docs/apps.md, *Outbound calls*).
    fn on_answered_by(
        &mut self,
        _answered_by: Option<&str>,
        _call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
    /// A timer set with [`Call::set_timer`] fired.
    fn on_timer(&mut self, _id: u64, _call: &mut Call<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// The call is ending, for whatever reason; called exactly once, and nothing is called after
    /// it. Frames sent to the upstream here still go out before the upstream is closed.
    fn on_end(&mut self, _end: &CallEnd, _call: &mut Call<'_>) {}
}

/// Builds a fresh handler for each admitted call.
pub type HandlerFactory = std::sync::Arc<dyn Fn() -> Box<dyn CallHandler> + Send + Sync>;

/// How an app wants its call to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndRequest {
    /// Through Twilio's REST API, then the stream is closed 1000 `hangup`.
    Control(CallUpdate),
    /// Close the stream 1011 with this reason: Twilio runs the `<Redirect>`, another replica
    /// takes the call (on the last try the caller hears the busy message).
    FailOver(String),
}

/// Where to open the upstream.
#[derive(Clone)]
pub struct UpstreamRequest {
    /// `ws://` or `wss://`.
    pub url: String,
    /// Extra handshake headers (`Authorization: Bearer …`); never logged.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl std::fmt::Debug for UpstreamRequest {
    /// Header values may be credentials: only their names show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("UpstreamRequest")
            .field("url", &self.url)
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An HTTP POST an app makes (a tool of the business, say); its answer comes back as
/// [`CallHandler::on_http`]. It runs in the call's actor: the call ending cancels it.
#[derive(Clone)]
pub struct HttpPost {
    /// The app's own number for it, handed back with the answer.
    pub id: u64,
    pub url: String,
    /// Sent as they are (signatures, content type); never logged.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The whole request's bound, answer included.
    pub timeout: Duration,
}

/// How an [`HttpPost`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAnswer {
    /// The server answered: its status and its body, cut at [`HTTP_BODY_MAX`] bytes.
    Answered { status: u16, body: Vec<u8> },
    /// No answer within the request's timeout.
    TimedOut,
    /// No answer at all (refused, reset, TLS, DNS); the cause.
    Failed(String),
}

/// The most of an answer's body an app gets.
pub const HTTP_BODY_MAX: usize = 16 * 1024;

/// What a callback asked of the session besides frames to Twilio; drained after each callback.
#[derive(Default)]
pub struct Requests {
    pub http: Vec<HttpPost>,
    /// Timers asked for: (`id`, after how long).
    pub timers: Vec<(u64, Duration)>,
    pub upstream_out: Vec<actix_ws::Message>,
    pub connect: Option<UpstreamRequest>,
    /// Close the upstream with this code and reason once what is queued has gone.
    pub close_upstream: Option<(u16, String)>,
    pub end: Option<EndRequest>,
}

/// One callback's view of its call.
pub struct Call<'a> {
    stream_sid: &'a str,
    call_sid: &'a str,
    inbound: Option<&'a ByteString>,
    frames: &'a mut Vec<String>,
    counts: &'a mut MediaCounts,
    requests: &'a mut Requests,
    record: Option<&'a mut CallRecords>,
}

impl<'a> Call<'a> {
    pub fn new(
        stream_sid: &'a str,
        call_sid: &'a str,
        inbound: Option<&'a ByteString>,
        frames: &'a mut Vec<String>,
        counts: &'a mut MediaCounts,
        requests: &'a mut Requests,
    ) -> Self {
        Call {
            stream_sid,
            call_sid,
            inbound,
            frames,
            counts,
            requests,
            record: None,
        }
    }

    /// The call's records in the making (`CALL_EVENTS_URL`), for [`Call::record`].
    pub fn with_record(mut self, record: Option<&'a mut CallRecords>) -> Self {
        self.record = record;
        self
    }

    /// What the app adds to the call's `call.ended` record (docs/records.md); `None` when
    /// records are off, so an app spends nothing on them then.
    pub fn record(&mut self) -> Option<&mut AppRecord> {
        self.record.as_deref_mut().map(|r| &mut r.app)
    }

    /// Milliseconds since the stream started, as the record counts them (0 without records).
    pub fn elapsed_ms(&self) -> u64 {
        self.record.as_deref().map_or(0, CallRecords::elapsed_ms)
    }

    pub fn call_sid(&self) -> &str {
        self.call_sid
    }

    pub fn stream_sid(&self) -> &str {
        self.stream_sid
    }

    /// The Twilio frame being handled, exactly as Twilio sent it (`None` in callbacks that no
    /// Twilio frame caused). Cloning it shares the bytes: a relay forwards it without a copy.
    pub fn inbound(&self) -> Option<&ByteString> {
        self.inbound
    }

    /// Sends a frame to the upstream as it is (see [`Call::send_upstream_text`]).
    pub fn send_upstream(&mut self, frame: actix_ws::Message) {
        self.requests.upstream_out.push(frame);
    }

    /// Sends audio that is already base64 mu-law 8 kHz (passed through, not re-encoded).
    pub fn media_base64(&mut self, payload: &str) {
        self.counts.frames_out += 1;
        self.counts.bytes_out += decoded_len(payload);
        // The per-frame path of every echo: serde_json's string escaping cost ~2,700 CPU
        // instructions per frame (callgrind), a tenth of the server's user-space work. Text that
        // needs no escaping is copied as is; anything else takes the serde path.
        if needs_no_escaping(payload) && needs_no_escaping(self.stream_sid) {
            let mut json =
                String::with_capacity(MEDIA_JSON_ENVELOPE + self.stream_sid.len() + payload.len());
            json.push_str(r#"{"event":"media","streamSid":""#);
            json.push_str(self.stream_sid);
            json.push_str(r#"","media":{"payload":""#);
            json.push_str(payload);
            json.push_str(r#""}}"#);
            self.frames.push(json);
            return;
        }
        self.push(&ServerFrame::Media {
            stream_sid: self.stream_sid.into(),
            media: crate::twilio::messages::OutboundMedia {
                payload: payload.into(),
            },
        });
    }

    /// Sends raw mu-law 8 kHz audio, any length: Twilio buffers and plays it in order.
    pub fn media(&mut self, audio: &[u8]) {
        let payload = base64::engine::general_purpose::STANDARD.encode(audio);
        self.media_base64(&payload);
    }

    /// Asks Twilio to tell us (with a `mark` back) when the audio sent so far has played.
    pub fn mark(&mut self, name: &str) {
        self.push(&ServerFrame::Mark {
            stream_sid: self.stream_sid.into(),
            mark: crate::twilio::messages::Mark { name: name.into() },
        });
    }

    /// Drops the audio Twilio has buffered but not played yet (barge-in).
    pub fn clear(&mut self) {
        self.push(&ServerFrame::Clear {
            stream_sid: self.stream_sid.into(),
        });
    }

    fn push(&mut self, frame: &impl Serialize) {
        // ~60 bytes of envelope around the payload; one allocation per frame.
        let mut buf = Vec::with_capacity(96 + self.stream_sid.len() + 300);
        serde_json::to_writer(&mut buf, frame).expect("stream frames always serialize");
        self.frames
            .push(String::from_utf8(buf).expect("serde_json writes UTF-8"));
    }

    /// Opens the app's upstream WebSocket; its events arrive as [`CallHandler::on_upstream`].
    /// Frames sent before it is open wait in its bounded queue. One upstream per call.
    pub fn connect_upstream(&mut self, request: UpstreamRequest) {
        self.requests.connect = Some(request);
    }

    /// Sends a text frame to the upstream. The upstream's queue is bounded
    /// (`OUTBOUND_BUFFER_KIB`): a frame past it is dropped and counted, not queued.
    pub fn send_upstream_text(&mut self, text: String) {
        self.requests
            .upstream_out
            .push(actix_ws::Message::Text(text.into()));
    }

    /// Closes the upstream with `code` once what is queued for it has gone (when the call ends
    /// without this, the upstream gets 1000).
    pub fn close_upstream(&mut self, code: u16, reason: &str) {
        self.requests.close_upstream = Some((code, reason.to_string()));
    }

    /// POSTs `post`; the answer arrives as [`CallHandler::on_http`] with `post.id`.
    pub fn http_post(&mut self, post: HttpPost) {
        self.requests.http.push(post);
    }

    /// [`CallHandler::on_timer`] with `id` after `delay` (unless the call has ended by then).
    pub fn set_timer(&mut self, id: u64, delay: Duration) {
        self.requests.timers.push((id, delay));
    }

    /// Hangs the call up through Twilio's REST API, then closes the stream 1000 `hangup`.
    pub fn hang_up(&mut self) {
        self.end(EndRequest::Control(CallUpdate::HangUp));
    }

    /// Connects the caller to `to` (E.164) through Twilio's REST API (`<Dial>`); the stream ends.
    pub fn transfer(&mut self, to: &str) {
        self.end(EndRequest::Control(CallUpdate::Transfer { to: to.into() }));
    }

    /// Twilio says `text` to the caller and hangs up (REST), instead of leaving them in silence.
    pub fn say_and_hang_up(&mut self, text: &str) {
        self.end(EndRequest::Control(CallUpdate::SayAndHangUp {
            text: text.into(),
        }));
    }

    /// Closes the stream 1011 with `reason`: Twilio runs the `<Redirect>`, so another replica
    /// (which may reach what this one could not) takes the call.
    pub fn fail_over(&mut self, reason: &str) {
        self.end(EndRequest::FailOver(reason.into()));
    }

    /// The first way to end a call that was asked for wins.
    fn end(&mut self, request: EndRequest) {
        self.requests.end.get_or_insert(request);
    }
}

/// Bytes of a media frame's JSON around the streamSid and the payload.
const MEDIA_JSON_ENVELOPE: usize = 55;

/// Whether `s` can sit between JSON quotes unchanged: no `"`, no `\`, no control character.
/// Branch-free over the bytes, so the compiler vectorizes it.
fn needs_no_escaping(s: &str) -> bool {
    !s.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// The byte length of base64 data once decoded (what the caller hears), without decoding it.
pub(crate) fn decoded_len(b64: &str) -> u64 {
    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(padding) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media_json(stream_sid: &str, payload: &str) -> String {
        let mut frames = Vec::new();
        let mut counts = MediaCounts::default();
        let mut requests = Requests::default();
        Call::new(
            stream_sid,
            "CA1",
            None,
            &mut frames,
            &mut counts,
            &mut requests,
        )
        .media_base64(payload);
        assert_eq!(frames.len(), 1);
        frames.pop().unwrap()
    }

    #[test]
    fn media_json_is_what_serde_would_write() {
        let payload = "f39/fw+/AAA=";
        let serde = serde_json::to_string(&ServerFrame::Media {
            stream_sid: "MZ42".into(),
            media: crate::twilio::messages::OutboundMedia {
                payload: payload.into(),
            },
        })
        .unwrap();
        assert_eq!(media_json("MZ42", payload), serde);
    }

    #[test]
    fn text_that_needs_escaping_still_makes_valid_json() {
        for (sid, payload) in [("MZ\"1", "AAAA"), ("MZ1", "A\\\"A\n"), ("MZ\u{1}", "AAAA")] {
            let json = media_json(sid, payload);
            match ServerFrame::parse(&json).unwrap() {
                ServerFrame::Media { stream_sid, media } => {
                    assert_eq!(
                        (stream_sid.as_ref(), media.payload.as_ref()),
                        (sid, payload)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(needs_no_escaping("AZaz09+/="));
        assert!(!needs_no_escaping("a\"b"));
        assert!(!needs_no_escaping("a\\b"));
        assert!(!needs_no_escaping("a\tb"));
    }
}
