//! callsim, the Twilio caller simulator, against the real server: what it reports must be what
//! the server saw.

use serde_json::Value;

use crate::helpers::*;

/// Runs the callsim binary to its end; returns its `--json` summary and exit code.
pub async fn callsim(target: &str, args: &[&str]) -> (Value, i32) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callsim"));
    cmd.args(["--target", target, "--json"])
        .args(args)
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("TWILIO_API_KEY_SID")
        .env_remove("TWILIO_API_KEY_SECRET");
    // The server runs on this test's thread: wait for the child off it.
    let out = actix_web::rt::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("callsim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "callsim printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (summary, out.status.code().unwrap_or(-1))
}

#[actix_web::test]
async fn twenty_calls_connect_and_every_frame_comes_back() {
    let app = spawn_app_with(|c| c.limit_concurrency = 20).await;
    let (s, code) = callsim(
        &app.base,
        &["--calls", "20", "--duration", "2s", "--ramp", "500ms"],
    )
    .await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["connected"], 20, "{s:#}");
    assert_eq!(
        (s["busy"].as_u64(), s["failed"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["redirected"], 0);
    // 2 s of 20 ms frames per call, every one echoed.
    let sent = s["frames"]["sent"].as_u64().unwrap();
    assert!(
        sent >= 20 * 95,
        "too few frames for 20 calls of 2 s: {sent}"
    );
    assert_eq!(s["frames"]["echoed"], sent, "{:#}", s["frames"]);
    assert_eq!(s["frames"]["lost"], 0);
    assert_eq!(s["echo_rtt_ms"]["count"], sent, "every echo timed");
    for call in s["call_records"].as_array().unwrap() {
        assert_eq!(call["stream_ends"], serde_json::json!([]), "{call}");
        assert_eq!(call["redirects"], 0, "one webhook request: {call}");
    }

    // The server saw the same 20 calls, and all of them ended.
    let health = app.wait_for_active(0).await;
    assert_eq!(health["calls_admitted"], 20);
    assert_eq!(health["calls_completed"], 20);
    assert_eq!(health["calls_rejected"], 0);
}

#[actix_web::test]
async fn calls_beyond_the_limit_are_redirected_then_hear_busy() {
    let app = spawn_app_with(|c| {
        c.limit_concurrency = 5;
        c.max_redirects = 2;
        c.busy_message = "Sorry, all lines are busy.".into();
    })
    .await;
    // All 8 at once: the 3 that do not fit bounce MAX_REDIRECTS times (milliseconds each)
    // while the first 5 hold their slots for 3 s.
    let (s, code) = callsim(
        &app.base,
        &["--calls", "8", "--duration", "3s", "--ramp", "0s"],
    )
    .await;
    assert_eq!(code, 0, "busy is an answer, not a failure: {s:#}");
    assert_eq!(s["connected"], 5, "{s:#}");
    assert_eq!(s["busy"], 3, "{s:#}");
    assert_eq!(s["failed"], 0, "{s:#}");
    assert_eq!(s["redirected"], 3, "{s:#}");
    // Frames go unanswered only on streams the server refused, never on a working one.
    assert_eq!(s["frames"]["lost"], s["frames"]["lost_at_close"], "{s:#}");
    // Each busy call made MAX_REDIRECTS + 1 = 3 webhook tries, then heard the message.
    assert_eq!(s["busy_after_tries"], serde_json::json!({"3": 3}), "{s:#}");
    for call in s["call_records"].as_array().unwrap() {
        if call["outcome"] == "busy" {
            assert_eq!(call["said"], "Sorry, all lines are busy.", "{call}");
            assert_eq!(call["redirects"], 2, "{call}");
        }
    }

    // callsim's counts are the server's: 5 admitted and completed; every stream the server
    // refused at the upgrade (webhooks raced the slots) is a 1013 callsim saw.
    let health = app.wait_for_active(0).await;
    assert_eq!(health["calls_admitted"], s["connected"]);
    assert_eq!(health["calls_completed"], s["connected"]);
    let refused = s["stream_ends"]["1013 at capacity"].as_u64().unwrap_or(0);
    assert_eq!(health["calls_rejected"], refused, "{s:#}");
}

#[actix_web::test]
async fn signed_calls_pass_and_a_wrong_token_fails_with_the_reason() {
    let app = spawn_app_with(|c| c.twilio_auth_token = Some("sekret".into())).await;
    let (s, code) = callsim(
        &app.base,
        &[
            "--calls",
            "3",
            "--duration",
            "500ms",
            "--ramp",
            "0s",
            "--auth-token",
            "sekret",
        ],
    )
    .await;
    assert_eq!((code, &s["connected"]), (0, &Value::from(3)), "{s:#}");

    let (s, code) = callsim(
        &app.base,
        &[
            "--calls",
            "2",
            "--duration",
            "500ms",
            "--auth-token",
            "wrong",
        ],
    )
    .await;
    assert_eq!(code, 1, "a failed call makes callsim exit 1: {s:#}");
    assert_eq!(
        s["failed_by_reason"],
        serde_json::json!({"webhook HTTP 403": 2}),
        "{s:#}"
    );
    assert_eq!(app.health().await["calls_admitted"], 3);
}

#[actix_web::test]
async fn an_unreachable_target_is_a_failure_not_a_hang() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (s, code) = callsim(
        &format!("http://127.0.0.1:{port}"),
        &["--calls", "2", "--duration", "1s", "--ramp", "0s"],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        s["failed_by_reason"],
        serde_json::json!({"webhook request failed: connect error": 2}),
        "{s:#}"
    );
}

