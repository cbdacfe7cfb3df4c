//! Twilio REST call control against a fake that checks what Twilio checks.

use std::time::Duration;

use callvisor::metrics::Metrics;
use callvisor::twilio::rest::{CallControl, CallUpdate, ControlOutcome, Credentials};
use secrecy::SecretString;

use crate::fake_twilio::FakeTwilio;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";

fn api_key(secret: &str) -> Credentials {
    Credentials::ApiKey {
        sid: KEY_SID.into(),
        secret: SecretString::from(secret.to_string()),
    }
}

fn counted(metrics: &Metrics, action: &str, outcome: &str) -> bool {
    metrics.encode().contains(&format!(
        r#"callvisor_call_control_total{{action="{action}",outcome="{outcome}"}} 1"#
    ))
}

#[actix_web::test]
async fn hang_up_transfer_and_say_reach_twilio_as_documented() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let metrics = Metrics::new();
    let control = CallControl::new(&twilio.base, api_key("key-secret"), None, metrics.clone());
    for call in ["CAhang", "CAxfer", "CAsay"] {
        twilio.live_call(call);
    }

    let hang = control.update(ACCOUNT, "CAhang", &CallUpdate::HangUp).await;
    let xfer = control
        .update(
            ACCOUNT,
            "CAxfer",
            &CallUpdate::Transfer {
                to: "+14155550123".into(),
            },
        )
        .await;
    let say = control
        .update(
            ACCOUNT,
            "CAsay",
            &CallUpdate::SayAndHangUp {
                text: "Sorry & goodbye".into(),
            },
        )
        .await;
    assert_eq!(
        (hang, xfer, say),
        (
            ControlOutcome::Done,
            ControlOutcome::Done,
            ControlOutcome::Done
        )
    );
    let updates = twilio.updates();
    assert_eq!(updates.len(), 3);
    assert!(updates.iter().all(|u| u.account_sid == ACCOUNT));
    assert_eq!(updates[0].form, [("Status".into(), "completed".into())]);
    assert!(updates[1].form[0].1.contains("<Dial>+14155550123</Dial>"));
    assert!(updates[2].form[0]
        .1
        .contains("<Say>Sorry &amp; goodbye</Say><Hangup/>"));
    assert!(!twilio.is_live("CAhang") && twilio.is_live("CAxfer") && !twilio.is_live("CAsay"));
    assert!(counted(&metrics, "hangup", "ok"));
    assert!(counted(&metrics, "transfer", "ok"));
    assert!(counted(&metrics, "say_hangup", "ok"));
}

#[actix_web::test]
async fn a_call_already_over_is_a_success_not_an_error() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let metrics = Metrics::new();
    let control = CallControl::new(&twilio.base, api_key("key-secret"), None, metrics.clone());
    twilio.live_call("CAonce");
    assert_eq!(
        control.update(ACCOUNT, "CAonce", &CallUpdate::HangUp).await,
        ControlOutcome::Done
    );
    // The caller hung up first, or another replica did: Twilio answers 404.
    let again = control.update(ACCOUNT, "CAonce", &CallUpdate::HangUp).await;
    assert_eq!(again, ControlOutcome::AlreadyOver);
    assert!(again.succeeded());
    assert_eq!(twilio.answers("CAonce"), [200, 404]);
    assert!(counted(&metrics, "hangup", "already_over"));
}

#[actix_web::test]
async fn a_5xx_is_retried_once_and_a_second_one_fails() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let control = CallControl::new(&twilio.base, api_key("key-secret"), None, Metrics::new());
    twilio.live_call("CAflaky");
    twilio.fail_first("CAflaky", 1);
    assert_eq!(
        control
            .update(ACCOUNT, "CAflaky", &CallUpdate::HangUp)
            .await,
        ControlOutcome::Done
    );
    assert_eq!(twilio.answers("CAflaky"), [500, 200]);

    twilio.live_call("CAdown");
    twilio.fail_first("CAdown", 5);
    let outcome = control.update(ACCOUNT, "CAdown", &CallUpdate::HangUp).await;
    assert!(
        matches!(&outcome, ControlOutcome::Failed(why) if why.contains("HTTP 500")),
        "{outcome:?}"
    );
    assert_eq!(twilio.answers("CAdown"), [500, 500], "one retry, no more");
}

#[actix_web::test]
async fn wrong_credentials_fail_at_once_with_twilios_reason() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let metrics = Metrics::new();
    let control = CallControl::new(&twilio.base, api_key("wrong"), None, metrics.clone());
    twilio.live_call("CAauth");
    let outcome = control.update(ACCOUNT, "CAauth", &CallUpdate::HangUp).await;
    assert_eq!(
        outcome,
        ControlOutcome::Failed("HTTP 401: Twilio error 20003: Authenticate".into())
    );
    assert_eq!(twilio.answers("CAauth"), [401], "a 4xx is not retried");
    assert!(twilio.is_live("CAauth"));
    assert!(counted(&metrics, "hangup", "failed"));
}

#[actix_web::test]
async fn the_auth_token_authenticates_as_the_account_and_an_account_sid_overrides_start() {
    let configured = "AC99999999999999999999999999999999";
    let twilio = FakeTwilio::start(configured, "auth-token");
    let control = CallControl::new(
        &twilio.base,
        Credentials::AuthToken(SecretString::from("auth-token".to_string())),
        Some(configured.into()),
        Metrics::new(),
    );
    twilio.live_call("CAacct");
    assert_eq!(
        control.update(ACCOUNT, "CAacct", &CallUpdate::HangUp).await,
        ControlOutcome::Done
    );
    assert_eq!(twilio.updates()[0].account_sid, configured);
}

#[actix_web::test]
async fn a_request_that_times_out_is_retried_once_then_given_up() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let control = CallControl::new(&twilio.base, api_key("key-secret"), None, Metrics::new());
    twilio.live_call("CAslow");
    // Longer than the 5 s timeout, every time.
    twilio.delay("CAslow", Duration::from_secs(7));
    let outcome = control.update(ACCOUNT, "CAslow", &CallUpdate::HangUp).await;
    assert!(
        matches!(&outcome, ControlOutcome::Failed(why) if why.contains("request failed")),
        "{outcome:?}"
    );
}

#[actix_web::test]
async fn a_forged_sid_never_becomes_a_request() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let control = CallControl::new(&twilio.base, api_key("key-secret"), None, Metrics::new());
    let outcome = control
        .update("AC../../x", "CA1", &CallUpdate::HangUp)
        .await;
    assert!(matches!(outcome, ControlOutcome::Failed(_)));
    assert!(twilio.answers("CA1").is_empty());
}
