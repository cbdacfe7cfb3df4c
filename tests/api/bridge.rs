//! `HANDLER=bridge`: a bot written for Twilio, unchanged, behind callvisor.

use std::sync::Arc;
use std::time::Duration;

use callvisor::call::handlers::BridgeSettings;
use serde_json::json;

use crate::bot::{refusing_url, silent_url, Bot};
use crate::helpers::*;
use callvisor::fakes::twilio_rest::FakeTwilio;

const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";

async fn bridged(url: &str, twilio: &FakeTwilio) -> TestApp {
    let (url, base) = (url.to_string(), twilio.base.clone());
    spawn_app_with(move |c| {
        c.handler = Arc::new(BridgeSettings {
            url,
            connect_timeout: Duration::from_secs(1),
        });
        c.twilio_api_base_url = base;
        c.twilio_api_key = Some((KEY_SID.into(), "key-secret".to_string().into()));
    })
    .await
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[actix_web::test]
async fn the_bot_gets_twilios_protocol_and_its_answers_reach_the_caller() {
    let (bot, twilio) = (Bot::start(), FakeTwilio::start(KEY_SID, "key-secret"));
    let app = bridged(&bot.url, &twilio).await;
    let health = app.health().await;
    assert_eq!(health["handler"], "bridge");

    let (call_sid, sid) = ("CAbridge1", stream_sid_for("CAbridge1"));
    let mut twilio_side = app.open_stream().await;
    twilio_side
        .connected_and_start(
            call_sid,
            &sid,
            &params(&[("From", "+14155550100"), ("streamToken", "t0k")]),
        )
        .await;
    // Audio right away, likely before the bot's socket is open: it waits, in order.
    for n in 1..=3 {
        twilio_side.media(&sid, n, "f39/fw==").await;
    }
    twilio_side.dtmf(&sid, "7").await;
    twilio_side.mark(&sid, "greeting-done").await;
    let got = bot.wait_received(7).await;
    assert_eq!(
        bot.events(),
        [
            "connected",
            "start",
            "media",
            "media",
            "media",
            "dtmf",
            "mark"
        ]
    );
    let start = &got[1];
    assert_eq!(start["streamSid"], sid.as_str());
    assert_eq!(start["start"]["callSid"], call_sid);
    assert_eq!(
        start["start"]["customParameters"],
        json!({"From": "+14155550100"}),
        "the stream token stays with callvisor"
    );
    // Media exactly as Twilio sent it (the test client's own bytes).
    assert_eq!(got[2]["media"]["payload"], "f39/fw==");
    assert_eq!(got[2]["media"]["chunk"], "1");
    assert_eq!(got[5]["dtmf"]["digit"], "7");
    assert_eq!(got[6]["mark"]["name"], "greeting-done");

    // The bot answers with its own idea of the streamSid; the caller gets the real one.
    bot.send(json!({"event": "media", "streamSid": "MZwrong", "media": {"payload": "AAAA"}}))
        .await;
    bot.send(json!({"event": "mark", "streamSid": "MZwrong", "mark": {"name": "m1"}}))
        .await;
    bot.send(json!({"event": "bogus", "data": 1})).await;
    bot.send(json!({"event": "clear", "streamSid": "MZwrong"}))
        .await;
    let media = twilio_side.next_json().await;
    assert_eq!(
        media,
        json!({"event": "media", "streamSid": sid, "media": {"payload": "AAAA"}})
    );
    let mark = twilio_side.next_json().await;
    assert_eq!(
        mark,
        json!({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}})
    );
    // The bogus event was dropped: next comes the clear.
    assert_eq!(
        twilio_side.next_json().await,
        json!({"event": "clear", "streamSid": sid})
    );

    // The caller hangs up: the bot hears `stop`, then a normal close.
    twilio_side.stop(&sid, call_sid).await;
    assert_eq!(twilio_side.expect_close().await, (1000, "stop".into()));
    assert_eq!(bot.wait_closed().await.0, 1000);
    assert_eq!(bot.events().last().unwrap(), "stop");
    app.wait_for_active(0).await;
    assert!(
        twilio.updates().is_empty(),
        "the caller hung up: no REST call"
    );
    let m = scrape(&app).await;
    // connected, start, 3 media, dtmf, mark, stop / media, mark, bogus, clear
    assert_eq!(
        metric(&m, "callvisor_upstream_frames_total{direction=to_upstream}"),
        8.0
    );
    assert_eq!(
        metric(
            &m,
            "callvisor_upstream_frames_total{direction=from_upstream}"
        ),
        4.0
    );
    assert_eq!(metric(&m, "callvisor_upstream_connect_seconds_count"), 1.0);
}

