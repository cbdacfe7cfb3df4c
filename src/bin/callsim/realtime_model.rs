//! `--realtime-model ADDR`: a stand-in for OpenAI's Realtime API (GA), so that a voice agent
//! (`HANDLER=openai`, `OPENAI_REALTIME_URL=ws://ADDR/v1/realtime`) can be driven at scale without
//! OpenAI, and callvisor's own share of the latency measured.
//!
//! It is as strict as the real service where callvisor could go wrong: the handshake needs
//! `Authorization: Bearer …` (401) and `?model=` (400); the beta header `OpenAI-Beta` is closed
//! 4000; `session.update` must be the GA shape with `audio/pcmu` both ways, and a bad event, bad
//! base64, an unknown event type or a truncate past the audio sent get an `error` event.
//!
//! It talks like the real one, in its order: `session.created`; a simple energy VAD over the
//! appended audio (`speech_started`, then after 500 ms of silence — server_vad's default —
//! `speech_stopped`, `committed`) answers each utterance with a response: `response.created`,
//! `response.output_item.added`, 2 s of a tone in 100 ms `response.output_audio.delta`s sent at
//! twice real time (as the model streams faster than it plays), `response.output_audio.done`,
//! `response.output_item.done`, `response.done`. `response.create` (greeting, key press, tool
//! output) answers too; speech over a response cancels it (`response.done`, `cancelled`).
//!
//! Each delta carries an id in the lowest bit of its first 32 samples (inaudible): when the
//! caller hears that frame, callsim knows when the model sent it, on one clock: the latency from
//! the model's delta to the caller, through the server under test.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::audio;

/// One answer: this many deltas of `DELTA_MS`.
const DELTAS_PER_REPLY: usize = 20;
const DELTA_MS: usize = 100;
/// Deltas go out at twice real time.
const DELTA_EVERY: Duration = Duration::from_millis(DELTA_MS as u64 / 2);
/// server_vad's default `silence_duration_ms`.
const SILENCE_MS: u64 = 500;
const STAMP_BITS: usize = 32;
const RING: usize = 1 << 16;

/// When each stamped delta was sent, for the caller to look up.
pub struct Stamps {
    next: AtomicU32,
    sent: Mutex<Vec<(u32, Option<Instant>)>>,
}

impl Stamps {
    fn new() -> Self {
        Stamps {
            next: AtomicU32::new(1),
            sent: Mutex::new(vec![(0, None); RING]),
        }
    }

    /// Stamps `delta` with a fresh id and notes the time.
    fn stamp(&self, delta: &mut [u8]) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        for (i, byte) in delta.iter_mut().take(STAMP_BITS).enumerate() {
            *byte = (*byte & !1) | ((id >> i) & 1) as u8;
        }
        self.sent.lock().unwrap()[id as usize % RING] = (id, Some(Instant::now()));
    }

    /// When the delta whose audio starts with `payload_base64` was sent (none for other audio).
    pub fn sent_at(&self, payload_base64: &str) -> Option<Instant> {
        // 44 base64 characters are the first 33 bytes.
        let head = STANDARD.decode(payload_base64.get(..44)?).ok()?;
        let id = head[..STAMP_BITS]
            .iter()
            .enumerate()
            .fold(0u32, |id, (i, b)| id | (u32::from(b & 1) << i));
        match self.sent.lock().unwrap()[id as usize % RING] {
            (stamped, at) if stamped == id && id != 0 => at,
            _ => None,
        }
    }
}

/// Starts the stand-in on `addr`; it answers at `/v1/realtime`.
pub fn start(addr: SocketAddr) -> std::io::Result<Arc<Stamps>> {
    let stamps = Arc::new(Stamps::new());
    let data = web::Data::new(stamps.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/realtime", web::get().to(handshake))
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?
    .run();
    actix_web::rt::spawn(server);
    Ok(stamps)
}

fn http_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({"error": {"type": "invalid_request_error", "code": code, "message": message}}))
}

async fn handshake(
    req: HttpRequest,
    body: web::Payload,
    stamps: web::Data<Arc<Stamps>>,
) -> actix_web::Result<HttpResponse> {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| !key.trim().is_empty());
    if !bearer {
        return Ok(http_error(401, "invalid_api_key", "missing bearer key"));
    }
    let Some(model) = req
        .query_string()
        .split('&')
        .find_map(|kv| kv.strip_prefix("model="))
        .map(str::to_string)
    else {
        return Ok(http_error(400, "missing_model", "?model= is required"));
    };
    let beta = req.headers().contains_key("openai-beta");
    let (response, session, inbound) = actix_ws::handle(&req, body)?;
    let stamps = stamps.get_ref().clone();
    actix_web::rt::spawn(async move {
        if beta {
            let _ = session
                .close(Some(actix_ws::CloseReason {
                    code: 4000.into(),
                    description: Some("beta_api_shape_disabled".into()),
                }))
                .await;
            return;
        }
        run_session(model, session, inbound, stamps).await;
    });
    Ok(response)
}

