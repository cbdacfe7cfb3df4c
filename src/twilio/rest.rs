//! Call control through Twilio's REST API: hang up, transfer, say-and-hang-up.
//!
//! Closing a `<Connect><Stream>` is not a hang-up: Twilio runs the TwiML after `</Connect>` (our
//! `<Redirect>`), and the call comes back as its next try. So an app that ends a call updates it
//! here first (`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`, HTTP Basic auth),
//! and only then closes the stream.
//!
//! Rules: a 404 means the call is already over, which is what was wanted; a 5xx, a connection
//! error or a timeout (5 s) is retried once; anything else fails. Every outcome is logged with the
//! call's CallSid and counted in `callvisor_call_control_total{action,outcome}`; no secret is
//! ever logged.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::metrics::Metrics;
use crate::twilio::twiml::TwimlResponse;

pub const DEFAULT_API_BASE_URL: &str = "https://api.twilio.com";
/// Per request; a call update that takes longer is retried once, then given up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a call update can take: two tries of [`REQUEST_TIMEOUT`], and a margin.
pub const MAX_UPDATE_TIME: Duration = Duration::from_secs(11);

/// Whom the REST requests authenticate as.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `TWILIO_API_KEY_SID` (SK…) and `TWILIO_API_KEY_SECRET`: Twilio's recommendation.
    ApiKey { sid: String, secret: SecretString },
    /// The account's own SID and `TWILIO_AUTH_TOKEN`.
    AuthToken(SecretString),
}

impl Credentials {
    /// What the startup line may say about them (never the secret).
    pub fn describe(&self) -> String {
        match self {
            Credentials::ApiKey { sid, .. } => format!("api-key {sid}"),
            Credentials::AuthToken(_) => "account auth token".into(),
        }
    }
}

/// A change to a live call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallUpdate {
    /// `Status=completed`.
    HangUp,
    /// `Twiml=<Response><Dial><Number>to</Number></Dial></Response>` (`<Sip>` for a `sip:` URI): the caller is connected to `to`.
    Transfer { to: String },
    /// `Twiml=<Response><Say>text</Say><Hangup/></Response>`: Twilio speaks, then hangs up.
    SayAndHangUp { text: String },
}

impl CallUpdate {
    /// The `action` label of `callvisor_call_control_total`.
    pub fn label(&self) -> &'static str {
        match self {
            CallUpdate::HangUp => "hangup",
            CallUpdate::Transfer { .. } => "transfer",
            CallUpdate::SayAndHangUp { .. } => "say_hangup",
        }
    }

    /// The form Twilio's `UpdateCall` takes for this change.
    pub fn form(&self) -> Vec<(&'static str, String)> {
        match self {
            CallUpdate::HangUp => vec![("Status", "completed".into())],
            CallUpdate::Transfer { to } => {
                vec![("Twiml", TwimlResponse::new().dial(to).build())]
            }
            CallUpdate::SayAndHangUp { text } => {
                vec![("Twiml", TwimlResponse::new().say(text).hangup().build())]
            }
        }
    }
}

/// How a call update went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlOutcome {
    Done,
    /// 404: the call had already ended.
    AlreadyOver,
    Failed(String),
}

impl ControlOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            ControlOutcome::Done => "ok",
            ControlOutcome::AlreadyOver => "already_over",
            ControlOutcome::Failed(_) => "failed",
        }
    }

    /// Whether the call is over (or changed) as asked.
    pub fn succeeded(&self) -> bool {
        !matches!(self, ControlOutcome::Failed(_))
    }
}

/// Twilio's REST API for live calls, as configured.
#[derive(Clone)]
pub struct CallControl {
    /// `TWILIO_API_BASE_URL`, without a trailing `/`.
    base: String,
    credentials: Credentials,
    /// `TWILIO_ACCOUNT_SID`; `None`: each call's `start.accountSid`.
    account_sid: Option<String>,
    metrics: Metrics,
}

thread_local! {
    /// awc's client is per thread (it is not `Send`); every call of a worker shares it.
    static CLIENT: awc::Client = crate::client::builder().timeout(REQUEST_TIMEOUT).finish();
}

