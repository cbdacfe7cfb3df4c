//! Twilio REST call control against a fake that checks what Twilio checks.

use std::time::Duration;

use callvisor::fakes::twilio_rest::FakeTwilio;
use callvisor::metrics::Metrics;
use callvisor::twilio::rest::{CallControl, CallUpdate, ControlOutcome, Credentials};
use secrecy::SecretString;

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
    assert!(updates[1].form[0]
        .1
        .contains("<Dial><Number>+14155550123</Number></Dial>"));
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
    assert_eq!(twilio.received("CAflaky"), 2, "one 500, one retry");
    assert_eq!(twilio.answers("CAflaky"), [500, 200]);

    twilio.live_call("CAdown");
    twilio.fail_first("CAdown", 5);
    let outcome = control.update(ACCOUNT, "CAdown", &CallUpdate::HangUp).await;
    assert!(
        matches!(&outcome, ControlOutcome::Failed(why) if why.contains("HTTP 500")),
        "{outcome:?}"
    );
    assert_eq!(twilio.received("CAdown"), 2, "one retry, no more");
    assert_eq!(twilio.answers("CAdown"), [500, 500]);
    assert!(twilio.is_live("CAdown"));
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
    assert_eq!(twilio.received("CAauth"), 1, "a 4xx is not retried");
    assert_eq!(twilio.answers("CAauth"), [401]);
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
    // Counted as they arrive: both tries reached Twilio before the client gave up on each.
    assert_eq!(
        twilio.received("CAslow"),
        2,
        "one retry after a timeout, no more"
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
    assert_eq!(twilio.received("CA1"), 0);
}

/// One raw request to the fake, as any client could send it: the status, Twilio's error code
/// (when it is one) and the JSON body.
async fn post(
    twilio: &FakeTwilio,
    account: &str,
    call: &str,
    auth: Option<(&str, &str)>,
    content_type: &str,
    body: String,
) -> (u16, Option<u64>, serde_json::Value) {
    let url = format!(
        "{}/2010-04-01/Accounts/{account}/Calls/{call}.json",
        twilio.base
    );
    let mut req = awc::Client::default()
        .post(url)
        .insert_header(("content-type", content_type));
    if let Some((user, password)) = auth {
        req = req.basic_auth(user, password);
    }
    let mut resp = req.send_body(body).await.unwrap();
    let json: serde_json::Value = resp.json().await.unwrap();
    (resp.status().as_u16(), json["code"].as_u64(), json)
}

fn form(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).unwrap()
}

const FORM: &str = "application/x-www-form-urlencoded";

#[actix_web::test]
async fn the_fake_refuses_what_twilio_refuses_and_changes_nothing() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    twilio.live_call("CAstrict");
    let key = Some((KEY_SID, "key-secret"));
    let hang_up = || form(&[("Status", "completed")]);
    let refused = [
        (None, FORM, hang_up(), 401, 20003),
        (Some((KEY_SID, "nope")), FORM, hang_up(), 401, 20003),
        (
            key,
            "application/json",
            r#"{"Status":"completed"}"#.into(),
            400,
            20001,
        ),
    ];
    let mut tried = refused.len();
    for (auth, content_type, body, status, code) in refused {
        let (got, got_code, json) =
            post(&twilio, ACCOUNT, "CAstrict", auth, content_type, body).await;
        assert_eq!((got, got_code), (status, Some(code)), "{auth:?} {json}");
    }
    let long_say = format!(
        "<Response><Say>{}</Say></Response>",
        "a".repeat(4001 - "<Response><Say></Say></Response>".len())
    );
    let bad_forms: [(&[(&str, &str)], u64); 10] = [
        (&[("Method", "POST")], 21200),
        (
            &[
                ("Status", "completed"),
                ("Twiml", "<Response><Hangup/></Response>"),
            ],
            21200,
        ),
        (&[("Status", "completed"), ("Status", "completed")], 21200),
        (&[("Status", "busy")], 21200),
        (&[("Url", "/next")], 21205),
        (&[("Url", "https://x/y"), ("Method", "PUT")], 21200),
        (
            &[("Twiml", "<Response><Speak>hi</Speak></Response>")],
            12100,
        ),
        (
            &[(
                "Twiml",
                r#"<Response><Dial callerID="+1">+14155550123</Dial></Response>"#,
            )],
            12100,
        ),
        (&[("Twiml", "<Hangup/>")], 12100),
        (&[("Twiml", &long_say)], 32018),
    ];
    tried += bad_forms.len();
    for (fields, code) in bad_forms {
        let (status, got_code, json) =
            post(&twilio, ACCOUNT, "CAstrict", key, FORM, form(fields)).await;
        assert_eq!((status, got_code), (400, Some(code)), "{fields:?}: {json}");
    }
    assert!(
        twilio.is_live("CAstrict"),
        "no refused request ended the call"
    );
    assert!(twilio.updates().is_empty());
    assert_eq!(twilio.received("CAstrict"), tried);

    // A call that is not live, or no longer: 404 20404, even for a valid update.
    let (status, code, _) = post(&twilio, ACCOUNT, "CAnever", key, FORM, hang_up()).await;
    assert_eq!((status, code), (404, Some(20404)));
    let (status, _, _) = post(&twilio, ACCOUNT, "CAstrict", key, FORM, hang_up()).await;
    assert_eq!(status, 200);
    let (status, code, _) = post(&twilio, ACCOUNT, "CAstrict", key, FORM, hang_up()).await;
    assert_eq!((status, code), (404, Some(20404)));
}

