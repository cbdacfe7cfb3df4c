//! Bad input on one stream closes that stream with a specific code and reason, and nothing else.

use std::time::Duration;

use crate::helpers::*;
use awc::ws;
use callvisor::call::handler::{Call, CallHandler, HandlerError, HandlerFactory, MediaChunk};
use futures_util::SinkExt;

const HEALTHY: &str = "CAhealthy";

/// What a misbehaving stream does before the server must close it.
enum Setup {
    Nothing,
    Started,
}

#[actix_web::test]
async fn each_bad_input_closes_only_its_own_stream() {
    // No timer may race the cases below: each waits for its own close, whatever the load.
    let app = spawn_app_with(|c| c.start_timeout = PATIENCE * 4).await;
    let healthy_sid = stream_sid_for(HEALTHY);
    let mut healthy = app.start_call(HEALTHY).await;
    healthy.echo_round_trip(&healthy_sid, "AAAA").await;

    let big = format!(
        r#"{{"event":"media","streamSid":"MZbad","media":{{"payload":"{}"}}}}"#,
        "A".repeat(70 * 1024)
    );
    let cases: Vec<(&str, Setup, Option<ws::Message>, u16)> = vec![
        (
            "invalid JSON",
            Setup::Started,
            Some(text("{not json")),
            1007,
        ),
        (
            "media without its body",
            Setup::Started,
            Some(text(r#"{"event":"media","streamSid":"MZbad"}"#)),
            1007,
        ),
        (
            "start without callSid",
            Setup::Nothing,
            Some(text(r#"{"event":"start","start":{"streamSid":"MZbad"}}"#)),
            1007,
        ),
        (
            "undecodable base64",
            Setup::Started,
            Some(text(
                r#"{"event":"media","streamSid":"MZbad","media":{"payload":"!!not base64!!"}}"#,
            )),
            1007,
        ),
        (
            "binary frame",
            Setup::Started,
            Some(ws::Message::Binary(vec![1u8, 2, 3].into())),
            1003,
        ),
        ("frame over 64 KiB", Setup::Started, Some(text(&big)), 1009),
        (
            "media before start",
            Setup::Nothing,
            Some(text(
                r#"{"event":"media","streamSid":"MZbad","media":{"payload":"AAAA"}}"#,
            )),
            1008,
        ),
        (
            "dtmf before start",
            Setup::Nothing,
            Some(text(
                r#"{"event":"dtmf","streamSid":"MZbad","dtmf":{"digit":"1"}}"#,
            )),
            1008,
        ),
        (
            "mark before start",
            Setup::Nothing,
            Some(text(
                r#"{"event":"mark","streamSid":"MZbad","mark":{"name":"m"}}"#,
            )),
            1008,
        ),
        ("second start", Setup::Started, None, 1008),
    ];

    for (i, (name, setup, message, code)) in cases.into_iter().enumerate() {
        let call_sid = format!("CAbad{i}");
        let mut bad = app.open_stream().await;
        match setup {
            Setup::Nothing => {}
            Setup::Started => {
                bad.connected_and_start(&call_sid, "MZbad", &[]).await;
            }
        }
        match (message, name) {
            (Some(m), _) => bad.ws.send(m).await.unwrap(),
            (None, _) => {
                // "second start"
                bad.connected_and_start(&call_sid, "MZbad", &[]).await;
            }
        }
        let (got, reason) = bad.expect_close().await;
        assert_eq!(got, code, "{name}: closed {got} ({reason})");
        assert!(!reason.is_empty(), "{name}: a close reason is given");

        // The healthy call never noticed.
        healthy.echo_round_trip(&healthy_sid, "AQID").await;
    }

    let health = app.wait_for_active(1).await;
    assert_eq!(health["calls_completed"], 10);
    healthy.stop(&healthy_sid, HEALTHY).await;
    assert_eq!(healthy.expect_close().await.0, 1000);
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn a_stream_that_never_starts_is_closed_1008_after_the_start_timeout() {
    // The only stream of its server: nothing else can race the 1 s timer.
    let app = spawn_app_with(|c| c.start_timeout = Duration::from_secs(1)).await;
    let mut s = app.open_stream().await;
    s.send_frame(callvisor::twilio::messages::TwilioFrame::Connected {
        protocol: "Call",
        version: "1.0.0",
    })
    .await;
    assert_eq!(s.expect_close().await, (1008, "no start within 1s".into()));
    let health = app.wait_for_active(0).await;
    assert_eq!(health["calls_completed"], 1);
}

#[actix_web::test]
async fn a_silent_stream_is_closed_1001_after_the_idle_timeout() {
    let app = spawn_app_with(|c| c.idle_timeout = Duration::from_secs(2)).await;
    let healthy_sid = stream_sid_for(HEALTHY);
    let mut healthy = app.start_call(HEALTHY).await;
    let mut silent = app.start_call("CAsilent").await;
    silent
        .echo_round_trip(&stream_sid_for("CAsilent"), "AAAA")
        .await;

    // The healthy call keeps talking through the silent one's timeout: back to back round
    // trips, so it is never silent for longer than one of them takes.
    let closed = actix_web::rt::spawn(async move { silent.expect_close().await });
    while !closed.is_finished() {
        healthy.echo_round_trip(&healthy_sid, "AQID").await;
        actix_web::rt::task::yield_now().await;
    }
    let (code, reason) = closed.await.unwrap();
    assert_eq!(code, 1001);
    assert!(reason.contains("nothing received"), "{reason}");
    healthy.echo_round_trip(&healthy_sid, "AQID").await;
    app.wait_for_active(1).await;
}

fn text(s: &str) -> ws::Message {
    ws::Message::Text(s.to_string().into())
}

/// Echoes two frames, then fails: a bug in a call's handler.
struct FailsOnThirdFrame(u32);

impl CallHandler for FailsOnThirdFrame {
    fn on_media(&mut self, media: &MediaChunk<'_>, out: &mut Call<'_>) -> Result<(), HandlerError> {
        self.0 += 1;
        if self.0 == 3 {
            return Err(HandlerError("model backend unreachable".into()));
        }
        out.media_base64(media.payload_base64);
        Ok(())
    }
}

#[actix_web::test]
async fn a_failing_handler_closes_its_call_1011_and_frees_the_slot() {
    let handler: HandlerFactory = std::sync::Arc::new(|| Box::new(FailsOnThirdFrame(0)));
    let app = spawn_app_with_handler(|c| c.limit_concurrency = 2, Some(handler)).await;
    let mut healthy = app.start_call("CAok").await;
    let mut failing = app.start_call("CAfail").await;
    let sid = stream_sid_for("CAfail");
    failing.echo_round_trip(&sid, "AAAA").await;
    failing.echo_round_trip(&sid, "AQID").await;
    failing.media(&sid, 3, "AgME").await;
    assert_eq!(
        failing.expect_close().await,
        (1011, "handler failed".into())
    );

    // Only that call ended: its slot is free again, the other call goes on.
    let health = app.wait_for_active(1).await;
    assert_eq!(health["calls_completed"], 1);
    healthy
        .echo_round_trip(&stream_sid_for("CAok"), "AAAA")
        .await;
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains(r#"callvisor_calls_ended_total{reason="handler_failed"} 1"#),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_frame_with_reserved_bits_set_is_closed_1002_not_1007() {
    let app = spawn_app().await;
    let port = app.port;
    // A raw socket: no client library sends such a frame.
    let (code, reason) = actix_web::rt::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(
            b"GET /media-stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        // FIN + RSV1 + text, masked, "hi".
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0b1100_0001, 0x80 | 2];
        frame.extend(mask);
        frame.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
        let mut close = [0u8; 4];
        s.read_exact(&mut close).unwrap();
        assert_eq!(close[0], 0x88, "a close frame");
        let mut reason = vec![0u8; usize::from(close[1] & 0x7f) - 2];
        s.read_exact(&mut reason).unwrap();
        (
            u16::from_be_bytes([close[2], close[3]]),
            String::from_utf8(reason).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (1002, "a frame with reserved bits set")
    );
    app.wait_for_active(0).await;
}
