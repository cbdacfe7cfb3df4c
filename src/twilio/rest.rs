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
//!
//! `RECORD_CALLS` uses the call's Recordings subresource here too: [`CallControl::start_recording`]
//! (`POST …/Calls/{CallSid}/Recordings.json`, sent once: see `call/session/recording.rs` for what
//! a lost answer means) and [`CallControl::list_recordings`] (`GET` of the same list).
//!
//! Outbound calls (`POST /calls`) are created here ([`CallControl::create_call`], `POST
//! …/Calls.json`, never retried blindly: see `http/calls.rs`), and the stream of an outbound call
//! reads its Call resource ([`CallControl::fetch_call`]) for what answering-machine detection
//! found (`answered_by`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::records::recording::RecordingSettings;
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

/// The recording events Twilio tells `RECORDING_STATUS_URL` about (its
/// `RecordingStatusCallbackEvent`, space-separated): the file is ready (`completed`), or there
/// will be none (`absent`: the recording was too short or silent).
pub const RECORDING_STATUS_EVENTS: &str = "completed absent";

/// The form of Twilio's `CreateCallRecording` for `settings`: `RecordingChannels`, and with
/// `RECORDING_STATUS_URL` the callback and its events (Twilio's default method, POST).
pub fn recording_form(settings: &RecordingSettings) -> Vec<(&'static str, String)> {
    let mut form = vec![("RecordingChannels", settings.channels.as_str().to_string())];
    if let Some(url) = &settings.status_url {
        form.push(("RecordingStatusCallback", url.clone()));
        form.push((
            "RecordingStatusCallbackEvent",
            RECORDING_STATUS_EVENTS.to_string(),
        ));
    }
    form
}

/// One of a call's recordings, as Twilio lists it (the fields callvisor reads).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CallRecording {
    /// `RE…`
    pub sid: String,
    /// `in-progress`, `paused`, `stopped`, `processing`, `completed`, `absent`, …
    pub status: String,
}

impl CallRecording {
    /// Still recording the call (or paused, to be resumed by whoever paused it).
    pub fn is_active(&self) -> bool {
        matches!(self.status.as_str(), "in-progress" | "paused")
    }
}

/// A call Twilio created (`POST …/Calls.json`'s answer, the fields callvisor reads).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CreatedCall {
    /// `CA…`
    pub sid: String,
    /// `queued` (Twilio's answer to a create), then `ringing`, `in-progress`, …
    pub status: String,
}

/// A call as Twilio's Call resource shows it (`GET …/Calls/{CallSid}.json`, the fields
/// callvisor reads).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CallResource {
    pub sid: String,
    pub status: String,
    /// What answering-machine detection found (`human`, `machine_start`, `machine_end_beep`,
    /// `machine_end_silence`, `machine_end_other`, `fax`, `unknown`); `null` until it has.
    #[serde(default)]
    pub answered_by: Option<String>,
}

/// Why Twilio did not create a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateFailure {
    /// Twilio answered with an error: its HTTP status, its code (when the body is Twilio's JSON)
    /// and its message. Nothing was created. 429 (code 20429) is the account's calls per second.
    Refused {
        status: u16,
        code: Option<u64>,
        message: String,
    },
    /// No answer (a connection error, a timeout), or one that is not Twilio's (a 5xx from a
    /// proxy): the call may or may not have been created.
    Unknown(String),
}

impl CreateFailure {
    /// Twilio's 429: too many calls created per second; nothing was created, a later try may
    /// work.
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, CreateFailure::Refused { status: 429, .. })
    }
}

/// Why a REST request did not get what it asked for (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestFailure {
    pub why: String,
    /// A 5xx, a connection error or a timeout: the request may or may not have taken effect,
    /// and one more try may work.
    pub transient: bool,
}

