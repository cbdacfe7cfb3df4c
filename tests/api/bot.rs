//! A Twilio Media Streams bot of the test's own, for `HANDLER=bridge`: it accepts the stream the
//! way a bot written for Twilio does, records every frame it gets and how its socket closed, and
//! sends what the test tells it to. Also the two ways a bot can be out of reach.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::helpers::{serve_peer, PATIENCE};

#[derive(Default)]
struct State {
    received: Vec<Value>,
    /// How the call's side closed the socket (None: not yet; 1006: without a close frame).
    closed: Option<(u16, String)>,
    session: Option<actix_ws::Session>,
    /// Set by `drop_connection`: the socket goes away with no close frame.
    drop_now: Option<tokio::sync::oneshot::Sender<()>>,
    /// Set by `stop_reading`: the bot's socket is read no more.
    paused: bool,
}

#[derive(Clone)]
pub struct Bot {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Bot {
    pub fn start() -> Bot {
        let state: Arc<Mutex<State>> = Arc::default();
        let data = web::Data::new(state.clone());
        let addr = serve_peer(move |cfg| {
            cfg.app_data(data.clone())
                .route("/bot", web::get().to(accept));
        });
        let url = format!("ws://{addr}/bot");
        Bot { url, state }
    }

    /// Waits until the bot has received `n` frames; returns them all.
    pub async fn wait_received(&self, n: usize) -> Vec<Value> {
        self.wait(|s| s.received.len() >= n, &format!("{n} frames"))
            .await;
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until the call's side closed the bot's socket; its code and reason.
    pub async fn wait_closed(&self) -> (u16, String) {
        self.wait(|s| s.closed.is_some(), "the socket to close")
            .await;
        self.state.lock().unwrap().closed.clone().unwrap()
    }

    pub fn received(&self) -> Vec<Value> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn events(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|v| v["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    async fn wait(&self, done: impl Fn(&State) -> bool, what: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !done(&self.state.lock().unwrap()) {
            if std::time::Instant::now() > deadline {
                panic!(
                    "the bot waited in vain for {what}; it got {:?}",
                    self.events()
                );
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a text frame to the call, as the bot.
    pub async fn send(&self, json: Value) {
        self.wait(|s| s.session.is_some(), "a connection").await;
        let mut session = self.state.lock().unwrap().session.clone().unwrap();
        session.text(json.to_string()).await.expect("bot sends");
    }

    /// Closes the bot's socket with a close frame.
    pub async fn close(&self, code: u16) {
        let session = self.state.lock().unwrap().session.take().unwrap();
        let _ = session
            .close(Some(actix_ws::CloseReason {
                code: code.into(),
                description: None,
            }))
            .await;
    }

    /// The bot stops reading its socket (a hung bot): what is sent to it piles up.
    pub fn stop_reading(&self) {
        self.state.lock().unwrap().paused = true;
    }

    /// The bot process dies: its socket goes away with no close frame.
    pub fn drop_connection(&self) {
        let mut state = self.state.lock().unwrap();
        state.session = None;
        if let Some(drop_now) = state.drop_now.take() {
            let _ = drop_now.send(());
        }
    }
}

async fn accept(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Arc<Mutex<State>>>,
) -> actix_web::Result<HttpResponse> {
    let (response, session, mut inbound) = actix_ws::handle(&req, body)?;
    let (drop_tx, mut drop_rx) = tokio::sync::oneshot::channel();
    {
        let mut s = state.lock().unwrap();
        s.session = Some(session);
        s.drop_now = Some(drop_tx);
    }
    let state = state.get_ref().clone();
    actix_web::rt::spawn(async move {
        loop {
            let paused = state.lock().unwrap().paused;
            tokio::select! {
                _ = &mut drop_rx => return, // both halves dropped, no close frame
                _ = actix_web::rt::time::sleep(Duration::from_millis(20)), if paused => {}
                msg = inbound.recv(), if !paused => match msg {
                    Some(Ok(actix_ws::Message::Text(text))) => {
                        let value = serde_json::from_str(&text).expect("the bridge sends JSON");
                        state.lock().unwrap().received.push(value);
                    }
                    Some(Ok(actix_ws::Message::Close(reason))) => {
                        let mut s = state.lock().unwrap();
                        s.closed = Some(reason.map_or((1005, String::new()), |r| {
                            (u16::from(r.code), r.description.unwrap_or_default())
                        }));
                        if let Some(session) = s.session.take() {
                            actix_web::rt::spawn(async move { let _ = session.close(None).await; });
                        }
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        state.lock().unwrap().closed.get_or_insert((1006, format!("error: {e}")));
                        return;
                    }
                    None => {
                        state.lock().unwrap().closed.get_or_insert((1006, "ended".into()));
                        return;
                    }
                }
            }
        }
    });
    Ok(response)
}

/// A `ws://` URL nothing listens on: connections are refused.
pub fn refusing_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/bot", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A `ws://` URL whose server accepts the TCP connection and never answers the handshake.
pub fn silent_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/bot", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    url
}
