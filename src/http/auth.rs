//! Twilio request authentication at the HTTP edge: the webhook's and the upgrade's
//! `X-Twilio-Signature`, checked against the URL Twilio requested (rebuilt from the public URL,
//! since TLS ends at Railway's edge and the socket only sees plain HTTP).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use secrecy::{ExposeSecret, SecretString};

use crate::http::{public_base_url, websocket_base, AppState};
use crate::twilio::signature::{self, StreamTokens};

/// How long a stream token minted by the webhook stays valid. The stream's `start` follows the
/// webhook within seconds; minutes leave room for clock skew between replicas.
pub const STREAM_TOKEN_TTL_SECS: u64 = 300;

/// The secrets of an authenticated deployment.
pub struct TwilioAuth {
    auth_token: SecretString,
    pub tokens: StreamTokens,
}

impl TwilioAuth {
    pub fn new(auth_token: &SecretString) -> Self {
        TwilioAuth {
            tokens: StreamTokens::new(auth_token.expose_secret()),
            auth_token: auth_token.clone(),
        }
    }
}

/// A request that does not carry Twilio's signature: answered 403 with the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing X-Twilio-Signature")]
    Missing,
    #[error("invalid X-Twilio-Signature")]
    Invalid,
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body(format!("{self}\n"))
    }
}

/// Checks a Twilio HTTP callback (form POST or GET).
pub fn check_request(
    state: &AppState,
    req: &HttpRequest,
    form: &[(String, String)],
) -> Result<(), AuthError> {
    let Some(auth) = &state.auth else {
        return Ok(());
    };
    let url = format!(
        "{}{}",
        public_base_url(&state.config, req),
        path_and_query(req)
    );
    check(auth, req, &url, form)
}

/// Checks the WebSocket upgrade: signed over the `wss://` URL, no parameters.
pub fn check_upgrade(state: &AppState, req: &HttpRequest) -> Result<(), AuthError> {
    let Some(auth) = &state.auth else {
        return Ok(());
    };
    let url = format!(
        "{}{}",
        websocket_base(&public_base_url(&state.config, req)),
        path_and_query(req)
    );
    check(auth, req, &url, &[])
}

fn check(
    auth: &TwilioAuth,
    req: &HttpRequest,
    url: &str,
    params: &[(String, String)],
) -> Result<(), AuthError> {
    let header = req
        .headers()
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    let error = match header {
        None => AuthError::Missing,
        Some(sig) if signature::verify(auth.auth_token.expose_secret(), url, params, sig) => {
            return Ok(())
        }
        Some(_) => AuthError::Invalid,
    };
    log::warn!(
        "403 {} {}: {error} (validated against {url}; check PUBLIC_URL and TWILIO_AUTH_TOKEN), peer={}",
        req.method(),
        req.path(),
        req.connection_info().realip_remote_addr().unwrap_or("?"),
    );
    Err(error)
}

fn path_and_query(req: &HttpRequest) -> &str {
    req.uri().path_and_query().map_or("/", |pq| pq.as_str())
}
