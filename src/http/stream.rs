//! `GET /media-stream`: the WebSocket Twilio opens after `<Connect><Stream>`.
//!
//! The upgrade is always accepted. A stream the supervisor does not admit is closed at once
//! (1013 at capacity, 1001 draining): a refused upgrade is Twilio error 31920 and may not run the
//! fallback TwiML, while a deliberate close is documented to run the `<Redirect>`.

use actix::Actor;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};

use crate::call::session::{CallSession, SessionSettings};
use crate::call::supervisor::Admit;
use crate::http::{auth, AppState};

pub const PATH: &str = "/media-stream";

pub async fn media_stream(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    if let Err(e) = auth::check_upgrade(&state, &req) {
        state.metrics.rejected("auth");
        return Err(e.into());
    }
    let (response, session, inbound) = actix_ws::handle(&req, body)?;
    let admission = state
        .supervisor
        .send(Admit)
        .await
        .map_err(actix_web::error::ErrorServiceUnavailable)?;
    match admission {
        Ok(slot) => {
            let settings = SessionSettings {
                start_timeout: state.config.start_timeout,
                idle_timeout: state.config.idle_timeout,
                tokens: state.auth.as_ref().map(|a| a.tokens.clone()),
                outbound_cap: state.config.outbound_buffer_bytes,
                control: state.control.clone(),
                recorder: state.recorder.clone(),
                recording: state.config.recording.clone(),
                amd_wait: state.config.outbound.amd_greeting_wait,
            };
            CallSession::new(
                slot,
                state.supervisor.clone(),
                (state.handler)(),
                settings,
                session,
                inbound,
                state.metrics.clone(),
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
