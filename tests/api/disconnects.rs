//! Every exit path of a call gives its slot back, including callers that just vanish.

use crate::helpers::*;
use futures_util::future::join_all;
use rand::{Rng, SeedableRng};

#[actix_web::test]
async fn fifty_calls_dropping_their_connection_at_random_points_release_every_slot() {
    let app = spawn_app_with(|c| c.limit_concurrency = 50).await;
    // CALLVISOR_TEST_SEED=N replays a failed run; the seed is printed either way.
    let seed = std::env::var("CALLVISOR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("disconnect plan seed: {seed} (replay with CALLVISOR_TEST_SEED={seed})");
    let plans: Vec<(u8, u32)> = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..50).map(|i| (i % 4, rng.random_range(1..30))).collect()
    };
    let calls = plans.into_iter().enumerate().map(|(i, (stage, frames))| {
        let app = &app;
        async move {
            let call_sid = format!("CAdrop{i}");
            let stream_sid = stream_sid_for(&call_sid);
            let mut s = app.open_stream().await;
            match stage {
                0 => {} // gone right after the upgrade
                1 => {
                    s.send_frame(callvisor::twilio::messages::TwilioFrame::Connected {
                        protocol: "Call",
                        version: "1.0.0",
                    })
                    .await
                }
                2 => s.connected_and_start(&call_sid, &stream_sid, &[]).await,
                _ => {
                    s.connected_and_start(&call_sid, &stream_sid, &[]).await;
                    for n in 0..frames {
                        s.media(&stream_sid, n as u64, "f39/fw==").await;
                    }
                    // read a few echoes, leave the rest unread in flight
                    for _ in 0..frames / 2 {
                        s.next_json().await;
                    }
                }
            }
            // No stop, no close frame: the TCP connection just goes away.
            drop(s);
        }
    });
    join_all(calls).await;

    let health = app.wait_for_active(0).await;
    assert_eq!(health["calls_admitted"], 50);
    assert_eq!(health["calls_completed"], 50);
    assert_eq!(health["calls_rejected"], 0);

    // The replica is as good as new.
    let mut s = app.start_call("CAafter").await;
    s.echo_round_trip(&stream_sid_for("CAafter"), "AAAA").await;
}
