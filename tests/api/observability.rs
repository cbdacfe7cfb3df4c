//! What operators read: /metrics, JSON log lines, stream status callbacks.

use std::time::Duration;

use crate::helpers::*;
use callvisor::twilio::signature::sign;

#[actix_web::test]
async fn metrics_count_a_complete_call_and_a_bounced_one() {
    let app = spawn_app_with(|c| c.limit_concurrency = 1).await;
    let (_, xml) = app.webhook(&[("CallSid", "CAm1")], "").await;
    assert_eq!(parse_twiml(&xml).verbs[0], "Connect");
    let mut call = app.start_call("CAm1").await;
    let sid = stream_sid_for("CAm1");
    for _ in 0..10 {
        call.echo_round_trip(&sid, "f39/fw==").await; // 4 bytes of audio each
    }
    // Full now: a second call's stream is refused for capacity, and its retry is counted.
    let (_, xml) = app.webhook(&[("CallSid", "CAm2")], "").await;
    assert_eq!(parse_twiml(&xml).verbs, ["Connect", "Redirect"]);
    let (_, xml) = app.webhook(&[("CallSid", "CAm2")], "?attempt=2").await;
    assert_eq!(parse_twiml(&xml).verbs, ["Connect", "Redirect"]);
    let mut refused = app.open_stream().await;
    assert_eq!(refused.expect_close().await.0, 1013);
    let live = scrape(&app).await;
    assert_eq!(metric(&live, "callvisor_calls_active"), 1.0);
    assert_eq!(metric(&live, "callvisor_calls_limit"), 1.0);

    call.stop(&sid, "CAm1").await;
    assert_eq!(call.expect_close().await.0, 1000);
    app.wait_for_active(0).await;

    let m = scrape(&app).await;
    assert_eq!(metric(&m, "callvisor_calls_active"), 0.0);
    assert_eq!(metric(&m, "callvisor_draining"), 0.0);
    assert_eq!(metric(&m, "callvisor_calls_admitted_total"), 1.0);
    assert_eq!(
        metric(&m, "callvisor_calls_rejected_total{reason=capacity}"),
        1.0
    );
    assert_eq!(metric(&m, "callvisor_calls_ended_total{reason=stop}"), 1.0);
    assert_eq!(
        metric(&m, "callvisor_webhook_answers_total{outcome=connect}"),
        2.0
    );
    assert_eq!(
        metric(&m, "callvisor_webhook_answers_total{outcome=retry}"),
        1.0
    );
    assert_eq!(metric(&m, "callvisor_media_frames_in_total"), 10.0);
    assert_eq!(metric(&m, "callvisor_media_frames_out_total"), 10.0);
    assert_eq!(metric(&m, "callvisor_media_bytes_in_total"), 40.0);
    assert_eq!(metric(&m, "callvisor_media_bytes_out_total"), 40.0);
    assert_eq!(metric(&m, "callvisor_call_duration_seconds_count"), 1.0);
}

#[actix_web::test]
async fn ended_reasons_are_counted_separately() {
    // Two servers: the one with a 1 s start timeout holds only the stream that must hit it, so
    // the timer cannot race the other cases on a loaded machine.
    let app = spawn_app_with(|c| c.start_timeout = PATIENCE * 4).await;
    let slow = spawn_app_with(|c| c.start_timeout = Duration::from_secs(1)).await;
    let mut s = app.start_call("CAgone").await;
    s.echo_round_trip(&stream_sid_for("CAgone"), "AAAA").await;
    drop(s); // client gone
    let mut s = app.open_stream().await;
    s.send_text("{broken").await;
    assert_eq!(s.expect_close().await.0, 1007);
    let mut s = slow.open_stream().await;
    assert_eq!(s.expect_close().await.0, 1008); // no start in time
    app.wait_for_active(0).await;
    slow.wait_for_active(0).await;
    let mut m = scrape(&app).await;
    m.extend(
        scrape(&slow)
            .await
            .into_iter()
            .filter(|(k, _)| k.contains("start_timeout")),
    );
    assert_eq!(
        metric(&m, "callvisor_calls_ended_total{reason=client_gone}"),
        1.0
    );
    assert_eq!(
        metric(&m, "callvisor_calls_ended_total{reason=protocol_error}"),
        1.0
    );
    assert_eq!(
        metric(&m, "callvisor_calls_ended_total{reason=start_timeout}"),
        1.0
    );
}

#[actix_web::test]
async fn json_logs_are_one_object_per_line_and_call_lines_carry_the_call_sid() {
    let mut bin = spawn_binary(&[("LOG_FORMAT", "json")]).await;
    let sid = stream_sid_for("CAjson");
    let mut call = bin.app.start_call("CAjson").await;
    call.echo_round_trip(&sid, "AAAA").await;
    call.stop(&sid, "CAjson").await;
    assert_eq!(call.expect_close().await.0, 1000);
    bin.app.wait_for_active(0).await;
    bin.signal("TERM");
    assert_eq!(bin.exit_code(PATIENCE).await, 0);

    let lines = bin.log_lines();
    assert!(lines.len() >= 4, "{lines:#?}");
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for o in &objects {
        assert!(
            o["level"].is_string() && o["msg"].is_string() && o["time"].is_string(),
            "{o}"
        );
    }
    let started = objects
        .iter()
        .find(|o| o["msg"].as_str().unwrap().starts_with("call started"))
        .expect("a call start line");
    assert_eq!(started["call_sid"], "CAjson");
    assert_eq!(started["stream_sid"], sid.as_str());
    let ended = objects
        .iter()
        .find(|o| o["msg"].as_str().unwrap().starts_with("call ended"))
        .expect("a call end line");
    assert_eq!(ended["call_sid"], "CAjson");
    assert!(
        ended["msg"].as_str().unwrap().contains("reason=stop"),
        "{ended}"
    );
}

#[actix_web::test]
async fn stream_error_callbacks_are_logged_counted_and_must_be_signed() {
    let mut bin = spawn_binary(&[("TWILIO_AUTH_TOKEN", "tok")]).await;
    let url = format!("{}/stream-status", bin.app.base);
    let params: Vec<(String, String)> = [
        ("AccountSid", "ACx"),
        ("CallSid", "CAerr"),
        ("StreamSid", "MZerr"),
        ("StreamName", "MZerr"),
        ("StreamEvent", "stream-error"),
        ("StreamError", "Stream - WebSocket - Connection Refused"),
        ("Timestamp", "2026-11-28T05:00:00Z"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let unsigned = bin.app.client.post(&url).send_form(&params).await.unwrap();
    assert_eq!(unsigned.status(), 403);
    let signed = bin
        .app
        .client
        .post(&url)
        .insert_header(("X-Twilio-Signature", sign("tok", &url, &params)))
        .send_form(&params)
        .await
        .unwrap();
    assert_eq!(signed.status(), 204);
    let line = bin.wait_for_log("twilio stream-error").await;
    assert!(line.contains("WebSocket - Connection Refused"), "{line}");
    assert!(line.contains("WARN"), "{line}");
    let m = scrape(&bin.app).await;
    assert_eq!(
        metric(
            &m,
            "callvisor_stream_status_events_total{event=stream-error}"
        ),
        1.0
    );
    bin.signal("TERM");
    assert_eq!(bin.exit_code(PATIENCE).await, 0);
}
