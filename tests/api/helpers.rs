//! One way to start the app and talk to it, shared by every test.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::rt::time::{sleep, timeout};
use awc::ws::{self, Codec, Frame};
use awc::BoxedSocket;
use callvisor::app::Application;
use callvisor::config::Config;
use callvisor::twilio::messages::{Dtmf, Mark, Media, MediaFormat, Start, Stop, TwilioFrame};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

/// How long a test waits for something that should happen at once before failing. Generous: a
/// liveness bound for a busy CI machine, not a performance target.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct TestApp {
    pub port: u16,
    pub base: String,
    pub client: awc::Client,
    /// In-process servers only: the replica's supervisor (to hand calls off as a drain does).
    pub supervisor: Option<actix::Addr<callvisor::call::supervisor::CallSupervisor>>,
}

/// Starts a test peer of the test's own (a bot, a fake Twilio or OpenAI API) in this test's
/// actix system, on 127.0.0.1 and a free port; `routes` declares its routes and data.
pub fn serve_peer(
    routes: impl Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        actix_web::HttpServer::new(move || actix_web::App::new().configure(routes.clone()))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
    actix_web::rt::spawn(server);
    addr
}

/// `HANDLER=openai`'s settings for a test, the model at `url`: one agent, `default`, whose
/// settings are also the per-agent fields'.
pub fn agent_config(url: &str) -> callvisor::call::handlers::openai::settings::AgentConfig {
    use callvisor::call::handlers::openai::agents::{Agent, Agents};
    // Not the default (gpt-realtime-2.1): a test that reads `?model=` proves the configured
    // model is what is sent.
    let (model, voice, instructions) = ("gpt-realtime", "alloy", "You help {{From}}.");
    callvisor::call::handlers::openai::settings::AgentConfig {
        api_key: "sk-test".to_string().into(),
        url: url.to_string(),
        agents: std::sync::Arc::new(Agents::single(Agent::basic(
            "default",
            model,
            voice,
            instructions,
        ))),
        webhook_secret: None,
        config_url: None,
        config_timeout: std::time::Duration::from_millis(
            callvisor::call::handlers::openai::settings::DEFAULT_AGENT_CONFIG_TIMEOUT_MS,
        ),
        // Production's: a test of a slow handshake sets its own.
        connect_timeout: std::time::Duration::from_secs(
            callvisor::call::handlers::openai::settings::DEFAULT_AGENT_CONNECT_TIMEOUT_SECS,
        ),
        live_url: callvisor::call::handlers::openai::settings::DEFAULT_OPENAI_LIVE_URL.into(),
        live_clear_ahead: std::time::Duration::from_millis(
            callvisor::call::handlers::openai::settings::DEFAULT_LIVE_CLEAR_AHEAD_MS,
        ),
        // Production's default: the caller's turns are transcribed.
        transcription: Some(
            callvisor::call::handlers::openai::settings::DEFAULT_AGENT_TRANSCRIPTION_MODEL.into(),
        ),
    }
}

/// Starts the server in this test's actix system, on 127.0.0.1 and a free port.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_handler(configure, None).await
}

/// The server with a call handler of the test's own (`None`: echo).
pub async fn spawn_app_with_handler(
    configure: impl FnOnce(&mut Config),
    handler: Option<callvisor::call::handler::HandlerFactory>,
) -> TestApp {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config::for_tests();
    configure(&mut config);
    let app = match handler {
        Some(handler) => Application::build_with_handler(config, handler),
        None => Application::build(config),
    }
    .expect("server binds");
    let port = app.port();
    let supervisor = Some(app.supervisor());
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        port,
        base: format!("http://127.0.0.1:{port}"),
        client: awc::Client::builder().timeout(PATIENCE).finish(),
        supervisor,
    }
}

impl TestApp {
    /// What a drain's deadline does: every live call is closed `1001 handoff` (Twilio redirects
    /// it to another replica). Returns how many were handed over. In-process servers only.
    pub async fn hand_off_all(&self) -> usize {
        self.supervisor
            .as_ref()
            .expect("an in-process server")
            .send(callvisor::call::supervisor::HandOffAll)
            .await
            .unwrap()
    }

