//! `GET /media-stream`: the WebSocket Twilio opens after `<Connect><Stream>`.
//!
//! The upgrade is always accepted. A stream the supervisor does not admit is closed at once
//! (1013 at capacity, 1001 draining): a refused upgrade is Twilio error 31920 and may not run the
//! fallback TwiML, while a deliberate close is documented to run the `<Redirect>`.

use actix::Actor;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};

use crate::call::session::{CallSession, SessionLimits};
use crate::call::supervisor::Admit;
use crate::http::AppState;

pub const PATH: &str = "/media-stream";

pub async fn media_stream(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let (response, session, inbound) = actix_ws::handle(&req, body)?;
    let admission = state
        .supervisor
        .send(Admit)
        .await
        .map_err(actix_web::error::ErrorServiceUnavailable)?;
    match admission {
        Ok(slot) => {
            let limits = SessionLimits {
                start_timeout: state.config.start_timeout,
                idle_timeout: state.config.idle_timeout,
            };
            CallSession::new(
                slot,
                state.supervisor.clone(),
                (state.handler)(),
                limits,
                session,
                inbound,
            )
            .start();
        }
        Err(refusal) => {
            let (code, reason) = refusal.close();
            log::info!("stream refused: {reason} (close {code})");
            actix_web::rt::spawn(async move {
                let _ = session
                    .close(Some(CloseReason {
                        code: CloseCode::from(code),
                        description: Some(reason.into()),
                    }))
                    .await;
                drop(inbound);
            });
        }
    }
    Ok(response)
}