#[actix_web::test]
async fn the_bot_hangs_up_and_the_call_really_ends() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    for (call_sid, how) in [("CAhang1", "hangup event"), ("CAhang2", "close 1000")] {
        let bot = Bot::start();
        let app = bridged(&bot.url, &twilio).await;
        twilio.live_call(call_sid);
        let mut call = app.start_call(call_sid).await;
        bot.wait_received(2).await;
        match how {
            "hangup event" => bot.send(json!({"event": "hangup"})).await,
            _ => bot.close(1000).await,
        }
        // Twilio's REST API hears the hang-up first, then the stream closes.
        assert_eq!(call.expect_close().await, (1000, "hangup".into()), "{how}");
        assert!(!twilio.is_live(call_sid), "{how}: the call was hung up");
        let update = twilio
            .updates()
            .into_iter()
            .find(|u| u.call_sid == call_sid)
            .unwrap();
        assert_eq!(update.form, [("Status".into(), "completed".into())]);
        app.wait_for_active(0).await;
        bot.wait_closed().await;
        let m = scrape(&app).await;
        assert_eq!(
            metric(&m, "callvisor_calls_ended_total{reason=hangup}"),
            1.0
        );
        assert_eq!(
            metric(&m, "callvisor_call_control_total{action=hangup,outcome=ok}"),
            1.0
        );
    }
}

