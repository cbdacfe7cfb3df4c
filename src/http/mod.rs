//! The HTTP surface: ops endpoints, the Twilio voice webhook and the stream target.
//! None of these routes counts against the call limit; only admitted streams do.

pub mod health;
pub mod stream;
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
