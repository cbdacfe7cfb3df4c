//! callsim: a Twilio caller simulator. It calls a callvisor (or any Media Streams server) the way
//! Twilio does, many calls at once in real time, and reports what the callers experienced.
//!
//! ```text
//! callsim --target http://127.0.0.1:8080 --calls 200 --duration 30s --ramp 5s
//! ```
//!
//! Each call: POST the voice webhook (signed when a token is given), run the TwiML (follow
//! `<Redirect>`, honour `<Say>`/`<Hangup>`/`<Reject>`), open the `<Stream>`, send `connected`,
//! `start` and 20 ms mu-law frames at real time, answer `mark`s once their audio has played,
//! and hang up with `stop`. When the server closes the stream, the TwiML after `</Connect>` runs.
//! As a voice caller (`--say`, `--record`, `--realtime-model`, `--live-model`) it plays a
//! recording into each call, writes what each caller heard, and times the answers.
//! Single-threaded on purpose: one core, no locks; pin it with `taskset` for benchmarks.

#![forbid(unsafe_code)]

mod audio;
mod callee;
mod caller;
mod chaos;
mod live_model;
mod realtime_model;
mod report;

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callvisor::fakes::twilio_rest::{BasicAuth, FakeTwilio};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use caller::Ctx;
use report::{Percentiles, Stats, Summary};

