//! The HTTP surface: ops endpoints, the Twilio voice webhook and the stream target, `POST /calls`
//! (outbound calls) and Twilio's callbacks about them.
//! None of these routes counts against the call limit; only admitted streams do.

pub mod auth;
pub mod call_status;
pub mod calls;
pub mod health;
pub mod metrics;
pub mod socket;
pub mod stream;
pub mod stream_status;
pub mod webhook;

use actix::Addr;

use crate::call::handler::HandlerFactory;
use crate::call::supervisor::CallSupervisor;
use crate::config::Config;

/// Shared by every route (cheap to clone into each worker).
#[derive(Clone)]
pub struct AppState {
    pub config: std::sync::Arc<Config>,
    pub supervisor: Addr<CallSupervisor>,
    pub handler: HandlerFactory,
    /// `None` when `TWILIO_AUTH_TOKEN` is unset: no request is checked.
    pub auth: Option<std::sync::Arc<auth::TwilioAuth>>,
    pub metrics: crate::metrics::Metrics,
    /// Twilio's REST API for call apps; `None` without credentials.
    pub control: Option<crate::twilio::rest::CallControl>,
    /// Where calls' records go (`CALL_EVENTS_URL`); `None`: no records.
    pub recorder: Option<crate::records::Recorder>,
}

impl AppState {
    /// The supervisor's current counts (one mailbox round trip; never blocked by the call cap).
    pub async fn snapshot(&self) -> actix_web::Result<crate::call::supervisor::Snapshot> {
        self.supervisor
            .send(crate::call::supervisor::GetSnapshot)
            .await
            .map_err(actix_web::error::ErrorServiceUnavailable)
    }
}

/// The public base URL of this service as Twilio reaches it: `PUBLIC_URL` when configured,
/// else rebuilt from the forwarded headers a proxy (Railway's edge) adds, else the Host header.
pub fn public_base_url(config: &Config, req: &actix_web::HttpRequest) -> String {
    if let Some(url) = &config.public_url {
        return url.clone();
    }
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// `https://h` becomes `wss://h`, `http://h` becomes `ws://h` (local testing).
pub fn websocket_base(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_scheme_follows_http_scheme() {
        assert_eq!(super::websocket_base("https://a.test"), "wss://a.test");
        assert_eq!(
            super::websocket_base("http://127.0.0.1:9"),
            "ws://127.0.0.1:9"
        );
    }
}