#[actix_web::test]
async fn the_bot_transfers_to_an_e164_number_and_nothing_else() {
    let (bot, twilio) = (Bot::start(), FakeTwilio::start(KEY_SID, "key-secret"));
    let app = bridged(&bot.url, &twilio).await;
    twilio.live_call("CAxfer");
    let sid = stream_sid_for("CAxfer");
    let mut call = app.start_call("CAxfer").await;
    bot.wait_received(2).await;
    // Not a number: dropped, the call goes on.
    bot.send(json!({"event": "transfer", "to": "sales"})).await;
    call.echo_round_trip_via_bot(&bot, &sid).await;
    assert!(twilio.updates().is_empty());

    bot.send(json!({"event": "transfer", "to": "+14155550123"}))
        .await;
    assert_eq!(call.expect_close().await, (1000, "transfer".into()));
    let update = &twilio.updates()[0];
    assert_eq!(update.call_sid, "CAxfer");
    assert!(update.form[0]
        .1
        .contains("<Dial><Number>+14155550123</Number></Dial>"));
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn a_bot_out_of_reach_fails_the_call_over_to_another_replica() {
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    // Refused at once, and a server that never answers the handshake (1 s timeout here).
    for url in [refusing_url(), silent_url()] {
        let app = bridged(&url, &twilio).await;
        let mut call = app.start_call("CAnobot").await;
        assert_eq!(
            call.expect_close().await,
            (1011, "upstream unavailable".into()),
            "{url}"
        );
        let health = app.wait_for_active(0).await;
        assert_eq!(health["calls_completed"], 1);
        let m = scrape(&app).await;
        assert_eq!(
            metric(&m, "callvisor_calls_ended_total{reason=failed_over}"),
            1.0
        );
        assert_eq!(
            metric(&m, "callvisor_upstream_failures_total{reason=unreachable}"),
            1.0
        );
    }
    assert!(twilio.updates().is_empty(), "a fail-over is not a hang-up");
}

#[actix_web::test]
async fn a_bot_that_dies_mid_call_fails_the_call_over() {
    let (bot, twilio) = (Bot::start(), FakeTwilio::start(KEY_SID, "key-secret"));
    let app = bridged(&bot.url, &twilio).await;
    let mut call = app.start_call("CAdies").await;
    bot.wait_received(2).await;
    bot.drop_connection();
    assert_eq!(
        call.expect_close().await,
        (1011, "upstream unavailable".into())
    );
    app.wait_for_active(0).await;
    let m = scrape(&app).await;
    assert_eq!(
        metric(&m, "callvisor_upstream_failures_total{reason=lost}"),
        1.0
    );
}

#[actix_web::test]
async fn a_bot_that_stops_reading_costs_dropped_audio_not_memory() {
    let (bot, twilio) = (Bot::start(), FakeTwilio::start(KEY_SID, "key-secret"));
    let (url, base) = (bot.url.clone(), twilio.base.clone());
    let app = spawn_app_with(move |c| {
        c.handler = Arc::new(BridgeSettings {
            url,
            connect_timeout: Duration::from_secs(1),
        });
        c.twilio_api_base_url = base;
        c.twilio_api_key = Some((KEY_SID.into(), "key-secret".to_string().into()));
        c.outbound_buffer_bytes = 16 * 1024;
    })
    .await;
    let sid = stream_sid_for("CAhung");
    let mut call = app.start_call("CAhung").await;
    bot.wait_received(2).await;
    bot.stop_reading();
    // 8,000 bytes of audio a frame, far more than the kernel's buffers and the 16 KiB queue
    // hold: past them frames to the bot are dropped and counted; the call stays up.
    let payload =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x7f_u8; 8_000]);
    for n in 0..1_000 {
        call.media(&sid, n, &payload).await;
    }
    // Per-call counts reach /metrics once a second.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut dropped = 0.0;
    while dropped == 0.0 && std::time::Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        let m = scrape(&app).await;
        dropped = m
            .get("callvisor_upstream_dropped_frames_total")
            .copied()
            .unwrap_or(0.0);
    }
    assert!(dropped > 0.0, "nothing was dropped: the queue grew instead");
    assert_eq!(app.health().await["active_calls"], 1, "the call goes on");
    call.stop(&sid, "CAhung").await;
    assert_eq!(call.expect_close().await.0, 1000);
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn when_twilios_side_ends_the_bot_hears_how() {
    let (bot, twilio) = (Bot::start(), FakeTwilio::start(KEY_SID, "key-secret"));
    let app = bridged(&bot.url, &twilio).await;

    // The Twilio connection drops: the bot's socket is closed 1000, with no `stop`.
    let call = app.start_call("CAgone").await;
    bot.wait_received(2).await;
    drop(call);
    assert_eq!(bot.wait_closed().await, (1000, String::new()));
    assert_eq!(bot.events(), ["connected", "start"]);
    app.wait_for_active(0).await;

    // A drain hands the call over: 1001 `handoff`, no `stop` (it goes on elsewhere).
    let bot2 = Bot::start();
    let app2 = bridged(&bot2.url, &twilio).await;
    let mut call = app2.start_call("CAmoved").await;
    bot2.wait_received(2).await;
    let handed = app2.hand_off_all().await;
    assert_eq!(handed, 1);
    assert_eq!(call.expect_close().await, (1001, "handoff".into()));
    assert_eq!(bot2.wait_closed().await, (1001, "handoff".into()));
    assert_eq!(bot2.events(), ["connected", "start"]);
    app2.wait_for_active(0).await;
}

