//! The voice webhook's TwiML, beyond the happy path.

use crate::helpers::*;

#[actix_web::test]
async fn a_non_numeric_attempt_is_a_bad_request() {
    let app = spawn_app().await;
    for query in ["?attempt=abc", "?attempt=0", "?attempt=-1"] {
        let (status, body) = app.webhook(&[("CallSid", "CA1")], query).await;
        assert_eq!(status, 400, "{query}");
        assert!(body.contains("attempt"), "{body}");
    }
}

#[actix_web::test]
async fn an_absurd_attempt_is_answered_busy_not_a_crash() {
    let app = spawn_app().await;
    let (status, xml) = app
        .webhook(&[("CallSid", "CA1")], &format!("?attempt={}", u32::MAX))
        .await;
    assert_eq!(status, 200);
    assert_eq!(parse_twiml(&xml).verbs, ["Say", "Hangup"]);
    // Past u32 it is not a number this service accepts.
    let (status, _) = app
        .webhook(&[("CallSid", "CA1")], "?attempt=4294967296")
        .await;
    assert_eq!(status, 400);
    assert_eq!(app.health().await["status"], "ok");
}

#[actix_web::test]
async fn get_webhooks_work_and_values_are_escaped() {
    let app = spawn_app().await;
    let (status, xml) = app
        .get("/incoming-call?CallSid=CA9&From=%3Cscript%3E%26%22x%22&To=%2B1")
        .await;
    assert_eq!(status, 200);
    let twiml = parse_twiml(&xml);
    assert!(twiml
        .parameters
        .contains(&("From".to_string(), "<script>&\"x\"".to_string())));
    assert!(!xml.contains("<script>"));
}

#[actix_web::test]
async fn the_last_try_connects_with_the_busy_message_as_its_fallback() {
    let app = spawn_app_with(|c| c.max_redirects = 1).await;
    let (_, xml) = app.webhook(&[("CallSid", "CA1")], "?attempt=2").await;
    let twiml = parse_twiml(&xml);
    assert_eq!(twiml.verbs, ["Connect", "Say", "Hangup"]);
    let (_, xml) = app.webhook(&[("CallSid", "CA1")], "?attempt=3").await;
    assert_eq!(parse_twiml(&xml).verbs, ["Say", "Hangup"]);
}

#[actix_web::test]
async fn forwarded_headers_or_public_url_set_the_urls_in_twiml() {
    let app = spawn_app().await;
    let mut resp = app
        .client
        .post(format!("{}/incoming-call", app.base))
        .insert_header(("X-Forwarded-Proto", "https"))
        .insert_header(("X-Forwarded-Host", "calls.example.org"))
        .send_form(&[("CallSid", "CA1")])
        .await
        .unwrap();
    let xml = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    let twiml = parse_twiml(&xml);
    assert_eq!(
        twiml.stream_url.as_deref(),
        Some("wss://calls.example.org/media-stream")
    );
    assert_eq!(
        twiml.redirect.as_deref(),
        Some("https://calls.example.org/incoming-call?attempt=2")
    );

    let app = spawn_app_with(|c| c.public_url = Some("https://pinned.example".into())).await;
    let (_, xml) = app.webhook(&[("CallSid", "CA1")], "").await;
    assert_eq!(
        parse_twiml(&xml).stream_url.as_deref(),
        Some("wss://pinned.example/media-stream")
    );
}