/// A Media Streams server of the test's own, which plays audio and marks to callsim and records
/// when callsim answers each mark.
mod playback_server {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use actix_web::{web, HttpRequest, HttpResponse};
    use callvisor::twilio::messages::{Mark, OutboundMedia, ServerFrame, StreamEvent};
    use callvisor::twilio::twiml::{StreamVerb, TwimlResponse};

    /// (mark name, when the server sent it, when callsim answered it)
    pub type Answers = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

    /// 60 s of audio (20 ms frames) that `clear` must drop.
    pub const CLEARED_FRAMES: usize = 3_000;

    /// Audio then a mark: 25 frames (500 ms) then `played`; 60 s of audio, `cleared`, `clear`.
    pub fn start() -> (String, Answers) {
        let answers: Answers = Arc::default();
        let state = web::Data::new(answers.clone());
        let addr = crate::helpers::serve_peer(move |cfg| {
            cfg.app_data(state.clone())
                .route("/incoming-call", web::post().to(webhook))
                .route("/media-stream", web::get().to(stream));
        });
        let base = format!("http://{addr}");
        (base, answers)
    }

    async fn webhook(req: HttpRequest) -> HttpResponse {
        let url = format!("ws://{}/media-stream", req.connection_info().host());
        let twiml = TwimlResponse::new().connect_stream(&StreamVerb {
            url: &url,
            status_callback: None,
            parameters: &[],
        });
        HttpResponse::Ok()
            .content_type("text/xml")
            .body(twiml.build())
    }

    async fn stream(
        req: HttpRequest,
        body: web::Payload,
        answers: web::Data<Answers>,
    ) -> actix_web::Result<HttpResponse> {
        let (response, session, mut inbound) = actix_ws::handle(&req, body)?;
        let answers = answers.get_ref().clone();
        // When each mark was sent; the reader records answers while the writer plays.
        let sent_at: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
        actix_web::rt::spawn(async move {
            while let Some(Ok(msg)) = inbound.recv().await {
                let actix_ws::Message::Text(text) = msg else {
                    continue;
                };
                match StreamEvent::parse(&text) {
                    Ok(StreamEvent::Start(start)) => {
                        let writer = play(
                            session.clone(),
                            start.stream_sid.clone(),
                            sent_at.clone(),
                            answers.clone(),
                        );
                        actix_web::rt::spawn(writer);
                    }
                    Ok(StreamEvent::Mark(mark)) => {
                        let sent = sent_at.lock().unwrap()[&mark.name];
                        answers
                            .lock()
                            .unwrap()
                            .push((mark.name, sent, Instant::now()));
                    }
                    Ok(StreamEvent::Stop) => break,
                    _ => {}
                }
            }
            let _ = session.close(None).await;
        });
        Ok(response)
    }

