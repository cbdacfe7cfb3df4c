//! The HTTP/WebSocket client callsim calls through: awc with no pool limit and TCP_NODELAY.
//!
//! awc leaves Nagle's algorithm on. A caller that writes `connected` and `start` back to back
//! then waits for the first one's (delayed, ~40 ms) ACK before the second leaves, and the audio
//! queues behind it: round trips that measure the simulator's socket, not the server.

use std::task::{Context, Poll};
use std::time::Duration;

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;

/// The default TCP connector, setting TCP_NODELAY on every socket it opens, and SO_LINGER 0
/// when `reset` is set (dropping such a socket resets the connection instead of closing it).
#[derive(Clone, Default)]
struct NoDelay {
    inner: ConnectorService,
    reset: bool,
}

impl Service<ConnectInfo<Uri>> for NoDelay {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<ConnectInfo<Uri>>::poll_ready(&self.inner, cx)
    }

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.inner.call(req);
        let reset = self.reset;
        Box::pin(async move {
            let connection = connecting.await?;
            connection
                .io_ref()
                .set_nodelay(true)
                .map_err(ConnectError::Io)?;
            if reset {
                socket2::SockRef::from(connection.io_ref())
                    .set_linger(Some(Duration::ZERO))
                    .map_err(ConnectError::Io)?;
            }
            Ok(connection)
        })
    }
}

pub fn client(timeout: Duration, reset: bool) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .connector(NoDelay {
                    reset,
                    ..NoDelay::default()
                })
                // No pool limit: every live call holds a stream connection.
                .limit(0)
                .timeout(timeout),
        )
        .timeout(timeout)
        .finish()
}
