//! The one way callvisor (and callsim) builds an HTTP/WebSocket client: awc, with TCP_NODELAY on
//! every socket it opens. An app's upstream (a bot, OpenAI's Realtime API), Twilio's REST API,
//! the autoscaler's requests and callsim's calls all connect through [`builder`].
//!
//! awc leaves Nagle's algorithm on: a small write waits while an earlier one is unacknowledged,
//! and a peer that does not answer each write at once acknowledges late (delayed ACKs, up to
//! ~40 ms). A call's 20 ms audio frames are exactly such writes: a Pipecat bot behind
//! `HANDLER=bridge` heard its echo 21-22 ms late at the median through callvisor against 2 ms
//! reached directly, every 2nd-4th frame held 20-25 ms on its way to the bot; with TCP_NODELAY,
//! 2.6 ms (issue 18). The sockets Twilio opens to us get the same option in `app.rs`.
//!
//! Only the TCP step is replaced ([`awc::Connector::connector`]): awc still wraps the socket in
//! rustls for `https`/`wss`, resolves names and pools connections as before.

use std::task::{Context, Poll};
use std::time::Duration;

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;

/// actix-tls's TCP connector (name resolution, then connect), setting TCP_NODELAY on every
/// socket it opens and, for [`NoDelay::resetting`], SO_LINGER 0.
#[derive(Clone, Default)]
pub struct NoDelay {
    inner: ConnectorService,
    /// SO_LINGER 0: dropping the socket resets the connection instead of closing it (callsim's
    /// `reset` chaos callers; never the server's own clients).
    reset: bool,
}

impl NoDelay {
    /// Also SO_LINGER 0, so that dropping a connection resets it (a caller whose network died).
    pub fn resetting() -> NoDelay {
        NoDelay {
            reset: true,
            ..NoDelay::default()
        }
    }
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

/// Starts a client; unset options keep awc's defaults (request timeout 5 s, connect timeout
/// 5 s, 100 connections at once per host).
pub fn builder() -> Builder {
    Builder::default()
}

/// The options callvisor's clients differ in; [`Builder::finish`] makes the client.
#[derive(Debug, Default, Clone, Copy)]
#[must_use]
pub struct Builder {
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    unlimited: bool,
    reset: bool,
}

impl Builder {
    /// The whole request's bound (for a WebSocket: its handshake).
    pub fn timeout(self, timeout: Duration) -> Self {
        Builder {
            timeout: Some(timeout),
            ..self
        }
    }

    /// The bound on resolving and connecting one socket.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        Builder {
            connect_timeout: Some(timeout),
            ..self
        }
    }

    /// No cap on connections at once: for connections held as long as a call (an upstream, a
    /// simulated caller), where call 101 must not wait for call 1 to end.
    pub fn no_pool_limit(self) -> Self {
        Builder {
            unlimited: true,
            ..self
        }
    }

    /// SO_LINGER 0 on every socket ([`NoDelay::resetting`]).
    pub fn reset_on_drop(self) -> Self {
        Builder {
            reset: true,
            ..self
        }
    }

    pub fn finish(self) -> awc::Client {
        let tcp = if self.reset {
            NoDelay::resetting()
        } else {
            NoDelay::default()
        };
        let mut connector = awc::Connector::new().connector(tcp);
        if self.unlimited {
            connector = connector.limit(0);
        }
        if let Some(timeout) = self.connect_timeout {
            connector = connector.timeout(timeout);
        }
        let client = awc::Client::builder().connector(connector);
        match self.timeout {
            Some(timeout) => client.timeout(timeout),
            None => client,
        }
        .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects `tcp` to a listener on 127.0.0.1; the socket it yields.
    async fn connect(tcp: NoDelay) -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (connection, accepted) =
            tokio::join!(tcp.call(ConnectInfo::new(uri)), listener.accept());
        accepted.unwrap();
        connection.expect("connects").into_parts().0
    }

    #[actix_web::test]
    async fn every_socket_it_opens_has_tcp_nodelay() {
        let socket = connect(NoDelay::default()).await;
        assert!(socket.nodelay().unwrap(), "Nagle's algorithm is on");
        assert_eq!(socket2::SockRef::from(&socket).linger().unwrap(), None);
    }

    #[actix_web::test]
    async fn https_is_still_tls_on_that_socket() {
        // A peer that reads the first byte the client sends, then hangs up.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("https://{addr}/");
        let peer = std::thread::spawn(move || {
            let mut first = [0u8];
            std::io::Read::read_exact(&mut listener.accept().unwrap().0, &mut first).unwrap();
            first[0]
        });
        let answer = builder()
            .timeout(Duration::from_secs(10))
            .finish()
            .get(url)
            .send()
            .await;
        assert!(answer.is_err(), "the peer speaks no TLS");
        // Should the client never have connected, this frees the peer (it reads no byte).
        let _ = std::net::TcpStream::connect(addr);
        assert_eq!(
            peer.join().unwrap(),
            0x16,
            "a TLS handshake record (ClientHello)"
        );
    }

    #[actix_web::test]
    async fn a_resetting_socket_has_tcp_nodelay_and_linger_zero() {
        let socket = connect(NoDelay::resetting()).await;
        assert!(socket.nodelay().unwrap(), "Nagle's algorithm is on");
        assert_eq!(
            socket2::SockRef::from(&socket).linger().unwrap(),
            Some(Duration::ZERO)
        );
    }
}