    pub async fn health(&self) -> Value {
        let mut resp = self
            .client
            .get(format!("{}/", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Polls `/` until `active_calls` is `n`; panics with the last answer after [`PATIENCE`].
    pub async fn wait_for_active(&self, n: u64) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let health = self.health().await;
            if health["active_calls"] == n {
                return health;
            }
            if std::time::Instant::now() > deadline {
                panic!("active_calls never reached {n}: {health}");
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let body = resp.body().await.unwrap();
        (
            resp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// POSTs the voice webhook as Twilio does: form parameters, optional `?attempt=`.
    pub async fn webhook(&self, params: &[(&str, &str)], query: &str) -> (u16, String) {
        let mut resp = self
            .client
            .post(format!("{}/incoming-call{query}", self.base))
            .send_form(&params)
            .await
            .unwrap();
        let body = resp.body().await.unwrap();
        (
            resp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    pub async fn open_stream(&self) -> TestStream {
        self.open_stream_at(&format!("ws://127.0.0.1:{}/media-stream", self.port))
            .await
    }

    pub async fn open_stream_at(&self, url: &str) -> TestStream {
        self.upgrade(self.client.ws(url)).await
    }

    pub async fn open_stream_with_header(&self, url: &str, header: (&str, String)) -> TestStream {
        self.upgrade(self.client.ws(url).header(header.0, header.1))
            .await
    }

    async fn upgrade(&self, request: awc::ws::WebsocketsRequest) -> TestStream {
        let (resp, ws) = request
            .max_frame_size(1 << 20)
            .connect()
            .await
            .expect("upgrade succeeds");
        assert_eq!(resp.status(), 101);
        TestStream { ws, seq: 0 }
    }

    /// Opens a stream and sends `connected` and `start` for `call_sid`.
    pub async fn start_call(&self, call_sid: &str) -> TestStream {
        let mut s = self.open_stream().await;
        s.connected_and_start(call_sid, &stream_sid_for(call_sid), &[])
            .await;
        s
    }
}

pub fn stream_sid_for(call_sid: &str) -> String {
    format!("MZ{}", call_sid.trim_start_matches("CA"))
}

/// A Twilio-side stream: sends Twilio's frames, reads the server's.
pub struct TestStream {
    pub ws: actix_codec::Framed<BoxedSocket, Codec>,
    seq: u64,
}

impl TestStream {
    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.ws
            .send(ws::Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_frame(&mut self, frame: TwilioFrame<'_>) {
        self.send_text(frame.to_json()).await;
    }

    pub async fn connected_and_start(
        &mut self,
        call_sid: &str,
        stream_sid: &str,
        params: &[(String, String)],
    ) {
        self.send_frame(TwilioFrame::Connected {
            protocol: "Call",
            version: "1.0.0",
        })
        .await;
        let start = Start {
            account_sid: "ACtest".into(),
            stream_sid: stream_sid.into(),
            call_sid: call_sid.into(),
            tracks: vec!["inbound".into()],
            custom_parameters: params.iter().cloned().collect(),
            media_format: MediaFormat::default(),
        };
        let seq = self.next_seq();
        self.send_frame(TwilioFrame::Start {
            sequence_number: seq,
            stream_sid,
            start: &start,
        })
        .await;
    }

    pub async fn media(&mut self, stream_sid: &str, chunk: u64, payload: &str) {
        let seq = self.next_seq();
        let chunk = chunk.to_string();
        let ts = "0".to_string();
        self.send_frame(TwilioFrame::Media {
            sequence_number: seq,
            stream_sid,
            media: Media {
                track: Some("inbound".into()),
                chunk: Some(chunk.into()),
                timestamp: Some(ts.into()),
                payload: payload.into(),
            },
        })
        .await;
    }

    pub async fn dtmf(&mut self, stream_sid: &str, digit: &str) {
        let seq = self.next_seq();
        self.send_frame(TwilioFrame::Dtmf {
            sequence_number: seq,
            stream_sid,
            dtmf: Dtmf {
                track: Some("inbound_track".into()),
                digit: digit.into(),
            },
        })
        .await;
    }

    pub async fn mark(&mut self, stream_sid: &str, name: &str) {
        let seq = self.next_seq();
        self.send_frame(TwilioFrame::Mark {
            sequence_number: seq,
            stream_sid,
            mark: Mark { name: name.into() },
        })
        .await;
    }

    pub async fn stop(&mut self, stream_sid: &str, call_sid: &str) {
        let seq = self.next_seq();
        self.send_frame(TwilioFrame::Stop {
            sequence_number: seq,
            stream_sid,
            stop: Stop {
                account_sid: "ACtest".into(),
                call_sid: call_sid.into(),
            },
        })
        .await;
    }

    /// The next frame from the server, skipping pings.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match timeout(PATIENCE, self.ws.next()).await {
                Err(_) => panic!("no frame from the server within {PATIENCE:?}"),
                Ok(None) => return None,
                Ok(Some(Err(e))) => panic!("websocket error: {e}"),
                Ok(Some(Ok(Frame::Ping(_) | Frame::Pong(_)))) => continue,
                Ok(Some(Ok(frame))) => return Some(frame),
            }
        }
    }

    /// The next text frame as JSON; panics on anything else.
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Some(Frame::Text(bytes)) => serde_json::from_slice(&bytes).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until the server's close frame and returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Some(Frame::Close(reason)) => {
                    let reason = reason.expect("close frames carry a code");
                    return (
                        u16::from(reason.code),
                        reason.description.unwrap_or_default(),
                    );
                }
                Some(Frame::Text(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Sends one media frame and checks that exactly it comes back, with the stream's sid.
    pub async fn echo_round_trip(&mut self, stream_sid: &str, payload: &str) {
        self.media(stream_sid, 1, payload).await;
        let echo = self.next_json().await;
        assert_eq!(echo["event"], "media");
        assert_eq!(echo["streamSid"], stream_sid);
        assert_eq!(echo["media"]["payload"], payload);
    }
}

/// Scrapes /metrics and parses it with a Prometheus parser: `name{labels}` -> value.
pub async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let (status, body) = app.get("/metrics").await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

pub fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

/// Parses TwiML as XML and returns the document's verbs as a simple summary.
#[derive(Debug, Default)]
pub struct Twiml {
    pub stream_url: Option<String>,
    pub parameters: Vec<(String, String)>,
    pub redirect: Option<String>,
    pub say: Option<String>,
    pub hangup: bool,
    /// Verb names in document order (top level of `<Response>`).
    pub verbs: Vec<String>,
}

pub fn parse_twiml(xml: &str) -> Twiml {
    use callvisor::twilio::twiml::{parse, Verb};
    let verbs = parse(xml).unwrap_or_else(|e| panic!("bad TwiML {xml}: {e}"));
    let mut t = Twiml::default();
    for verb in verbs {
        match verb {
            Verb::ConnectStream(stream) => {
                t.verbs.push("Connect".into());
                t.stream_url = Some(stream.url);
                t.parameters = stream.parameters;
            }
            Verb::Redirect { url, method } => {
                t.verbs.push("Redirect".into());
                assert_eq!(method, "POST");
                t.redirect = Some(url);
            }
            Verb::Say(text) => {
                t.verbs.push("Say".into());
                t.say = Some(text);
            }
            Verb::Hangup => {
                t.verbs.push("Hangup".into());
                t.hangup = true;
            }
            other => panic!("unexpected verb {other:?}"),
        }
    }
    t
}

/// Twilio-like webhook parameters for one call.
pub fn call_params(call_sid: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CallSid", call_sid.to_string()),
        ("AccountSid", "ACtest".to_string()),
        ("From", "+14155550100".to_string()),
        ("To", "+14155550199".to_string()),
        ("CallStatus", "ringing".to_string()),
        ("Direction", "inbound".to_string()),
        ("ApiVersion", "2010-04-01".to_string()),
    ]
}

/// `callvisor ARGS…` run to completion in `dir` with only `env` (no stray `.env` or variable of
/// the test's own environment can interfere): its exit status, stdout and stderr.
pub fn run_binary(
    args: &[&str],
    env: &[(&str, &str)],
    dir: &std::path::Path,
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_callvisor"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

/// The real binary, started as Railway would, for tests that need signals and exit codes.
pub struct BinaryApp {
    pub child: std::process::Child,
    pub app: TestApp,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts `callvisor` on 127.0.0.1:0 with `env`, and waits until it listens.
pub async fn spawn_binary(env: &[(&str, &str)]) -> BinaryApp {
    spawn_binary_with_args(&[], env).await
}

/// `callvisor ARGS…` (e.g. `autoscale`) on 127.0.0.1:0 with `env`, once it listens.
pub async fn spawn_binary_with_args(args: &[&str], env: &[(&str, &str)]) -> BinaryApp {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callvisor"));
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("WORKERS", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(port) = line.split("listening on port ").nth(1) {
                let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
                let _ = port_tx.send(digits.parse::<u16>().unwrap());
            }
            eprintln!("[callvisor] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let port = actix_web::rt::task::spawn_blocking(move || port_rx.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("the binary logs its port");
    BinaryApp {
        child,
        app: TestApp {
            port,
            base: format!("http://127.0.0.1:{port}"),
            client: awc::Client::builder().timeout(PATIENCE).finish(),
            supervisor: None,
        },
        log,
    }
}

impl BinaryApp {
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `within`) and returns its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not killed");
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running after {within:?}");
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Every stderr line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`, and returns it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            if std::time::Instant::now() > deadline {
                panic!("no log line with {needle:?}");
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BinaryApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