#[derive(Debug, Parser)]
#[command(
    name = "callsim",
    version,
    about = "Calls a Twilio Media Streams server the way Twilio does, and measures what callers get."
)]
struct Args {
    /// Base URL of the server (http://host:port or https://host); streams follow its TwiML.
    #[arg(long, value_parser = parse_target)]
    target: String,
    /// Number of calls to place.
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// How long each call streams audio before the caller hangs up (e.g. 30s, 2m, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Calls start evenly spread over this time (0s: all at once).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    ramp: Duration,
    /// Sign requests with X-Twilio-Signature, as Twilio does, using this auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Path of the voice webhook on the target.
    #[arg(long, default_value = "/incoming-call")]
    webhook_path: String,
    /// Timeout for each HTTP request and stream handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// The caller's number.
    #[arg(long, default_value = "+14155550100")]
    from: String,
    /// The number called.
    #[arg(long, default_value = "+14155550199")]
    to: String,
    /// Print the summary as JSON on stdout (the progress bar stays on stderr, when it is a TTY).
    #[arg(long)]
    json: bool,
    /// A soak mix instead of normal calls: about half normal, the rest slow readers, duplicate
    /// CallSids, TCP resets mid-frame, garbage, binary and oversized frames, streams that never
    /// start. Each misbehaving call must get the close code the protocol promises.
    #[arg(long)]
    chaos: bool,
    /// The seed of the `--chaos` mix (default: a random one, printed; the same seed replays
    /// the same mix).
    #[arg(long, requires = "chaos")]
    seed: Option<u64>,
    /// Serve a stand-in for Twilio's REST API here (e.g. 127.0.0.1:8081) and point the server's
    /// TWILIO_API_BASE_URL at it: calls an app hangs up or transfers end as such in the report.
    /// It wants the server's REST credentials: the API key below, else the account's auth token
    /// (--auth-token) with the account SID as user.
    #[arg(long, value_name = "ADDR")]
    twilio_api: Option<std::net::SocketAddr>,
    /// The API key SID (SK…) the `--twilio-api` stand-in accepts, as the server's
    /// TWILIO_API_KEY_SID.
    #[arg(long, env = "TWILIO_API_KEY_SID", value_name = "SID")]
    twilio_api_key_sid: Option<String>,
    /// The API key secret the `--twilio-api` stand-in accepts, as the server's
    /// TWILIO_API_KEY_SECRET.
    #[arg(
        long,
        env = "TWILIO_API_KEY_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    twilio_api_key_secret: Option<String>,
    /// A voice caller: say this recording (WAV, 8 kHz mono, mu-law or 16-bit PCM) from each
    /// stream's start instead of silence; the report gives the time from its end to the first
    /// audio back, per call and as percentiles.
    #[arg(long, value_name = "FILE.wav")]
    say: Option<PathBuf>,
    /// Say it again this often (start to start), e.g. 5s.
    #[arg(long, requires = "say", value_parser = parse_duration)]
    say_every: Option<Duration>,
    /// Write what each caller heard to DIR, one WAV per call named by its CallSid (8 kHz
    /// mu-law), to listen to a run.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Serve a stand-in for OpenAI's Realtime API here (e.g. 127.0.0.1:8082) and point the
    /// server's OPENAI_REALTIME_URL at ws://ADDR/v1/realtime: it answers each utterance with
    /// audio, and the report times each audio delta from the model to the caller.
    #[arg(long, value_name = "ADDR")]
    realtime_model: Option<std::net::SocketAddr>,
    /// With --realtime-model: each answer first calls this tool of the agent (an agent's tool
    /// in the server's AGENTS_FILE), and the report times the agent's output (tool round trip).
    #[arg(long, value_name = "NAME", requires = "realtime_model")]
    realtime_tool: Option<String>,
    /// Serve a stand-in for OpenAI's GPT-Live here (e.g. 127.0.0.1:8083) and point the
    /// server's OPENAI_LIVE_URL at ws://ADDR/v1/live/sessions: it streams audio without end
    /// (silence between replies), answers each utterance, and the report times each reply delta
    /// from the model to the caller and counts what the stand-in refused.
    #[arg(long, value_name = "ADDR")]
    live_model: Option<std::net::SocketAddr>,
    /// With --live-model: each answer first delegates this tool of the agent (an agent's tool
    /// in the server's AGENTS_FILE) to the backend, and the report times the agent's output.
    #[arg(long, value_name = "NAME", requires = "live_model")]
    live_tool: Option<String>,
    /// With --live-model: the Nth reply to a caller is a goodbye, after which the backend
    /// delegates `end_call` (the agent hangs up through the REST API: give --twilio-api).
    #[arg(long, value_name = "N", requires = "live_model", value_parser = clap::value_parser!(u64).range(1..))]
    live_goodbye_after: Option<u64>,
    /// With --live-model: the size of each audio delta, sent as often (real time), 10-1000 ms.
    #[arg(long, value_name = "MS", default_value_t = live_model::DEFAULT_DELTA_MS,
          value_parser = clap::value_parser!(u64).range(10..=1000))]
    live_delta_ms: u64,
    /// Outbound calls: place --calls calls through the target's POST /calls (spread over
    /// --ramp; --from is the business's number, --to the callee) and answer each as Twilio and
    /// the callee would: the --twilio-api stand-in creates them, callsim posts the signed status
    /// and answering-machine callbacks and runs each call's TwiML and stream. Every call must
    /// be accounted for: people connected until they hang up, machines ended by the server.
    #[arg(long, requires = "twilio_api", requires = "api_token")]
    callee: bool,
    /// The target's API_TOKEN (POST /calls).
    #[arg(long, env = "API_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    api_token: Option<String>,
    /// --callee: the share of callees that are people (the rest are machines).
    #[arg(long, default_value_t = 0.7, requires = "callee", value_parser = parse_share)]
    humans: f64,
    /// --callee: the calls' machine_detection (off, hangup or message).
    #[arg(long, default_value = "message", requires = "callee",
          value_parser = ["off", "hangup", "message"])]
    machine_detection: String,
    /// --callee: what a machine is left with machine_detection message.
    #[arg(
        long,
        default_value = "This is a message from callsim. Please call us back.",
        requires = "callee"
    )]
    voicemail_message: String,
    /// --callee: the agent that talks (default: the one that answers --from).
    #[arg(long, requires = "callee")]
    agent: Option<String>,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!(
            "`{s}` is not a share from 0 to 1 (0.7: 70 % people)"
        )),
    }
}

fn parse_target(s: &str) -> Result<String, String> {
    let s = s.trim_end_matches('/');
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err(format!(
            "`{s}` is not an http:// or https:// URL (streams follow the TwiML, ws/wss)"
        ));
    }
    Ok(s.to_string())
}

