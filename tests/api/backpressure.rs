//! Every call's outbound queue is bounded: a peer that does not read is closed, and nobody else
//! notices.

use crate::helpers::*;
use base64::Engine;

/// 8,000 bytes of audio (one second of mu-law) per frame: the attacker's frame.
fn big_payload() -> String {
    base64::engine::general_purpose::STANDARD.encode([0x7f_u8; 8_000])
}

#[actix_web::test]
async fn a_peer_that_floods_and_never_reads_is_closed_and_nobody_else_notices() {
    let app = spawn_app_with(|c| c.outbound_buffer_bytes = 16 * 1024).await;
    let honest_sid = stream_sid_for("CAhonest");
    let mut honest = app.start_call("CAhonest").await;
    honest.echo_round_trip(&honest_sid, "f39/fw==").await;

    let flood_sid = stream_sid_for("CAflood");
    let mut flooder = app.start_call("CAflood").await;
    app.wait_for_active(2).await;
    // Every frame is echoed back and never read: kernel buffers, actix-ws's channel, then the
    // 16 KiB queue fill up. 2,000 frames (21 MB of echoes) is far past all of them.
    let payload = big_payload();
    let flood = async {
        for n in 0..2_000 {
            let frame = callvisor::twilio::messages::TwilioFrame::Media {
                sequence_number: n.to_string(),
                stream_sid: &flood_sid,
                media: callvisor::twilio::messages::Media {
                    track: Some("inbound".into()),
                    chunk: Some(n.to_string().into()),
                    timestamp: Some("0".into()),
                    payload: payload.as_str().into(),
                },
            };
            // The server may cut the connection under us; that is an answer too.
            if futures_util::SinkExt::send(
                &mut flooder.ws,
                awc::ws::Message::Text(frame.to_json().into()),
            )
            .await
            .is_err()
            {
                break;
            }
        }
    };
    // The flood stops mattering once the server has given up on it: it then reads the flooder
    // no more, so the flooder's sends stall until the kernel cuts the connection.
    let health =
        futures_util::future::select(Box::pin(flood), Box::pin(app.wait_for_active(1))).await;
    let health = match health {
        futures_util::future::Either::Right((health, _)) => health,
        futures_util::future::Either::Left(((), waiting)) => waiting.await,
    };
    assert_eq!(health["calls_completed"], 1, "{health}");

    let m = scrape(&app).await;
    assert_eq!(
        metric(&m, "callvisor_calls_ended_total{reason=not_reading}"),
        1.0
    );
    // The honest call went on through all of it, and still echoes.
    honest.echo_round_trip(&honest_sid, "AAAA").await;
    honest.stop(&honest_sid, "CAhonest").await;
    assert_eq!(honest.expect_close().await, (1000, "stop".into()));
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn a_reader_that_falls_behind_within_the_buffer_keeps_its_call_and_every_frame() {
    let app = spawn_app_with(|c| c.outbound_buffer_bytes = 64 * 1024).await;
    let sid = stream_sid_for("CAlate");
    let mut s = app.start_call("CAlate").await;
    // 300 frames sent before reading a single echo: the echoes wait (in the kernel and in the
    // queue) but stay far below the cap.
    for n in 0..300 {
        s.media(&sid, n, "f39/fw+/AAA=").await;
    }
    for _ in 0..300 {
        let echo = s.next_json().await;
        assert_eq!(echo["media"]["payload"], "f39/fw+/AAA=");
    }
    s.stop(&sid, "CAlate").await;
    assert_eq!(s.expect_close().await, (1000, "stop".into()));
    let health = app.wait_for_active(0).await;
    assert_eq!(health["calls_completed"], 1);
}