impl RestFailure {
    fn lasting(why: String) -> RestFailure {
        RestFailure {
            why,
            transient: false,
        }
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

    /// `TWILIO_ACCOUNT_SID`, when configured.
    pub fn account_sid(&self) -> Option<&str> {
        self.account_sid.as_deref()
    }

    /// Creates a call (`POST /2010-04-01/Accounts/{AccountSid}/Calls.json` with `form`) in the
    /// account `account` (`TWILIO_ACCOUNT_SID`). Sent once: a request whose answer was lost may
    /// have placed the call, and a blind second one would ring the callee twice.
    pub async fn create_call(
        &self,
        account: &str,
        form: &[(&'static str, String)],
    ) -> Result<CreatedCall, CreateFailure> {
        if !is_sid(account) {
            return Err(CreateFailure::Refused {
                status: 400,
                code: None,
                message: format!("not a Twilio account SID: {account:?}"),
            });
        }
        let url = format!("{}/2010-04-01/Accounts/{account}/Calls.json", self.base);
        let (user, secret) = match &self.credentials {
            Credentials::ApiKey { sid, secret } => (sid.as_str(), secret),
            Credentials::AuthToken(token) => (account, token),
        };
        let request = CLIENT.with(|client| {
            client
                .post(&url)
                .basic_auth(user, secret.expose_secret())
                .send_form(&form)
        });
        let mut response = request
            .await
            .map_err(|e| CreateFailure::Unknown(format!("request failed: {e}")))?;
        let status = response.status();
        let body = response.body().limit(MAX_ANSWER_BYTES).await.map_err(|e| {
            CreateFailure::Unknown(format!(
                "HTTP {}, and its body could not be read: {e}",
                status.as_u16()
            ))
        })?;
        if status.is_success() {
            return serde_json::from_slice::<CreatedCall>(&body).map_err(|e| {
                CreateFailure::Unknown(format!("Twilio's answer is not a call: {e}"))
            });
        }
        let error = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let code = error.as_ref().and_then(|v| v.get("code")?.as_u64());
        match (code, status.is_server_error()) {
            (Some(code), _) => Err(CreateFailure::Refused {
                status: status.as_u16(),
                code: Some(code),
                message: error
                    .as_ref()
                    .and_then(|v| v.get("message")?.as_str().map(str::to_string))
                    .unwrap_or_default(),
            }),
            // Not Twilio's answer (a proxy's): whether the call exists is unknown.
            (None, true) => Err(CreateFailure::Unknown(format!(
                "HTTP {}: {}",
                status.as_u16(),
                twilio_message(&body)
            ))),
            (None, false) => Err(CreateFailure::Refused {
                status: status.as_u16(),
                code: None,
                message: twilio_message(&body),
            }),
        }
    }

    /// The call `call_sid` as Twilio's Call resource shows it (`GET …/Calls/{CallSid}.json`),
    /// of `start_account_sid` unless `TWILIO_ACCOUNT_SID` is set.
    pub async fn fetch_call(
        &self,
        start_account_sid: &str,
        call_sid: &str,
    ) -> Result<CallResource, RestFailure> {
        let account = self.account_sid.as_deref().unwrap_or(start_account_sid);
        if !is_sid(account) || !is_sid(call_sid) {
            return Err(RestFailure::lasting(format!(
                "not a Twilio SID: account {account:?}, call {call_sid:?}"
            )));
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{account}/Calls/{call_sid}.json",
            self.base
        );
        let (user, secret) = match &self.credentials {
            Credentials::ApiKey { sid, secret } => (sid.as_str(), secret),
            Credentials::AuthToken(token) => (account, token),
        };
        let request = CLIENT.with(|client| client.get(&url));
        let body = fetch(request, user, secret, None).await?;
        serde_json::from_slice(&body)
            .map_err(|e| RestFailure::lasting(format!("Twilio's answer is not a call: {e}")))
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

    /// Starts recording the live call `call_sid` (`POST …/Calls/{CallSid}/Recordings.json`,
    /// the form of [`recording_form`]) and returns the new recording's SID. Sent once, never
    /// retried here: a request whose answer was lost may have started a recording, and a blind
    /// second one would record the call twice.
    pub async fn start_recording(
        &self,
        start_account_sid: &str,
        call_sid: &str,
        settings: &RecordingSettings,
    ) -> Result<String, RestFailure> {
        #[derive(Deserialize)]
        struct Created {
            sid: String,
        }
        let (url, user, secret) = self.recordings_url(start_account_sid, call_sid)?;
        let form = recording_form(settings);
        let request = CLIENT.with(|client| client.post(&url));
        let body = fetch(request, user, secret, Some(&form)).await?;
        let created: Created = serde_json::from_slice(&body).map_err(|e| {
            RestFailure::lasting(format!("Twilio's answer is not a recording: {e}"))
        })?;
        if !created.sid.starts_with("RE") || !is_sid(&created.sid) {
            return Err(RestFailure::lasting(format!(
                "Twilio's answer has no recording SID: {:?}",
                created.sid
            )));
        }
        Ok(created.sid)
    }

    /// The recordings of the call `call_sid` (`GET …/Calls/{CallSid}/Recordings.json`, its
    /// first page: newest first, far more than a call ever has).
    pub async fn list_recordings(
        &self,
        start_account_sid: &str,
        call_sid: &str,
    ) -> Result<Vec<CallRecording>, RestFailure> {
        #[derive(Deserialize)]
        struct Page {
            recordings: Vec<CallRecording>,
        }
        let (url, user, secret) = self.recordings_url(start_account_sid, call_sid)?;
        let request = CLIENT.with(|client| client.get(&url));
        let body = fetch(request, user, secret, None).await?;
        let page: Page = serde_json::from_slice(&body).map_err(|e| {
            RestFailure::lasting(format!("Twilio's answer is not a list of recordings: {e}"))
        })?;
        Ok(page.recordings)
    }

    /// The call's Recordings list URL and the Basic pair to send (SIDs checked first).
    fn recordings_url<'a>(
        &'a self,
        start_account_sid: &'a str,
        call_sid: &str,
    ) -> Result<(String, &'a str, &'a SecretString), RestFailure> {
        let account = self.account_sid.as_deref().unwrap_or(start_account_sid);
        if !is_sid(account) || !is_sid(call_sid) {
            return Err(RestFailure::lasting(format!(
                "not a Twilio SID: account {account:?}, call {call_sid:?}"
            )));
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{account}/Calls/{call_sid}/Recordings.json",
            self.base
        );
        let (user, secret) = match &self.credentials {
            Credentials::ApiKey { sid, secret } => (sid.as_str(), secret),
            Credentials::AuthToken(token) => (account, token),
        };
        Ok((url, user, secret))
    }
}

/// One request (a form POST, or a GET): Twilio's answer body on a 2xx, else why not.
async fn fetch(
    request: awc::ClientRequest,
    user: &str,
    secret: &SecretString,
    form: Option<&[(&'static str, String)]>,
) -> Result<actix_web::web::Bytes, RestFailure> {
    let request = request.basic_auth(user, secret.expose_secret());
    let sent = match form {
        Some(form) => request.send_form(&form).await,
        None => request.send().await,
    };
    let mut response = sent.map_err(|e| RestFailure {
        why: format!("request failed: {e}"),
        transient: true,
    })?;
    let status = response.status();
    let body = response
        .body()
        .limit(MAX_ANSWER_BYTES)
        .await
        .map_err(|e| RestFailure {
            why: format!(
                "HTTP {}, and its body could not be read: {e}",
                status.as_u16()
            ),
            transient: status.is_success() || status.is_server_error(),
        })?;
    if status.is_success() {
        return Ok(body);
    }
    Err(RestFailure {
        why: format!("HTTP {}: {}", status.as_u16(), twilio_message(&body)),
        transient: status.is_server_error(),
    })
}

/// The most of an answer read: a call's recordings list is a few KiB.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Twilio's error body, `{"code":20003,"message":"Authenticate","more_info":…,"status":401}`,
/// as "Twilio error 20003: Authenticate"; anything else, its first 200 bytes.
fn twilio_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            Some(format!(
                "Twilio error {}: {}",
                v.get("code")?,
                v.get("message")?.as_str()?
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
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
    let body = response.body().limit(16 * 1024).await.unwrap_or_default();
    let message = twilio_message(&body);
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
    fn a_recording_is_asked_for_with_the_form_twilio_documents() {
        use crate::records::recording::Channels;
        let quiet = RecordingSettings {
            channels: Channels::Mono,
            status_url: None,
        };
        assert_eq!(
            recording_form(&quiet),
            vec![("RecordingChannels", "mono".to_string())]
        );
        let told = RecordingSettings {
            channels: Channels::Dual,
            status_url: Some("https://example.com/rec?x=1".into()),
        };
        assert_eq!(
            recording_form(&told),
            vec![
                ("RecordingChannels", "dual".to_string()),
                (
                    "RecordingStatusCallback",
                    "https://example.com/rec?x=1".to_string()
                ),
                (
                    "RecordingStatusCallbackEvent",
                    "completed absent".to_string()
                ),
            ]
        );
    }

    #[test]
    fn only_a_recording_in_progress_or_paused_is_active() {
        let with = |status: &str| CallRecording {
            sid: "RE1".into(),
            status: status.into(),
        };
        assert!(with("in-progress").is_active() && with("paused").is_active());
        for done in ["stopped", "processing", "completed", "absent", "deleted"] {
            assert!(!with(done).is_active(), "{done}");
        }
    }

    #[test]
    fn sids_that_could_leave_the_path_are_refused() {
        assert!(is_sid("CA0123456789abcdef0123456789abcdef"));
        for bad in ["", "C", "CA/../x", "CA?x=1", "CA 1", "CA%2F"] {
            assert!(!is_sid(bad), "{bad}");
        }
    }
}