/// `30s`, `2m`, `500ms`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration like 30s, 2m or 500ms");
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// The credentials the `--twilio-api` stand-in accepts: what the server authenticates with, by
/// the server's own rule (an API key when both halves are set, else the account's auth token).
fn rest_auth(args: &Args) -> Result<BasicAuth, String> {
    match (
        &args.twilio_api_key_sid,
        &args.twilio_api_key_secret,
        &args.auth_token,
    ) {
        (Some(sid), Some(secret), _) => Ok(BasicAuth::Pair {
            user: sid.clone(),
            password: secret.clone(),
        }),
        (Some(_), None, _) | (None, Some(_), _) => Err(
            "give both --twilio-api-key-sid and --twilio-api-key-secret (TWILIO_API_KEY_SID, \
             TWILIO_API_KEY_SECRET), or neither"
                .into(),
        ),
        (None, None, Some(token)) => Ok(BasicAuth::AccountAuthToken(token.clone())),
        (None, None, None) => Err(
            "which credentials does the server use? Give its API key (--twilio-api-key-sid and \
             --twilio-api-key-secret, or TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET), or its \
             auth token (--auth-token or TWILIO_AUTH_TOKEN)"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    actix_web::rt::System::new().block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // Each live call holds a socket (two while its webhook is in flight).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < args.calls as u64 + 64 => eprintln!(
            "callsim: warning: the open files limit is {limit}, too low for {} calls; \
             raise it (ulimit -n) or expect failed connects",
            args.calls
        ),
        Ok(_) => {}
        Err(e) => eprintln!("callsim: warning: could not raise the open files limit: {e}"),
    }
    // TCP_NODELAY (callvisor::client): with Nagle's algorithm, `start` written right after
    // `connected` waits for the first one's delayed ACK, and the audio queues behind it: round
    // trips that measure the simulator's socket, not the server. No pool limit: every live call
    // holds a stream connection.
    let client = callvisor::client::builder()
        .no_pool_limit()
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let resetting_client = client.reset_on_drop().finish();
    let client = client.finish();
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    if args.chaos {
        eprintln!("callsim: chaos seed {seed} (replay with --chaos --seed {seed})");
    }
    let api = match args.twilio_api {
        None => None,
        Some(addr) => {
            let auth = match rest_auth(&args) {
                Ok(auth) => auth,
                Err(why) => {
                    eprintln!("callsim: --twilio-api: {why}");
                    return ExitCode::from(2);
                }
            };
            match FakeTwilio::serve(addr, auth) {
                Ok(api) => {
                    eprintln!(
                        "callsim: Twilio REST API stand-in on {} (the server's TWILIO_API_BASE_URL)",
                        api.base
                    );
                    Some(api)
                }
                Err(e) => {
                    eprintln!("callsim: cannot serve --twilio-api: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let say: Option<Rc<[u8]>> = match &args.say {
        None => None,
        Some(path) => match audio::read_wav(path) {
            Ok(audio) if audio.is_empty() => {
                eprintln!("callsim: --say {}: no audio in it", path.display());
                return ExitCode::from(2);
            }
            Ok(audio) => Some(audio.into()),
            Err(e) => {
                eprintln!("callsim: --say {e}");
                return ExitCode::from(2);
            }
        },
    };
    if let (Some(say), Some(every)) = (&say, args.say_every) {
        let length = Duration::from_millis(say.len() as u64 / 8);
        if every < length + caller::FRAME_INTERVAL {
            eprintln!(
                "callsim: --say-every {every:?} is not longer than the utterance ({length:?})"
            );
            return ExitCode::from(2);
        }
    }
    if let Some(dir) = &args.record {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("callsim: --record {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    // One clock and one set of stamps for both stand-ins: a run may serve both.
    let stamps = Arc::new(realtime_model::Stamps::new());
    if let Some(addr) = args.realtime_model {
        if let Err(e) = realtime_model::start(addr, args.realtime_tool.clone(), &stamps) {
            eprintln!("callsim: cannot serve --realtime-model: {e}");
            return ExitCode::from(2);
        }
        eprintln!(
            "callsim: Realtime API stand-in on ws://{addr}/v1/realtime (the server's OPENAI_REALTIME_URL)"
        );
    }
    let live = match args.live_model {
        None => None,
        Some(addr) => {
            let options = live_model::Options {
                tool: args.live_tool.clone(),
                goodbye_after: args.live_goodbye_after.map(|n| n as usize),
                delta_ms: args.live_delta_ms,
            };
            match live_model::start(addr, options, &stamps) {
                Ok(fake) => {
                    eprintln!(
                        "callsim: GPT-Live stand-in on {} (the server's OPENAI_LIVE_URL)",
                        fake.url
                    );
                    Some(fake)
                }
                Err(e) => {
                    eprintln!("callsim: cannot serve --live-model: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let model = (args.realtime_model.is_some() || live.is_some()).then_some(stamps);
    if args.callee && args.auth_token.is_none() {
        eprintln!("callsim: --callee signs Twilio's requests: give --auth-token (the server's TWILIO_AUTH_TOKEN)");
        return ExitCode::from(2);
    }
    let callee = args.callee.then(|| {
        Rc::new(callee::Options {
            calls_url: format!("{}/calls", args.target),
            api_token: args.api_token.clone().unwrap_or_default(),
            humans: args.humans,
            detection: args.machine_detection.clone(),
            voicemail_message: args.voicemail_message.clone(),
            agent: args.agent.clone(),
        })
    });
    let stats = Rc::new(RefCell::new(Stats::default()));
    let ctx = Rc::new(Ctx {
        client,
        resetting_client,
        api,
        webhook_url: format!("{}{}", args.target, args.webhook_path),
        auth_token: args.auth_token.clone(),
        account_sid: format!("AC{:032x}", 0x0ca1_1517_u128),
        from: args.from.clone(),
        to: args.to.clone(),
        duration: args.duration,
        stats: stats.clone(),
        say,
        say_every: args.say_every,
        record_dir: args.record.clone(),
        model: model.clone(),
    });

    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id());
    let started = Instant::now();
    let mut calls = Vec::with_capacity(args.calls);
    for i in 0..args.calls {
        let ctx = ctx.clone();
        let start_at = started + args.ramp.mul_f64(i as f64 / args.calls.max(1) as f64);
        let call_sid = format!("CA{run_id:016x}{i:016x}");
        let plan = args
            .chaos
            .then(|| chaos::Plan::draw(&mut chaos::Rng::for_call(seed, i)));
        let callee = callee.clone();
        calls.push(actix_web::rt::spawn(async move {
            tokio::time::sleep_until(start_at).await;
            ctx.stats.borrow_mut().live_calls += 1;
            let record = match callee {
                Some(opts) => callee::place_and_answer(ctx.clone(), opts, i).await,
                None => caller::run(&ctx, call_sid, plan, None).await,
            };
            let mut stats = ctx.stats.borrow_mut();
            stats.live_calls -= 1;
            stats.records.push(record);
        }));
    }

    let progress = progress_bar(args.calls as u64);
    let ticker = {
        let stats = stats.clone();
        let progress = progress.clone();
        actix_web::rt::spawn(async move {
            loop {
                update_progress(&progress, &stats.borrow());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let all_ended = async {
        for call in calls {
            let _ = call.await;
        }
    };
    // Ctrl-C still prints what the calls that ended so far got.
    let interrupted = tokio::select! {
        _ = all_ended => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    ticker.abort();
    progress.finish_and_clear();

    if let Some(model) = &model {
        let mut stats = stats.borrow_mut();
        for us in model.tool_round_trips() {
            stats.tool_us.saturating_record(us);
        }
    }
    let mut summary = Summary::new(
        &stats.borrow(),
        &args.target,
        args.calls,
        args.duration,
        args.ramp,
        started.elapsed(),
    );
    if args.chaos {
        summary = summary.with_chaos(seed);
    }
    if let Some(live) = &live {
        summary = summary.with_live_model_errors(live.error_count(), live.errors());
    }
    if let (Some(opts), Some(api)) = (&callee, &ctx.api) {
        summary.outbound = Some(callee::summarize(
            &summary.call_records,
            api.placed_calls().len(),
            opts,
        ));
    }
    if interrupted {
        eprintln!(
            "callsim: interrupted with {} calls still live: outcomes and frame counts cover the {} \
             calls that ended; the latency percentiles include every frame so far",
            stats.borrow().live_calls,
            summary.call_records.len(),
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        print!("{}", summary.table());
    }
    if interrupted {
        ExitCode::from(130)
    } else if summary.failed == 0 && summary.outbound.as_ref().is_none_or(|o| o.unaccounted == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn progress_bar(calls: u64) -> ProgressBar {
    let bar = ProgressBar::new(calls);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:20}] {pos}/{len} ended  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn update_progress(bar: &ProgressBar, stats: &Stats) {
    let p99 = |h| Percentiles::of(h).map_or("-".to_string(), |p| format!("{:.1}ms", p.p99));
    bar.set_position(stats.records.len() as u64);
    bar.set_message(format!(
        "live {} streaming {} | frames {}/{} echoed | p99 echo {} lag {}",
        stats.live_calls,
        stats.streaming,
        stats.frames_echoed,
        stats.frames_sent,
        p99(&stats.rtt_us),
        p99(&stats.lag_us),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn targets_must_be_http_urls() {
        assert_eq!(
            parse_target("https://x.up.railway.app/"),
            Ok("https://x.up.railway.app".into())
        );
        assert!(parse_target("ws://127.0.0.1:8080").is_err());
        assert!(parse_target("127.0.0.1:8080").is_err());
    }
}