    async fn play(
        mut session: actix_ws::Session,
        sid: String,
        sent_at: Arc<Mutex<std::collections::HashMap<String, Instant>>>,
        answers: Answers,
    ) {
        let media = ServerFrame::Media {
            stream_sid: sid.as_str().into(),
            media: OutboundMedia {
                payload: "/".repeat(216).into(), // 160 bytes of audio
            },
        }
        .to_json();
        let mark = |name: &str| {
            ServerFrame::Mark {
                stream_sid: sid.as_str().into(),
                mark: Mark { name: name.into() },
            }
            .to_json()
        };
        for _ in 0..25 {
            session.text(media.clone()).await.unwrap();
        }
        sent_at
            .lock()
            .unwrap()
            .insert("played".into(), Instant::now());
        session.text(mark("played")).await.unwrap();
        // Once `played` is back (an event, polled), queue a minute of audio, a mark, and clear
        // it all. Played out, that mark could only come back long after the call has ended.
        while !answers
            .lock()
            .unwrap()
            .iter()
            .any(|(n, _, _)| n == "played")
        {
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..CLEARED_FRAMES {
            session.text(media.clone()).await.unwrap();
        }
        sent_at
            .lock()
            .unwrap()
            .insert("cleared".into(), Instant::now());
        session.text(mark("cleared")).await.unwrap();
        let clear = ServerFrame::Clear {
            stream_sid: sid.as_str().into(),
        };
        session.text(clear.to_json()).await.unwrap();
    }
}

#[actix_web::test]
async fn marks_come_back_when_their_audio_has_played_or_was_cleared() {
    let (base, answers) = playback_server::start();
    let (s, code) = callsim(&base, &["--calls", "1", "--duration", "5s"]).await;
    assert_eq!((code, &s["connected"]), (0, &Value::from(1)), "{s:#}");
    let answers = answers.lock().unwrap().clone();
    let names: Vec<&str> = answers.iter().map(|(n, _, _)| n.as_str()).collect();
    // `cleared` is answered at all, within a 5 s call, although a minute of audio was queued
    // before it: only `clear` dropping that audio can return it. No clock bound, so a loaded
    // machine cannot fail this.
    assert_eq!(
        names,
        ["played", "cleared"],
        "each mark answered once, in order"
    );
    // 25 frames are 500 ms of audio: the mark cannot come back before they have played.
    let (_, sent, answered) = &answers[0];
    let waited = *answered - *sent;
    assert!(
        waited >= std::time::Duration::from_millis(450),
        "`played` answered after {waited:?}, before its 500 ms of audio played"
    );
}

#[actix_web::test]
async fn a_chaos_mix_gets_every_promised_close_and_leaves_no_slot_behind() {
    // Never-start callers wait out the start timeout; everyone else sends `start` at once.
    let app = spawn_app_with(|c| {
        c.limit_concurrency = 200;
        c.start_timeout = std::time::Duration::from_secs(5);
    })
    .await;
    let (s, code) = callsim(
        &app.base,
        &[
            "--chaos",
            "--seed",
            "1",
            "--calls",
            "60",
            "--duration",
            "2s",
            "--ramp",
            "1s",
        ],
    )
    .await;
    assert_eq!((code, &s["failed"]), (0, &Value::from(0)), "{s:#}");
    assert_eq!(s["seed"], 1);
    // Seed 1 draws every kind in 60 calls; each one went as the protocol promises, and the
    // callers that stream audio got every frame back.
    let chaos = s["chaos"].as_object().unwrap();
    for kind in [
        "normal",
        "slow_reader",
        "duplicate",
        "reset",
        "garbage",
        "binary",
        "oversized",
        "never_start",
    ] {
        let t = &chaos[kind];
        assert!(t["calls"].as_u64().unwrap() > 0, "no {kind} call: {s:#}");
        assert_eq!(t["as_expected"], t["calls"], "{kind}: {t}");
        assert_eq!(t["frames_lost"], 0, "{kind}: {t}");
    }
    // The server's books balance: every stream it admitted ended (resets and garbage included).
    let health = app.wait_for_active(0).await;
    assert_eq!(
        health["calls_admitted"], health["calls_completed"],
        "{health}"
    );
    assert_eq!(health["calls_rejected"], 0, "{health}");
    let m = scrape(&app).await;
    let ended = |reason: &str| {
        m.get(&format!("callvisor_calls_ended_total{{reason={reason}}}"))
            .copied()
            .unwrap_or(0.0) as u64
    };
    let count = |kind: &str| chaos[kind]["calls"].as_u64().unwrap();
    assert_eq!(ended("superseded"), count("duplicate"));
    assert_eq!(ended("start_timeout"), count("never_start"));
    assert_eq!(
        ended("protocol_error"),
        count("garbage") + count("binary") + count("oversized")
    );
    assert_eq!(ended("client_gone"), count("reset"));
}

/// A free port for a peer callsim serves (bound, then freed: the server must know the address
/// before callsim starts).
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// 1.2 s of a 220 Hz tone as 16-bit PCM WAV: an utterance for `--say` (converted to mu-law).
fn utterance_wav(path: &std::path::Path) {
    let samples: Vec<u8> = (0..9600)
        .flat_map(|i| {
            let s = (2.0 * std::f64::consts::PI * 220.0 * f64::from(i) / 8000.0).sin() * 8000.0;
            (s as i16).to_le_bytes()
        })
        .collect();
    let mut wav = b"RIFF".to_vec();
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt \x10\0\0\0\x01\0\x01\0");
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(b"\x02\0\x10\0data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    std::fs::write(path, wav).unwrap();
}

#[actix_web::test]
async fn a_voice_caller_talks_to_the_agent_hears_its_answer_and_records_it() {
    let (model, rest) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!("callsim-voice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("hello.wav");
    utterance_wav(&wav);
    let model_url = format!("ws://{model}/v1/realtime");
    let rest_url = format!("http://{rest}");
    let key_sid = "SK0123456789abcdef0123456789abcdef";
    let app = spawn_app_with(move |c| {
        c.handler = std::sync::Arc::new(agent_config(&model_url));
        c.twilio_api_base_url = rest_url;
        c.twilio_api_key = Some((key_sid.into(), "secret".to_string().into()));
    })
    .await;
    let record = dir.join("heard");
    let (s, code) = callsim(
        &app.base,
        &[
            "--calls",
            "3",
            "--duration",
            "4s",
            "--ramp",
            "0s",
            "--say",
            wav.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
            "--realtime-model",
            &model,
            "--twilio-api",
            &rest,
            "--twilio-api-key-sid",
            key_sid,
            "--twilio-api-key-secret",
            "secret",
        ],
    )
    .await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["connected"], 3, "{s:#}");
    // Each caller said its line once and the agent answered, once the model's VAD had heard
    // 500 ms of silence.
    for call in s["call_records"].as_array().unwrap() {
        let replies = call["reply_ms"].as_array().expect("a reply was timed");
        assert_eq!(replies.len(), 1, "{call}");
        // Its time is the benchmark's to judge (a busy machine may send the silence that ends
        // the utterance in a burst): here, only that it was timed.
        assert!(replies[0].as_f64().unwrap() > 0.0, "{call}");
        // What the caller heard: silence while it talked (1.2 s) and the VAD waited (500 ms of
        // audio, the last frame sent 480 ms after the first silent one), then the tone.
        let heard =
            std::fs::read(record.join(format!("{}.wav", call["call_sid"].as_str().unwrap())))
                .unwrap();
        assert_eq!(&heard[..4], b"RIFF");
        let audio = &heard[58..];
        assert!(audio.len() >= 8 * 3000, "{} bytes", audio.len());
        let first_sound = audio
            .iter()
            .position(|&b| b != 0xff)
            .expect("the agent was heard");
        assert!(
            first_sound >= 8 * 1600,
            "the answer came after the utterance and the VAD: {first_sound}"
        );
    }
    let model_to_caller = &s["model_to_caller_ms"];
    assert!(model_to_caller["count"].as_u64().unwrap() >= 3, "{s:#}");
    app.wait_for_active(0).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[actix_web::test]
async fn a_voice_caller_hears_the_live_agent_between_its_silence_and_is_hung_up_after_the_goodbye()
{
    use callvisor::call::handlers::openai::agents::{Agent, Agents, Engine};
    let (model, rest) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!("callsim-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("hello.wav");
    utterance_wav(&wav);
    let live_url = format!("ws://{model}/v1/live/sessions");
    let rest_url = format!("http://{rest}");
    let key_sid = "SK0123456789abcdef0123456789abcdef";
    let app = spawn_app_with(move |c| {
        let mut agent = Agent::basic("default", "gpt-live-1", "marin", "You help {{From}}.");
        agent.engine = Engine::Live;
        agent.backend_model = Some("gpt-5.5".into());
        let mut config = agent_config("ws://127.0.0.1:9/v1/realtime");
        config.agents = std::sync::Arc::new(Agents::single(agent));
        config.live_url = live_url;
        c.handler = std::sync::Arc::new(config);
        c.twilio_api_base_url = rest_url;
        c.twilio_api_key = Some((key_sid.into(), "secret".to_string().into()));
    })
    .await;
    let record = dir.join("heard");
    // Two utterances (0 s and 4 s): the second reply is the goodbye, then end_call; the caller
    // would have stayed 12 s.
    let (s, code) = callsim(
        &app.base,
        &[
            "--calls",
            "3",
            "--duration",
            "12s",
            "--ramp",
            "0s",
            "--say",
            wav.to_str().unwrap(),
            "--say-every",
            "4s",
            "--record",
            record.to_str().unwrap(),
            "--live-model",
            &model,
            "--live-goodbye-after",
            "2",
            "--twilio-api",
            &rest,
            "--twilio-api-key-sid",
            key_sid,
            "--twilio-api-key-secret",
            "secret",
        ],
    )
    .await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["hung_up_by_app"], 3, "{s:#}");
    assert_eq!(s["live_model_errors"]["count"], 0, "{s:#}");
    for call in s["call_records"].as_array().unwrap() {
        // Each utterance answered (the silence the model streams in between is not a reply);
        // the replies' times are the benchmark's to judge, as for the Realtime stand-in.
        let replies = call["reply_ms"].as_array().expect("replies were timed");
        assert_eq!(replies.len(), 2, "{call}");
        let heard =
            std::fs::read(record.join(format!("{}.wav", call["call_sid"].as_str().unwrap())))
                .unwrap();
        let audio = &heard[58..];
        let first_sound = audio
            .iter()
            .position(|&b| b != 0xff)
            .expect("the agent was heard");
        assert!(first_sound >= 8 * 1600, "after the VAD: {first_sound}");
        // Both replies heard: the goodbye follows the second utterance (from 4 s).
        assert!(audio.len() >= 8 * 6000, "{} bytes", audio.len());
    }
    // Every reply delta was timed from the model to the caller (2 replies of 20 per caller).
    assert!(
        s["model_to_caller_ms"]["count"].as_u64().unwrap() >= 3 * 2 * 20,
        "{s:#}"
    );
    app.wait_for_active(0).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[actix_web::test]
async fn the_rest_api_stand_in_wants_the_servers_credentials() {
    const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
    let app = spawn_app().await;
    let rest = free_addr();
    let base = app.base.clone();
    let api = rest.clone();
    let sim = actix_web::rt::spawn(async move {
        let args = [
            "--calls",
            "1",
            "--duration",
            "2s",
            "--ramp",
            "0s",
            "--twilio-api",
            &api,
            "--twilio-api-key-sid",
            KEY_SID,
            "--twilio-api-key-secret",
            "key-secret",
        ];
        callsim(&base, &args).await
    });
    let client = awc::Client::default();
    let update = |secret: &'static str| {
        client
            .post(format!(
                "http://{rest}/2010-04-01/Accounts/ACx/Calls/CAnone.json"
            ))
            .basic_auth(KEY_SID, secret)
            .send_form(&[("Status", "completed")])
    };
    // Wait for the stand-in to listen, then ask with a wrong secret and with the right one.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut wrong = loop {
        match update("wrong").await {
            Ok(resp) => break resp,
            Err(e) if std::time::Instant::now() > deadline => panic!("no stand-in: {e}"),
            Err(_) => actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(
        (wrong.status().as_u16(), &body["code"]),
        (401, &20003.into())
    );
    let mut right = update("key-secret").await.unwrap();
    let body: Value = right.json().await.unwrap();
    assert_eq!(
        (right.status().as_u16(), &body["code"]),
        (404, &20404.into()),
        "authenticated: a call callsim never placed is not found"
    );
    let (s, code) = sim.await.unwrap();
    assert_eq!((code, &s["connected"]), (0, &1.into()), "{s:#}");
}

#[test]
fn the_rest_api_stand_in_does_not_start_without_credentials() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callsim"))
        .args([
            "--target",
            "http://127.0.0.1:9",
            "--twilio-api",
            "127.0.0.1:0",
        ])
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("TWILIO_API_KEY_SID")
        .env_remove("TWILIO_API_KEY_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--twilio-api: which credentials does the server use?"),
        "{stderr}"
    );
    let half = std::process::Command::new(env!("CARGO_BIN_EXE_callsim"))
        .args([
            "--target",
            "http://127.0.0.1:9",
            "--twilio-api",
            "127.0.0.1:0",
        ])
        .env_remove("TWILIO_AUTH_TOKEN")
        .env("TWILIO_API_KEY_SID", "SK0")
        .env_remove("TWILIO_API_KEY_SECRET")
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&half.stderr).contains("or neither"));
}

