//! SIGTERM drains: the real binary, real signals, real exit codes.

use std::time::Duration;

use crate::helpers::*;

/// Far above any of the deadlines used below, so that "exited before this" proves the process
/// did not wait for a deadline it should not have waited for. Not a performance target.
const EXIT_BOUND: Duration = Duration::from_secs(20);

#[actix_web::test]
async fn with_no_live_call_sigterm_exits_0_at_once() {
    let mut bin = spawn_binary(&[("DRAIN_TIMEOUT_SECS", "60")]).await;
    assert_eq!(bin.app.health().await["status"], "ok");
    bin.signal("TERM");
    assert_eq!(bin.exit_code(EXIT_BOUND).await, 0);
    bin.wait_for_log("drain complete").await;
}

#[actix_web::test]
async fn a_live_call_goes_on_through_a_drain_and_the_process_exits_when_it_ends() {
    let mut bin = spawn_binary(&[("DRAIN_TIMEOUT_SECS", "60")]).await;
    let app = &bin.app;
    let sid = stream_sid_for("CAlive");
    let mut call = app.start_call("CAlive").await;
    call.echo_round_trip(&sid, "AAAA").await;

    bin.signal("TERM");
    bin.wait_for_log("draining: 1 live call(s)").await;
    let app = &bin.app;

    // The live call is untouched.
    call.echo_round_trip(&sid, "AQID").await;
    // New streams are bounced elsewhere: the webhook connects (the stream may land on another
    // replica), a stream that lands here is closed so that Twilio runs the Redirect.
    let (status, xml) = app.webhook(&[("CallSid", "CAnew")], "").await;
    assert_eq!(status, 200);
    assert_eq!(parse_twiml(&xml).verbs, ["Connect", "Redirect"]);
    let mut fresh = app.open_stream().await;
    assert_eq!(fresh.expect_close().await, (1001, "draining".into()));
    assert_eq!(app.get("/ready").await.0, 503);
    let health = app.health().await;
    assert_eq!(health["status"], "draining");
    assert_eq!(health["draining"], true);
    assert_eq!(health["active_calls"], 1);
    call.echo_round_trip(&sid, "AgME").await;
    assert!(bin.still_running());

    // The call ends by itself: the process follows at once.
    call.stop(&sid, "CAlive").await;
    assert_eq!(call.expect_close().await.0, 1000);
    assert_eq!(bin.exit_code(EXIT_BOUND).await, 0);
}

#[actix_web::test]
async fn at_the_deadline_every_call_is_handed_off_with_1001_and_nothing_it_sent_is_lost() {
    let mut bin = spawn_binary(&[("DRAIN_TIMEOUT_SECS", "1")]).await;
    let mut calls = Vec::new();
    for i in 0..3 {
        let call_sid = format!("CAhand{i}");
        let mut s = bin.app.start_call(&call_sid).await;
        s.echo_round_trip(&stream_sid_for(&call_sid), "AAAA").await;
        calls.push((stream_sid_for(&call_sid), s));
    }
    bin.signal("TERM");
    // Each call talks in lockstep (send a frame, read its echo) until the server closes it.
    let talkers = calls.into_iter().map(|(sid, mut s)| async move {
        let mut sent = 0u32;
        loop {
            let payload = base64_of(sent);
            s.media(&sid, sent as u64, &payload).await;
            sent += 1;
            match s.next_frame().await {
                Some(awc::ws::Frame::Text(t)) => {
                    let echo: serde_json::Value = serde_json::from_slice(&t).unwrap();
                    assert_eq!(echo["media"]["payload"], payload, "echoes stay in order");
                }
                Some(awc::ws::Frame::Close(Some(reason))) => {
                    // Only the frame in flight when the server closed may go unanswered.
                    return (
                        u16::from(reason.code),
                        reason.description.unwrap_or_default(),
                        sent,
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for (code, reason, sent) in futures_util::future::join_all(talkers).await {
        assert_eq!((code, reason.as_str()), (1001, "handoff"));
        assert!(sent > 1, "the call went on during the drain");
    }
    assert_eq!(bin.exit_code(EXIT_BOUND).await, 0);
    bin.wait_for_log("handing 3 live call(s) over").await;
}

#[actix_web::test]
async fn a_second_signal_hands_everything_over_at_once() {
    let mut bin = spawn_binary(&[("DRAIN_TIMEOUT_SECS", "300")]).await;
    let mut call = bin.app.start_call("CAsecond").await;
    call.echo_round_trip(&stream_sid_for("CAsecond"), "AAAA")
        .await;
    bin.signal("TERM");
    bin.wait_for_log("draining: 1 live call(s)").await;
    bin.signal("INT");
    assert_eq!(call.expect_close().await, (1001, "handoff".into()));
    assert_eq!(bin.exit_code(EXIT_BOUND).await, 0);
}

#[actix_web::test]
async fn railways_draining_seconds_set_the_deadline_minus_two() {
    let mut bin = spawn_binary(&[("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "10")]).await;
    bin.wait_for_log("drain_timeout=8s").await;
    let mut call = bin.app.start_call("CArail").await;
    call.echo_round_trip(&stream_sid_for("CArail"), "AAAA")
        .await;
    bin.signal("TERM");
    bin.wait_for_log("hand-off deadline in 8s").await;
    bin.signal("TERM");
    assert_eq!(call.expect_close().await.0, 1001);
    assert_eq!(bin.exit_code(EXIT_BOUND).await, 0);
}

fn base64_of(n: u32) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(n.to_be_bytes().repeat(40))
}