/// One model session's conversation state.
#[derive(Default)]
struct Conversation {
    configured: bool,
    speaking: bool,
    silent_ms: u64,
    /// Milliseconds of caller audio so far (`audio_start_ms`).
    audio_ms: u64,
    /// Bumped to cancel the response being streamed.
    generation: u64,
    responding: bool,
    /// Milliseconds of audio sent per assistant item, for `truncate`'s check.
    items: HashMap<String, u64>,
    next_id: u64,
}

type Shared = Rc<RefCell<Conversation>>;

async fn run_session(
    model: String,
    mut session: actix_ws::Session,
    mut inbound: actix_ws::MessageStream,
    stamps: Arc<Stamps>,
) {
    let conv: Shared = Rc::default();
    let created = json!({"type": "session.created",
        "session": {"type": "realtime", "object": "realtime.session", "model": model}});
    if session.text(created.to_string()).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = futures_util::StreamExt::next(&mut inbound).await {
        let text = match message {
            actix_ws::Message::Text(text) => text,
            actix_ws::Message::Close(_) => break,
            actix_ws::Message::Ping(p) => {
                let _ = session.pong(&p).await;
                continue;
            }
            _ => continue,
        };
        let events = match serde_json::from_str::<Value>(&text) {
            Ok(event) => on_event(&conv, &event, &session, &stamps),
            Err(_) => vec![error("invalid_json", "the event is not JSON")],
        };
        for event in events {
            if session.text(event.to_string()).await.is_err() {
                return;
            }
        }
    }
    conv.borrow_mut().generation += 1; // stops a response still streaming
    let _ = session.close(None).await;
}

fn error(code: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message}})
}

