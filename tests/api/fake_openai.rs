//! A fake of OpenAI's Realtime API (GA), strict where the real one is: the handshake needs
//! `Authorization: Bearer <key>` (401 otherwise) and `?model=`; a client that sends the beta
//! header `OpenAI-Beta` is closed 4000 `beta_api_shape_disabled`; the first client event must be
//! a GA `session.update` (type `realtime`, `audio/pcmu` both ways), else an `error` event. It
//! answers `session.created`, records every client event, and sends what the test scripts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::helpers::{serve_peer, PATIENCE};

#[derive(Default)]
struct State {
    key: String,
    received: Vec<Value>,
    session: Option<actix_ws::Session>,
    closed: Option<u16>,
    /// Models seen in `?model=` of each handshake.
    models: Vec<String>,
    /// Answer every handshake with this HTTP status (429: rate limited).
    refuse: Option<u16>,
}

#[derive(Clone)]
pub struct FakeOpenAi {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeOpenAi {
    pub fn start(key: &str) -> FakeOpenAi {
        let state = Arc::new(Mutex::new(State {
            key: key.into(),
            ..State::default()
        }));
        let data = web::Data::new(state.clone());
        let addr = serve_peer(move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/realtime", web::get().to(realtime));
        });
        let url = format!("ws://{addr}/v1/realtime");
        FakeOpenAi { url, state }
    }

    /// From now on every handshake gets `status` (e.g. 429 with OpenAI's rate-limit body).
    pub fn refuse_with(&self, status: u16) {
        self.state.lock().unwrap().refuse = Some(status);
    }

    pub fn received(&self) -> Vec<Value> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn types(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    pub fn models(&self) -> Vec<String> {
        self.state.lock().unwrap().models.clone()
    }

    /// Waits until an event of `kind` has been received `n` times; returns the last one.
    pub async fn wait_for(&self, kind: &str, n: usize) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let got: Vec<Value> = self
                .received()
                .into_iter()
                .filter(|v| v["type"] == kind)
                .collect();
            if got.len() >= n {
                return got[n - 1].clone();
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the model never got {n} × {kind}; it got {:?}",
                    self.types()
                );
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_closed(&self) -> u16 {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(code) = self.state.lock().unwrap().closed {
                return code;
            }
            if std::time::Instant::now() > deadline {
                panic!("the model's socket was never closed");
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn send(&self, event: Value) {
        let mut session = self
            .state
            .lock()
            .unwrap()
            .session
            .clone()
            .expect("connected");
        session.text(event.to_string()).await.expect("model sends");
    }

    pub async fn close(&self, code: u16, reason: &str) {
        let session = self.state.lock().unwrap().session.take().unwrap();
        let _ = session
            .close(Some(actix_ws::CloseReason {
                code: code.into(),
                description: Some(reason.into()),
            }))
            .await;
    }
}

async fn realtime(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<Mutex<State>>>,
) -> actix_web::Result<HttpResponse> {
    let (key, refuse) = {
        let s = state.lock().unwrap();
        (s.key.clone(), s.refuse)
    };
    if let Some(status) = refuse {
        return Ok(
            HttpResponse::build(status.try_into().expect("an HTTP status"))
                .insert_header(("retry-after", "20"))
                .json(
                    json!({"error": {"type": "requests", "code": "rate_limit_exceeded",
                                   "message": "Rate limit reached for requests"}}),
                ),
        );
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(format!("Bearer {key}").as_str()) {
        return Ok(HttpResponse::Unauthorized()
            .json(json!({"error": {"type": "invalid_request_error", "code": "invalid_api_key"}})));
    }
    let model = req
        .query_string()
        .split('&')
        .find_map(|kv| kv.strip_prefix("model="))
        .map(str::to_string);
    let Some(model) = model else {
        return Ok(HttpResponse::BadRequest().body("missing model"));
    };
    let beta = req.headers().contains_key("openai-beta");
    let (response, mut session, mut inbound) = actix_ws::handle(&req, body)?;
    let state = state.get_ref().clone();
    state.lock().unwrap().models.push(model);
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
        let _ = session
            .text(json!({"type": "session.created", "session": {}}).to_string())
            .await;
        state.lock().unwrap().session = Some(session.clone());
        let mut first = true;
        while let Some(Ok(msg)) = inbound.recv().await {
            match msg {
                actix_ws::Message::Text(text) => {
                    let event: Value = serde_json::from_str(&text).expect("the agent sends JSON");
                    if first {
                        first = false;
                        let s = &event["session"];
                        let ga = event["type"] == "session.update"
                            && s["type"] == "realtime"
                            && s["audio"]["input"]["format"]["type"] == "audio/pcmu"
                            && s["audio"]["output"]["format"]["type"] == "audio/pcmu";
                        if !ga {
                            let _ = session
                                .text(json!({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_session", "message": "the first event must be a GA session.update"}}).to_string())
                                .await;
                        }
                    }
                    state.lock().unwrap().received.push(event);
                }
                actix_ws::Message::Close(reason) => {
                    state.lock().unwrap().closed = Some(reason.map_or(1005, |r| u16::from(r.code)));
                    let _ = session.close(None).await;
                    return;
                }
                _ => {}
            }
        }
        state.lock().unwrap().closed.get_or_insert(1006);
    });
    Ok(response)
}