impl TestStream {
    /// One media frame from the caller reaches the bot, and the bot's answer comes back.
    async fn echo_round_trip_via_bot(&mut self, bot: &Bot, sid: &str) {
        let before = bot.received().len();
        self.media(sid, 9, "AQID").await;
        let got = bot.wait_received(before + 1).await;
        assert_eq!(got[before]["media"]["payload"], "AQID");
        bot.send(json!({"event": "media", "media": {"payload": "AQID"}}))
            .await;
        assert_eq!(self.next_json().await["media"]["payload"], "AQID");
    }
}

#[actix_web::test]
async fn more_than_a_hundred_calls_bridge_at_once() {
    // The bot: a second callvisor echoing, which speaks Media Streams like any Twilio bot.
    // (awc pools 100 connections per host by default; the bridge must not queue call 101.)
    let bot = spawn_app_with(|c| c.limit_concurrency = 150).await;
    let twilio = FakeTwilio::start(KEY_SID, "key-secret");
    let bot_url = format!("ws://127.0.0.1:{}/media-stream", bot.port);
    let (url, base) = (bot_url, twilio.base.clone());
    let app = spawn_app_with(move |c| {
        c.limit_concurrency = 150;
        c.handler = Arc::new(BridgeSettings {
            url,
            connect_timeout: Duration::from_secs(5),
        });
        c.twilio_api_base_url = base;
        c.twilio_api_key = Some((KEY_SID.into(), "key-secret".to_string().into()));
    })
    .await;
    let (s, code) = crate::callsim::callsim(
        &app.base,
        &["--calls", "110", "--duration", "3s", "--ramp", "500ms"],
    )
    .await;
    assert_eq!((code, &s["connected"]), (0, &json!(110)), "{s:#}");
    assert_eq!(s["redirected"], 0, "no call failed over: {s:#}");
    // Every call's audio came back through the bot. (Echoes still on their way through the bot
    // when the caller hangs up are not heard by anyone: no zero-loss claim on a loaded machine.)
    for call in s["call_records"].as_array().unwrap() {
        assert!(call["frames_echoed"].as_u64().unwrap() > 0, "{call}");
    }
    let health = bot.wait_for_active(0).await;
    assert_eq!(health["calls_admitted"], 110);
    app.wait_for_active(0).await;
}

#[actix_web::test]
async fn callsim_stands_in_for_twilios_rest_api_so_a_hang_up_ends_the_call() {
    // The whole loop on one machine: callsim (with --twilio-api) → callvisor bridge → bot.
    let bot = Bot::start();
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = bot.url.clone();
    let app = spawn_app_with(move |c| {
        c.handler = Arc::new(BridgeSettings {
            url,
            connect_timeout: Duration::from_secs(5),
        });
        c.twilio_api_base_url = format!("http://127.0.0.1:{api_port}");
        c.twilio_api_key = Some((KEY_SID.into(), "key-secret".to_string().into()));
    })
    .await;
    let base = app.base.clone();
    let sim = actix_web::rt::spawn(async move {
        let api = format!("127.0.0.1:{api_port}");
        crate::callsim::callsim(
            &base,
            &[
                "--calls",
                "1",
                "--duration",
                "30s",
                "--twilio-api",
                &api,
                "--twilio-api-key-sid",
                KEY_SID,
                "--twilio-api-key-secret",
                "key-secret",
            ],
        )
        .await
    });
    // The bot hears the call start, then hangs up: without a stand-in for Twilio's REST API the
    // call would go on for its 30 s (or come back through its <Redirect>).
    bot.wait_received(2).await;
    bot.send(json!({"event": "hangup"})).await;
    let (s, code) = sim.await.unwrap();
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["hung_up_by_app"], 1, "{s:#}");
    assert_eq!(s["call_records"][0]["outcome"], "hung up by app");
    assert!(s["elapsed_secs"].as_f64().unwrap() < 30.0);
    app.wait_for_active(0).await;
}
