//! LIMIT_CONCURRENCY caps calls, never HTTP.

use crate::helpers::*;

#[actix_web::test]
async fn a_full_replica_bounces_streams_and_webhooks_but_keeps_answering_http() {
    let app = spawn_app_with(|c| c.limit_concurrency = 2).await;
    let mut a = app.start_call("CAcap1").await;
    let mut b = app.start_call("CAcap2").await;
    a.echo_round_trip(&stream_sid_for("CAcap1"), "AAAA").await;
    b.echo_round_trip(&stream_sid_for("CAcap2"), "AAAA").await;

    // A third stream: accepted, then closed at once with 1013 so Twilio runs the Redirect.
    let mut c = app.open_stream().await;
    assert_eq!(c.expect_close().await, (1013, "at capacity".into()));

    let health = app.health().await;
    assert_eq!(health["active_calls"], 2);
    assert_eq!(health["available"], 0);
    assert_eq!(health["calls_rejected"], 1);
    assert_eq!(app.get("/ready").await.0, 503);

    let params = call_params("CAcap3");
    let form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The webhook still connects: behind a random load balancer the stream may land on a
    // replica with room. Here it lands on this one, is refused (above), and Twilio runs the
    // Redirect that follows the Connect.
    let (status, xml) = app.webhook(&form, "").await;
    assert_eq!(status, 200);
    let twiml = parse_twiml(&xml);
    assert_eq!(twiml.verbs, ["Connect", "Redirect"], "{xml}");
    assert_eq!(
        twiml.redirect.unwrap(),
        format!("{}/incoming-call?attempt=2", app.base)
    );

    // Live calls are untouched by all of this.
    a.echo_round_trip(&stream_sid_for("CAcap1"), "AQID").await;
    a.stop(&stream_sid_for("CAcap1"), "CAcap1").await;
    assert_eq!(a.expect_close().await.0, 1000);
    app.wait_for_active(1).await;
    assert_eq!(app.get("/ready").await.0, 200);
}

#[actix_web::test]
async fn the_last_try_on_a_full_replica_hears_the_busy_message() {
    let app = spawn_app_with(|c| {
        c.limit_concurrency = 1;
        c.max_redirects = 2;
        c.busy_message = "All lines busy & sorry".into();
    })
    .await;
    let _a = app.start_call("CAbusy1").await;
    app.wait_for_active(1).await;
    let params = call_params("CAbusy2");
    let form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, xml) = app.webhook(&form, "?attempt=2").await;
    assert_eq!(parse_twiml(&xml).verbs, ["Connect", "Redirect"]);
    // The last try: if its stream is refused too, the caller hears the message.
    let (_, xml) = app.webhook(&form, "?attempt=3").await;
    let twiml = parse_twiml(&xml);
    assert_eq!(twiml.verbs, ["Connect", "Say", "Hangup"]);
    assert_eq!(twiml.say.as_deref(), Some("All lines busy & sorry"));
    let mut refused = app.open_stream().await;
    assert_eq!(refused.expect_close().await, (1013, "at capacity".into()));
    // A try past the last one (a stale or forged URL) hears it at once.
    let (_, xml) = app.webhook(&form, "?attempt=4").await;
    assert_eq!(parse_twiml(&xml).verbs, ["Say", "Hangup"]);
}