#[actix_web::test]
async fn canceling_a_call_in_progress_does_nothing_and_each_update_does_what_twilio_would() {
    use callvisor::fakes::twilio_rest::AppAction;
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    twilio.live_call("CAup");
    let key = Some((KEY_SID, "key-secret"));

    // Twilio cancels only queued or ringing calls: 200, and the call goes on.
    let (status, _, json) = post(
        &twilio,
        ACCOUNT,
        "CAup",
        key,
        FORM,
        form(&[("Status", "canceled")]),
    )
    .await;
    assert_eq!(
        (status, json["status"].as_str()),
        (200, Some("in-progress"))
    );
    assert!(twilio.is_live("CAup"));
    assert_eq!(
        twilio.updates()[0].effect,
        None,
        "recorded as doing nothing"
    );
    assert_eq!(twilio.take_action("CAup"), None);

    // A Url: recorded, the call goes on under the TwiML fetched there.
    let url = form(&[("Url", "https://example.com/next"), ("Method", "GET")]);
    assert_eq!(post(&twilio, ACCOUNT, "CAup", key, FORM, url).await.0, 200);
    assert!(twilio.is_live("CAup"));
    assert_eq!(
        twilio.take_action("CAup"),
        Some(AppAction::Redirected {
            url: "https://example.com/next".into(),
            method: "GET".into()
        })
    );

    // A transfer to a SIP URI keeps the call up; then Say + Hangup ends it.
    let dial = form(&[(
        "Twiml",
        "<Response><Dial><Sip>sip:desk@example.com</Sip></Dial></Response>",
    )]);
    assert_eq!(post(&twilio, ACCOUNT, "CAup", key, FORM, dial).await.0, 200);
    assert!(twilio.is_live("CAup"));
    let bye = form(&[(
        "Twiml",
        "<Response><Say voice=\"alice\">Bye &amp; thanks</Say><Hangup/></Response>",
    )]);
    assert_eq!(post(&twilio, ACCOUNT, "CAup", key, FORM, bye).await.0, 200);
    assert!(!twilio.is_live("CAup"));
    let effects: Vec<_> = twilio.updates().into_iter().map(|u| u.effect).collect();
    assert_eq!(
        effects[2..],
        [
            Some(AppAction::Transferred {
                to: "sip:desk@example.com".into()
            }),
            Some(AppAction::HungUp {
                said: Some("Bye & thanks".into())
            }),
        ]
    );
}

#[actix_web::test]
async fn with_the_auth_token_the_fake_wants_the_paths_own_account() {
    use callvisor::fakes::twilio_rest::BasicAuth;
    let twilio = FakeTwilio::serve(
        "127.0.0.1:0".parse().unwrap(),
        BasicAuth::AccountAuthToken("auth-token".into()),
    )
    .unwrap();
    let control = CallControl::new(
        &twilio.base,
        Credentials::AuthToken(SecretString::from("auth-token".to_string())),
        None,
        Metrics::new(),
    );
    twilio.live_call("CAtoken");
    assert_eq!(
        control
            .update(ACCOUNT, "CAtoken", &CallUpdate::HangUp)
            .await,
        ControlOutcome::Done
    );
    // Another account's SID with this token: Twilio refuses it.
    twilio.live_call("CAother");
    let (status, code, _) = post(
        &twilio,
        ACCOUNT,
        "CAother",
        Some(("AC99999999999999999999999999999999", "auth-token")),
        FORM,
        form(&[("Status", "completed")]),
    )
    .await;
    assert_eq!((status, code), (401, Some(20003)));
}
