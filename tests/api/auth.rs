//! With TWILIO_AUTH_TOKEN set, nothing without Twilio's signature starts a call or takes a slot.

use crate::helpers::*;
use awc::error::WsClientError;
use callvisor::twilio::signature::sign;

const TOKEN: &str = "test-auth-token";

async fn secured_app(public_url: Option<&str>) -> TestApp {
    let public_url = public_url.map(String::from);
    spawn_app_with(move |c| {
        c.twilio_auth_token = Some(TOKEN.into());
        c.public_url = public_url;
    })
    .await
}

fn owned(params: &[(&'static str, String)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// POSTs the webhook with `X-Twilio-Signature` computed over `signed_url` (None: unsigned).
async fn post_webhook(
    app: &TestApp,
    params: &[(String, String)],
    signature: Option<String>,
) -> (u16, String) {
    let mut req = app.client.post(format!("{}/incoming-call", app.base));
    if let Some(sig) = signature {
        req = req.insert_header(("X-Twilio-Signature", sig));
    }
    let mut resp = req.send_form(&params).await.unwrap();
    let body = resp.body().await.unwrap();
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn stream_token(twiml: &Twiml) -> String {
    twiml
        .parameters
        .iter()
        .find(|(k, _)| k == "streamToken")
        .map(|(_, v)| v.clone())
        .expect("the webhook hands the stream a token")
}

async fn open_signed_stream(app: &TestApp, url: &str) -> TestStream {
    let sig = sign(TOKEN, url, &[]);
    app.open_stream_with_header(url, ("X-Twilio-Signature", sig))
        .await
}

#[actix_web::test]
async fn a_call_signed_as_twilio_signs_it_completes() {
    let app = secured_app(None).await;
    assert_eq!(app.health().await["auth"], "twilio-signature");
    let params = owned(&call_params("CAsigned"));
    let url = format!("{}/incoming-call", app.base);
    let (status, xml) = post_webhook(&app, &params, Some(sign(TOKEN, &url, &params))).await;
    assert_eq!(status, 200, "{xml}");
    let twiml = parse_twiml(&xml);
    let stream_url = twiml.stream_url.clone().unwrap();

    let mut call = open_signed_stream(&app, &stream_url).await;
    call.connected_and_start("CAsigned", "MZsigned", &twiml.parameters)
        .await;
    call.echo_round_trip("MZsigned", "AAAA").await;
    call.stop("MZsigned", "CAsigned").await;
    assert_eq!(call.expect_close().await.0, 1000);
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn unsigned_tampered_or_wrongly_keyed_webhooks_get_403() {
    let app = secured_app(None).await;
    let params = owned(&call_params("CAbad"));
    let url = format!("{}/incoming-call", app.base);

    let (status, body) = post_webhook(&app, &params, None).await;
    assert_eq!(status, 403);
    assert_eq!(body.trim(), "missing X-Twilio-Signature");
    assert!(!body.contains("<Response"));

    let good = sign(TOKEN, &url, &params);
    let mut tampered = params.clone();
    tampered[2].1 = "+19995550000".into(); // From
    let (status, body) = post_webhook(&app, &tampered, Some(good)).await;
    assert_eq!(status, 403);
    assert_eq!(body.trim(), "invalid X-Twilio-Signature");

    let other_account = sign("another-token", &url, &params);
    assert_eq!(
        post_webhook(&app, &params, Some(other_account)).await.0,
        403
    );

    // The query string is part of what is signed.
    let sig_for_attempt_1 = sign(TOKEN, &url, &params);
    let mut resp = app
        .client
        .post(format!("{url}?attempt=2"))
        .insert_header(("X-Twilio-Signature", sig_for_attempt_1))
        .send_form(&params)
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let _ = resp.body().await;
}

#[actix_web::test]
async fn an_unsigned_or_wrongly_signed_upgrade_gets_403_and_takes_no_slot() {
    let app = secured_app(None).await;
    let url = format!("ws://127.0.0.1:{}/media-stream", app.port);
    for sig in [None, Some(sign("another-token", &url, &[]))] {
        let mut req = app.client.ws(&url);
        if let Some(sig) = sig {
            req = req.header("X-Twilio-Signature", sig);
        }
        match req.connect().await {
            Err(WsClientError::InvalidResponseStatus(status)) => assert_eq!(status, 403),
            Err(e) => panic!("expected 403, got {e}"),
            Ok(_) => panic!("an unsigned upgrade was accepted"),
        }
    }
    let health = app.health().await;
    assert_eq!(health["calls_admitted"], 0);
}

#[actix_web::test]
async fn a_start_with_another_calls_token_or_none_is_closed_1008_and_freed() {
    let app = secured_app(None).await;
    // A real call's TwiML, with its token.
    let params = owned(&call_params("CAreal"));
    let url = format!("{}/incoming-call", app.base);
    let (_, xml) = post_webhook(&app, &params, Some(sign(TOKEN, &url, &params))).await;
    let twiml = parse_twiml(&xml);
    let stream_url = twiml.stream_url.clone().unwrap();
    let stolen = vec![("streamToken".to_string(), stream_token(&twiml))];

    // The real call is live...
    let mut real = open_signed_stream(&app, &stream_url).await;
    real.connected_and_start("CAreal", "MZreal", &twiml.parameters)
        .await;
    real.echo_round_trip("MZreal", "AAAA").await;

    // ...a stream replaying its token for another CallSid, a stream with no token, and one
    // that claims the real CallSid with a forged token are all refused.
    let forged = vec![("streamToken".to_string(), "9999999999.AAAA".to_string())];
    for (call_sid, params) in [("CAother", stolen), ("CAnone", vec![]), ("CAreal", forged)] {
        let mut s = open_signed_stream(&app, &stream_url).await;
        s.connected_and_start(call_sid, "MZx", &params).await;
        let (code, reason) = s.expect_close().await;
        assert_eq!(code, 1008, "{call_sid}: {reason}");
        assert!(reason.contains("stream token"), "{reason}");
    }
    // The real call was neither superseded nor disturbed, and the refused slots came back.
    real.echo_round_trip("MZreal", "AQID").await;
    let health = app.wait_for_active(1).await;
    assert_eq!(health["calls_completed"], 3);
}

#[actix_web::test]
async fn public_url_is_what_signatures_are_checked_against() {
    let app = secured_app(Some("https://example.test")).await;
    let params = owned(&call_params("CApub"));
    // Twilio requested https://example.test/...; the request reached us over plain HTTP.
    let public = "https://example.test/incoming-call";
    let (status, xml) = post_webhook(&app, &params, Some(sign(TOKEN, public, &params))).await;
    assert_eq!(status, 200);
    let twiml = parse_twiml(&xml);
    assert_eq!(
        twiml.stream_url.as_deref(),
        Some("wss://example.test/media-stream")
    );
    // Signed over the URL the socket saw: refused, it is not what Twilio signs.
    let local = format!("{}/incoming-call", app.base);
    assert_eq!(
        post_webhook(&app, &params, Some(sign(TOKEN, &local, &params)))
            .await
            .0,
        403
    );

    // The upgrade: signed over wss://example.test/media-stream, with or without :443 or a slash.
    for signed in [
        "wss://example.test/media-stream",
        "wss://example.test:443/media-stream",
        "wss://example.test/media-stream/",
    ] {
        let sig = sign(TOKEN, signed, &[]);
        let local_ws = format!("ws://127.0.0.1:{}/media-stream", app.port);
        let mut s = app
            .open_stream_with_header(&local_ws, ("X-Twilio-Signature", sig))
            .await;
        s.connected_and_start("CApub", "MZpub", &twiml.parameters)
            .await;
        s.echo_round_trip("MZpub", "AAAA").await;
        s.stop("MZpub", "CApub").await;
        assert_eq!(s.expect_close().await.0, 1000);
    }
}

#[actix_web::test]
async fn webhook_bodies_over_64_kib_get_413() {
    let app = secured_app(None).await;
    let big = "x".repeat(65 * 1024);
    let resp = app
        .client
        .post(format!("{}/incoming-call", app.base))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body(format!("CallSid=CA1&Junk={big}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[actix_web::test]
async fn without_a_token_the_endpoints_are_open_and_say_so() {
    let app = spawn_app().await;
    assert_eq!(app.health().await["auth"], "disabled");
    let (status, xml) = app.webhook(&[("CallSid", "CA1")], "").await;
    assert_eq!(status, 200);
    assert!(!xml.contains("streamToken"));
}

#[actix_web::test]
async fn the_auth_token_never_reaches_the_log() {
    let secret = "tok-9f8e7d6c5b4a";
    let mut bin = spawn_binary(&[("TWILIO_AUTH_TOKEN", secret), ("RUST_LOG", "debug")]).await;
    let line = bin.wait_for_log("starting:").await;
    assert!(line.contains("auth=twilio-signature"), "{line}");
    // A signed call goes through its whole life at debug level; no line may carry the token.
    let params = call_params("CAsecret");
    let url = format!("{}/incoming-call", bin.app.base);
    let sig = sign(secret, &url, &owned(&params));
    let mut resp = bin
        .app
        .client
        .post(&url)
        .insert_header(("X-Twilio-Signature", sig))
        .send_form(&params)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.body().await;
    bin.signal("TERM");
    assert_eq!(bin.exit_code(PATIENCE).await, 0);
    let leaked: Vec<String> = bin
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(secret))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}