/// `--callee`: callsim places calls through the real binary's `POST /calls` and answers them as
/// Twilio and the callee would, people and machines: every call accounted for.
#[actix_web::test]
async fn as_the_callee_every_outbound_call_is_accounted_for() {
    const TOKEN: &str = "callee-auth-token";
    const API_TOKEN: &str = "callee-api-token-0123456789";
    let rest = free_addr();
    let api_base = format!("http://{rest}");
    let bin = spawn_binary(&[
        ("API_TOKEN", API_TOKEN),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_API_BASE_URL", &api_base),
    ])
    .await;
    const MESSAGE: &str = "This is callsim. Please call back.";
    let (s, code) = callsim(
        &bin.app.base,
        &[
            "--callee",
            "--calls",
            "20",
            "--ramp",
            "2s",
            "--duration",
            "2s",
            "--twilio-api",
            &rest,
            "--auth-token",
            TOKEN,
            "--api-token",
            API_TOKEN,
            "--from",
            "+15550002222",
            "--to",
            "+14155550123",
            "--humans",
            "0.5",
            "--voicemail-message",
            MESSAGE,
        ],
    )
    .await;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(
        s["outbound"],
        serde_json::json!({"placed": 20, "created_at_twilio": 20, "humans": 10,
            "humans_connected": 10, "machines": 10, "messages_left": 10,
            "machines_hung_up": 0, "unaccounted": 0}),
        "{s:#}"
    );
    assert_eq!(
        (s["connected"].as_u64(), s["hung_up_by_app"].as_u64()),
        (Some(10), Some(10))
    );
    for call in s["call_records"].as_array().unwrap() {
        if call["callee"] == "machine" {
            assert_eq!(call["said"], MESSAGE, "{call}");
        }
    }
    let m = scrape(&bin.app).await;
    assert_eq!(
        metric(&m, "callvisor_outbound_calls_total{outcome=created}"),
        20.0
    );
    assert_eq!(
        metric(
            &m,
            "callvisor_outbound_answered_by_total{answered_by=machine_end_beep}"
        ),
        10.0
    );
    assert_eq!(
        metric(
            &m,
            "callvisor_outbound_answered_by_total{answered_by=human}"
        ),
        10.0
    );
    assert_eq!(
        metric(&m, "callvisor_outbound_call_status_total{status=completed}"),
        20.0
    );
}
