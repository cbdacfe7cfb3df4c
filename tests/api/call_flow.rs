//! A complete call, exactly as Twilio runs it.

use crate::helpers::*;
use base64::Engine;

#[actix_web::test]
async fn a_full_call_echoes_every_frame_and_releases_its_slot() {
    let app = spawn_app().await;

    // 1. Voice webhook -> TwiML
    let params = call_params("CAfull1");
    let form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, xml) = app.webhook(&form, "").await;
    assert_eq!(status, 200);
    let twiml = parse_twiml(&xml);
    assert_eq!(twiml.verbs, ["Connect", "Redirect"]);
    let stream_url = twiml.stream_url.clone().unwrap();
    assert_eq!(
        stream_url,
        format!("ws://127.0.0.1:{}/media-stream", app.port)
    );
    let param = |name: &str| {
        twiml
            .parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(param("CallSid").as_deref(), Some("CAfull1"));
    assert_eq!(param("From").as_deref(), Some("+14155550100"));
    assert_eq!(param("To").as_deref(), Some("+14155550199"));
    assert_eq!(param("attempt").as_deref(), Some("1"));
    assert_eq!(
        twiml.redirect.as_deref(),
        Some(format!("{}/incoming-call?attempt=2", app.base).as_str())
    );

    // 2. The stream, with the TwiML's parameters as customParameters
    let mut call = app.open_stream_at(&stream_url).await;
    call.connected_and_start("CAfull1", "MZfull1", &twiml.parameters)
        .await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payloads: Vec<String> = (0..100u32)
        .map(|i| b64.encode(i.to_be_bytes().repeat(40)))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        call.media("MZfull1", i as u64 + 1, p).await;
    }
    for p in &payloads {
        let echo = call.next_json().await;
        assert_eq!(echo["event"], "media");
        assert_eq!(echo["streamSid"], "MZfull1");
        assert_eq!(
            &echo["media"]["payload"],
            p.as_str(),
            "echoed once, in order"
        );
    }
    let health = app.health().await;
    assert_eq!(health["active_calls"], 1);

    call.dtmf("MZfull1", "7").await;
    call.mark("MZfull1", "greeting-done").await;
    call.stop("MZfull1", "CAfull1").await;
    // Nothing else was echoed: the next frame is the close.
    match call.next_frame().await {
        Some(awc::ws::Frame::Close(Some(reason))) => {
            assert_eq!(u16::from(reason.code), 1000);
        }
        other => panic!("expected close 1000 right after the echoes, got {other:?}"),
    }

    let health = app.wait_for_active(0).await;
    assert_eq!(health["calls_admitted"], 1);
    assert_eq!(health["calls_completed"], 1);
    assert_eq!(health["calls_rejected"], 0);
}

#[actix_web::test]
async fn health_reports_the_replica_and_answers_head() {
    let app = spawn_app_with(|c| {
        c.limit_concurrency = 7;
        c.replica = "replica-a".into();
    })
    .await;
    let health = app.health().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["limit"], 7);
    assert_eq!(health["available"], 7);
    assert_eq!(health["draining"], false);
    assert_eq!(health["replica"], "replica-a");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_secs"].is_u64());
    let resp = app
        .client
        .head(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.get("/ready").await.0, 200);
}

#[actix_web::test]
async fn a_second_stream_for_a_live_call_replaces_the_first() {
    let app = spawn_app().await;
    let sid = stream_sid_for("CAdup");
    let mut first = app.start_call("CAdup").await;
    first.echo_round_trip(&sid, "AAAA").await;

    let mut second = app.open_stream().await;
    second.connected_and_start("CAdup", "MZdup2", &[]).await;
    assert_eq!(first.expect_close().await, (1000, "superseded".into()));
    second.echo_round_trip("MZdup2", "AQID").await;

    let health = app.wait_for_active(1).await;
    assert_eq!(health["calls_admitted"], 2);
    second.stop("MZdup2", "CAdup").await;
    assert_eq!(second.expect_close().await.0, 1000);
    app.wait_for_active(0).await;
}