/// What the model answers to one client event (a response streams on its own task).
fn on_event(
    conv: &Shared,
    event: &Value,
    session: &actix_ws::Session,
    stamps: &Arc<Stamps>,
) -> Vec<Value> {
    let mut out = Vec::new();
    match event["type"].as_str().unwrap_or("") {
        "session.update" => {
            let s = &event["session"];
            let ga = s["type"] == "realtime"
                && s["audio"]["input"]["format"]["type"] == "audio/pcmu"
                && s["audio"]["output"]["format"]["type"] == "audio/pcmu";
            if !ga {
                out.push(error(
                    "invalid_session",
                    "session.update must be the GA shape with audio/pcmu both ways",
                ));
            } else {
                conv.borrow_mut().configured = true;
                out.push(json!({"type": "session.updated", "session": s}));
            }
        }
        "input_audio_buffer.append" => {
            let Some(audio) = event["audio"]
                .as_str()
                .and_then(|a| STANDARD.decode(a).ok())
            else {
                out.push(error("invalid_base64", "audio is not base64"));
                return out;
            };
            if !conv.borrow().configured {
                out.push(error(
                    "invalid_format",
                    "audio before session.update: the format would be pcm16",
                ));
                return out;
            }
            for chunk in audio.chunks(160) {
                let ms = chunk.len() as u64 / 8;
                let mut c = conv.borrow_mut();
                let start_ms = c.audio_ms;
                c.audio_ms += ms;
                if audio::is_speech(chunk) {
                    c.silent_ms = 0;
                    if !c.speaking {
                        c.speaking = true;
                        c.next_id += 1;
                        out.push(json!({"type": "input_audio_buffer.speech_started",
                            "audio_start_ms": start_ms, "item_id": format!("item_in{}", c.next_id)}));
                        if c.responding {
                            c.generation += 1;
                            c.responding = false;
                            out.push(json!({"type": "response.done",
                                "response": {"status": "cancelled", "status_details": {"reason": "turn_detected"}}}));
                        }
                    }
                } else if c.speaking {
                    c.silent_ms += ms;
                    if c.silent_ms >= SILENCE_MS {
                        c.speaking = false;
                        out.push(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": c.audio_ms}));
                        out.push(json!({"type": "input_audio_buffer.committed"}));
                        drop(c);
                        respond(conv, session, stamps);
                    }
                }
            }
        }
        "conversation.item.create" => match event["item"]["type"].as_str() {
            Some("message" | "function_call_output") => {
                out.push(json!({"type": "conversation.item.created", "item": event["item"]}));
            }
            _ => out.push(error("invalid_item", "unknown item type")),
        },
        "response.create" => respond(conv, session, stamps),
        "response.cancel" => {
            let mut c = conv.borrow_mut();
            c.generation += 1;
            c.responding = false;
        }
        "conversation.item.truncate" => {
            let c = conv.borrow();
            let item = event["item_id"].as_str().unwrap_or("");
            match (c.items.get(item), event["audio_end_ms"].as_u64()) {
                (None, _) => out.push(error("invalid_item_id", "no such assistant item")),
                (_, None) => out.push(error("missing_audio_end_ms", "audio_end_ms is required")),
                (Some(sent), Some(end)) if end > *sent => out.push(error(
                    "invalid_audio_end_ms",
                    "audio_end_ms is past the audio of the item",
                )),
                (Some(_), Some(end)) => out.push(
                    json!({"type": "conversation.item.truncated", "item_id": item, "content_index": 0, "audio_end_ms": end}),
                ),
            }
        }
        other => out.push(error(
            "unknown_event",
            &format!("unknown client event type `{other}`"),
        )),
    }
    out
}

/// Streams one answer on its own task; a newer response or speech cancels it.
fn respond(conv: &Shared, session: &actix_ws::Session, stamps: &Arc<Stamps>) {
    let (generation, response_id, item_id) = {
        let mut c = conv.borrow_mut();
        c.generation += 1;
        c.responding = true;
        c.next_id += 1;
        let item = format!("item_out{}", c.next_id);
        c.items.insert(item.clone(), 0);
        (c.generation, format!("resp_{}", c.next_id), item)
    };
    let (conv, mut session, stamps) = (conv.clone(), session.clone(), stamps.clone());
    actix_web::rt::spawn(async move {
        let live = |conv: &Shared| conv.borrow().generation == generation;
        let head = [
            json!({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}),
            json!({"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
                   "item": {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress"}}),
        ];
        for event in head {
            if !send(&mut session, event).await {
                return;
            }
        }
        let tone = audio::tone(350.0, DELTA_MS, 0.2);
        for _ in 0..DELTAS_PER_REPLY {
            if !live(&conv) {
                return;
            }
            let mut delta = tone.clone();
            stamps.stamp(&mut delta);
            if let Some(ms) = conv.borrow_mut().items.get_mut(&item_id) {
                *ms += DELTA_MS as u64;
            }
            let event = json!({"type": "response.output_audio.delta", "response_id": response_id,
                "item_id": item_id, "output_index": 0, "content_index": 0,
                "delta": STANDARD.encode(&delta)});
            if !send(&mut session, event).await {
                return;
            }
            tokio::time::sleep(DELTA_EVERY).await;
        }
        if !live(&conv) {
            return;
        }
        conv.borrow_mut().responding = false;
        let tail = [
            json!({"type": "response.output_audio.done", "response_id": response_id, "item_id": item_id}),
            json!({"type": "response.output_item.done", "response_id": response_id, "output_index": 0,
                   "item": {"id": item_id, "type": "message", "role": "assistant", "status": "completed"}}),
            json!({"type": "response.done", "response": {"id": response_id, "status": "completed"}}),
        ];
        for event in tail {
            if !send(&mut session, event).await {
                return;
            }
        }
    });
}

async fn send(session: &mut actix_ws::Session, event: Value) -> bool {
    session.text(event.to_string()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_from_the_base64_the_caller_gets() {
        let stamps = Stamps::new();
        let mut first = audio::tone(350.0, 100, 0.2);
        let mut second = first.clone();
        stamps.stamp(&mut first);
        stamps.stamp(&mut second);
        let at = stamps.sent_at(&STANDARD.encode(&second)).unwrap();
        assert!(stamps.sent_at(&STANDARD.encode(&first)).unwrap() <= at);
        // Audio that was never stamped (an echo of silence) has no send time.
        assert_eq!(stamps.sent_at(&STANDARD.encode([0xffu8; 160])), None);
        assert_eq!(stamps.sent_at("AAAA"), None);
        // The stamp only touches the lowest bit of 32 samples.
        let tone = audio::tone(350.0, 100, 0.2);
        assert!(first.iter().zip(&tone).all(|(a, b)| (a ^ b) <= 1));
        assert_eq!(first[32..], tone[32..]);
    }
}
