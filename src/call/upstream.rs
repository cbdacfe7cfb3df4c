//! A call app's upstream WebSocket (a bot, a model), owned by the call's actor.
//!
//! The session opens it when the app asks ([`crate::call::handler::Call::connect_upstream`]),
//! splits it: the sending half goes into a bounded [`OutboundQueue`] (a field of the actor), the
//! receiving half is attached to the actor's context as [`UpstreamInput`] messages. So one call's
//! upstream lives and dies with that call's actor, and can never touch another call.

use std::time::Duration;

use actix::Message;
use actix_codec::Framed;
use awc::error::WsProtocolError;
use awc::ws::{Codec, Frame};
use awc::BoxedSocket;
use futures_util::stream::{SplitSink, SplitStream};

use crate::call::handler::UpstreamRequest;
use crate::call::outbound::OutboundQueue;

pub type UpstreamSocket = Framed<BoxedSocket, Codec>;
pub type UpstreamSink = SplitSink<UpstreamSocket, awc::ws::Message>;
pub type UpstreamStream = SplitStream<UpstreamSocket>;
/// The upstream's sending half, bounded like the Twilio side (`OUTBOUND_BUFFER_KIB`).
pub type UpstreamQueue = OutboundQueue<UpstreamSink, awc::ws::Message>;

/// The largest frame an upstream may send (a model's audio delta is a few KiB).
pub const MAX_UPSTREAM_FRAME: usize = 1 << 20;

/// What the receiving half delivers to the call's actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum UpstreamInput {
    Frame(Result<Frame, WsProtocolError>),
    /// The stream ended (after a close frame, or without one).
    Ended,
}

/// Why the upstream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// The HTTP status the handshake was answered with, when it got that far (401: the
    /// credentials were refused; 429: rate limited).
    pub status: Option<u16>,
    pub message: String,
}

thread_local! {
    /// awc's client is per thread (not `Send`); every call of a worker shares it. TCP_NODELAY
    /// (crate::client): a caller's 20 ms frames must not wait for the upstream's delayed ACKs.
    static CLIENT: awc::Client = crate::client::builder()
        // awc's connector allows 100 connections at once by default, and an upstream is held
        // for a whole call: unlimited, so call 101 does not wait for call 1 to end (LIMIT_CONCURRENCY
        // is the bound). The handshake's own bound is the request's timeout (below).
        .no_pool_limit()
        .timeout(Duration::from_secs(3600))
        .finish();
}

/// Opens the upstream: the WebSocket handshake, within `request.timeout`.
pub async fn connect(request: UpstreamRequest) -> Result<UpstreamSocket, ConnectError> {
    let handshake = CLIENT.with(|client| {
        let mut ws = client.ws(&request.url).max_frame_size(MAX_UPSTREAM_FRAME);
        for (name, value) in &request.headers {
            ws = ws.header(name.as_str(), value.as_str());
        }
        ws.connect()
    });
    match tokio::time::timeout(request.timeout, handshake).await {
        Err(_) => Err(ConnectError {
            status: None,
            message: format!("no answer within {} ms", request.timeout.as_millis()),
        }),
        Ok(Err(e)) => Err(ConnectError {
            status: match &e {
                awc::error::WsClientError::InvalidResponseStatus(status) => Some(status.as_u16()),
                _ => None,
            },
            message: e.to_string(),
        }),
        Ok(Ok((_, socket))) => Ok(socket),
    }
}