impl CallControl {
    pub fn new(
        base: &str,
        credentials: Credentials,
        account_sid: Option<String>,
        metrics: Metrics,
    ) -> Self {
        CallControl {
            base: base.trim_end_matches('/').to_string(),
            credentials,
            account_sid,
            metrics,
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Applies `update` to the live call `call_sid` (of `start_account_sid` unless
    /// `TWILIO_ACCOUNT_SID` is set), retrying once on a 5xx, a connection error or a timeout.
    pub async fn update(
        &self,
        start_account_sid: &str,
        call_sid: &str,
        update: &CallUpdate,
    ) -> ControlOutcome {
        let account = self.account_sid.as_deref().unwrap_or(start_account_sid);
        let outcome = if !is_sid(account) || !is_sid(call_sid) {
            ControlOutcome::Failed(format!(
                "not a Twilio SID: account {account:?}, call {call_sid:?}"
            ))
        } else {
            let url = format!(
                "{}/2010-04-01/Accounts/{account}/Calls/{call_sid}.json",
                self.base
            );
            let (user, secret) = match &self.credentials {
                Credentials::ApiKey { sid, secret } => (sid.as_str(), secret),
                Credentials::AuthToken(token) => (account, token),
            };
            let form = update.form();
            let mut outcome = ControlOutcome::Failed("not sent".into());
            for attempt in 1..=2 {
                let (result, retry) = send(&url, user, secret, &form).await;
                outcome = result;
                if !retry || attempt == 2 {
                    break;
                }
                log::warn!(call_sid = call_sid; "call {} failed ({}), retrying once", update.label(), failure(&outcome));
            }
            outcome
        };
        self.metrics
            .call_control
            .get_or_create(&[("action", update.label()), ("outcome", outcome.label())])
            .inc();
        match &outcome {
            ControlOutcome::Failed(why) => {
                log::error!(call_sid = call_sid; "call {} failed: {why}", update.label())
            }
            done => log::info!(call_sid = call_sid; "call {}: {}", update.label(), done.label()),
        }
        outcome
    }
}

fn failure(outcome: &ControlOutcome) -> &str {
    match outcome {
        ControlOutcome::Failed(why) => why,
        _ => "",
    }
}

/// One request; the outcome and whether it is worth one more try.
async fn send(
    url: &str,
    user: &str,
    secret: &SecretString,
    form: &[(&'static str, String)],
) -> (ControlOutcome, bool) {
    let request = CLIENT.with(|client| {
        client
            .post(url)
            .basic_auth(user, secret.expose_secret())
            .send_form(&form)
    });
    let mut response = match request.await {
        Ok(response) => response,
        Err(e) => return (ControlOutcome::Failed(format!("request failed: {e}")), true),
    };
    let status = response.status();
    if status.is_success() {
        return (ControlOutcome::Done, false);
    }
    if status.as_u16() == 404 {
        return (ControlOutcome::AlreadyOver, false);
    }
    // Twilio's error body: {"code":20003,"message":"Authenticate","more_info":…,"status":401}.
    let body = response.body().limit(16 * 1024).await.unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            Some(format!(
                "Twilio error {}: {}",
                v.get("code")?,
                v.get("message")?.as_str()?
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    (
        ControlOutcome::Failed(format!("HTTP {}: {message}", status.as_u16())),
        status.is_server_error(),
    )
}

/// Twilio SIDs are two letters and 32 hex digits; anything that could leave the URL path is
/// refused before a request is built (a forged `start` carries whatever it likes).
fn is_sid(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_update_is_the_form_twilio_documents() {
        assert_eq!(
            CallUpdate::HangUp.form(),
            vec![("Status", "completed".to_string())]
        );
        let transfer = CallUpdate::Transfer {
            to: "+14155550123".into(),
        };
        assert_eq!(
            transfer.form(),
            vec![(
                "Twiml",
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial><Number>+14155550123</Number></Dial></Response>"
                    .to_string()
            )]
        );
        let say = CallUpdate::SayAndHangUp {
            text: "Sorry & <goodbye>".into(),
        };
        assert_eq!(
            say.form()[0].1,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>Sorry &amp; &lt;goodbye&gt;</Say><Hangup/></Response>"
        );
    }

    #[test]
    fn sids_that_could_leave_the_path_are_refused() {
        assert!(is_sid("CA0123456789abcdef0123456789abcdef"));
        for bad in ["", "C", "CA/../x", "CA?x=1", "CA 1", "CA%2F"] {
            assert!(!is_sid(bad), "{bad}");
        }
    }
}
