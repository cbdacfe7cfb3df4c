//! The handler contract: an app hears how its call ended exactly once, whatever ended it.

use std::sync::{Arc, Mutex};

use callvisor::call::handler::{
    Call, CallEnd, CallHandler, HandlerError, HandlerFactory, MediaChunk,
};
use callvisor::twilio::messages::Start;

use crate::helpers::*;

type Ends = Arc<Mutex<Vec<(String, CallEnd)>>>;

/// Echoes, fails over when the caller presses `9`, and records every `on_end`.
struct Recorder {
    ends: Ends,
    call_sid: String,
}

impl CallHandler for Recorder {
    fn on_start(&mut self, start: &Start, _: &mut Call<'_>) -> Result<(), HandlerError> {
        self.call_sid = start.call_sid.clone();
        Ok(())
    }

    fn on_media(
        &mut self,
        media: &MediaChunk<'_>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        call.media_base64(media.payload_base64);
        Ok(())
    }

    fn on_dtmf(&mut self, digit: &str, call: &mut Call<'_>) -> Result<(), HandlerError> {
        if digit == "9" {
            call.fail_over("the app gave up");
        }
        Ok(())
    }

    fn on_end(&mut self, end: &CallEnd, _: &mut Call<'_>) {
        self.ends
            .lock()
            .unwrap()
            .push((self.call_sid.clone(), *end));
    }
}

#[actix_web::test]
async fn the_app_hears_each_way_a_call_ends_exactly_once() {
    let ends: Ends = Arc::default();
    let factory: HandlerFactory = {
        let ends = ends.clone();
        Arc::new(move || {
            Box::new(Recorder {
                ends: ends.clone(),
                call_sid: String::new(),
            })
        })
    };
    let app = spawn_app_with_handler(|_| {}, Some(factory)).await;

    // The caller hangs up (`stop`).
    let sid = stream_sid_for("CAstop");
    let mut call = app.start_call("CAstop").await;
    call.echo_round_trip(&sid, "AAAA").await;
    call.stop(&sid, "CAstop").await;
    call.expect_close().await;

    // The connection drops without a close frame.
    let mut call = app.start_call("CAdrop").await;
    call.echo_round_trip(&stream_sid_for("CAdrop"), "AAAA")
        .await;
    drop(call);

    // Twilio closes the socket with a close frame but no `stop`.
    let mut call = app.start_call("CApeer").await;
    call.echo_round_trip(&stream_sid_for("CApeer"), "AAAA")
        .await;
    futures_util::SinkExt::send(
        &mut call.ws,
        awc::ws::Message::Close(Some(awc::ws::CloseCode::Normal.into())),
    )
    .await
    .unwrap();

    // Bad input after `start`.
    let mut call = app.start_call("CAbad").await;
    call.echo_round_trip(&stream_sid_for("CAbad"), "AAAA").await;
    call.send_text("{not json").await;
    assert_eq!(call.expect_close().await.0, 1007);

    // The app itself gives up.
    let sid = stream_sid_for("CAquit");
    let mut call = app.start_call("CAquit").await;
    call.dtmf(&sid, "9").await;
    assert_eq!(call.expect_close().await, (1011, "the app gave up".into()));

    // A newer stream of the same call replaces this one; then a drain hands the newer one off.
    let mut first = app.start_call("CAdup").await;
    first
        .echo_round_trip(&stream_sid_for("CAdup"), "AAAA")
        .await;
    let mut second = app.open_stream().await;
    second.connected_and_start("CAdup", "MZdup2", &[]).await;
    assert_eq!(first.expect_close().await, (1000, "superseded".into()));
    second.echo_round_trip("MZdup2", "AAAA").await;
    app.hand_off_all().await;
    assert_eq!(second.expect_close().await, (1001, "handoff".into()));

    app.wait_for_active(0).await;
    let mut got: Vec<(String, &str, u16)> = ends
        .lock()
        .unwrap()
        .iter()
        .map(|(sid, end)| (sid.clone(), end.reason.label(), end.code))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("CAbad".into(), "protocol_error", 1007),
            ("CAdrop".into(), "client_gone", 1006),
            ("CAdup".into(), "handoff", 1001),
            ("CAdup".into(), "superseded", 1000),
            ("CApeer".into(), "client_closed", 1000),
            ("CAquit".into(), "failed_over", 1011),
            ("CAstop".into(), "stop", 1000),
        ],
        "one on_end per stream, with how it ended"
    );
}
