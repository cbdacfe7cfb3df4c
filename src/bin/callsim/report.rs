//! What callsim measures: live counters for the progress line, histograms, one record per call,
//! and the end-of-run summary (a table for people, `--json` for scripts).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How a call ended, as its caller would tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A stream carried the call until the caller hung up at the end of `--duration`.
    Connected,
    /// The TwiML ended the call (`<Say>`, `<Hangup>`, `<Reject>`) before its duration.
    Busy,
    /// Anything else: HTTP errors, bad TwiML, a dropped socket, too many redirects.
    Failed,
    /// The server's app hung the call up through Twilio's REST API (`--twilio-api`).
    #[serde(rename = "hung up by app")]
    HungUpByApp,
    /// The server's app transferred the call (`<Dial>` through `--twilio-api`).
    Transferred,
}

/// One finished call.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub call_sid: String,
    pub outcome: Outcome,
    /// Why a call failed, in a few words shared by all calls that failed the same way.
    pub reason: Option<String>,
    /// `<Redirect>`s followed; the call made one webhook request more than this.
    pub redirects: u32,
    /// Streams closed by the server with `1001 handoff` and continued elsewhere.
    pub handoffs: u32,
    /// Stream legs opened (handshakes that got a 101).
    pub streams: u32,
    pub frames_sent: u64,
    pub frames_echoed: u64,
    /// Of the frames never echoed, those in flight when the server closed a stream.
    pub frames_lost_at_close: u64,
    /// What `<Say>` told the caller last, if anything.
    pub said: Option<String>,
    /// How each stream leg ended on the server's side (`1013 at capacity`, `HTTP 403`...).
    pub stream_ends: Vec<String>,
    /// `--chaos`: what this caller did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<crate::chaos::Kind>,
    /// `--say`: per utterance, milliseconds from its end to the first audio back (with a
    /// stand-in model: to the first reply delta, not silence).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reply_ms: Vec<f64>,
    /// `--callee`: who answered this outbound call (`human` or `machine`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee: Option<&'static str>,
}

/// Shared by every call task of the (single-threaded) simulator.
pub struct Stats {
    pub live_calls: usize,
    pub streaming: usize,
    pub frames_sent: u64,
    pub frames_echoed: u64,
    /// Echo round trip: from writing a media frame to reading its echo, in microseconds.
    pub rtt_us: Histogram<u64>,
    /// How late the simulator sent each frame against its 20 ms schedule, in microseconds.
    pub lag_us: Histogram<u64>,
    /// Webhook request to TwiML fully read, in microseconds.
    pub webhook_us: Histogram<u64>,
    /// Per hand-off: from the old stream's close to the first echo on the new one, microseconds.
    pub handoff_gap_us: Histogram<u64>,
    /// `--say`: from the end of an utterance to the first audio back, in microseconds.
    pub reply_us: Histogram<u64>,
    /// `--realtime-model`, `--live-model`: from the stand-in sending a reply delta to the caller
    /// reading it.
    pub model_us: Histogram<u64>,
    /// `--realtime-tool`, `--live-tool`: the model's tool call to the agent's output, through
    /// the tool.
    pub tool_us: Histogram<u64>,
    pub records: Vec<CallRecord>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            live_calls: 0,
            streaming: 0,
            frames_sent: 0,
            frames_echoed: 0,
            rtt_us: histogram(),
            lag_us: histogram(),
            webhook_us: histogram(),
            handoff_gap_us: histogram(),
            reply_us: histogram(),
            model_us: histogram(),
            tool_us: histogram(),
            records: Vec::new(),
        }
    }
}

/// p50/p90/p99/max of one histogram, in milliseconds; absent when nothing was recorded.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Frames {
    pub sent: u64,
    pub echoed: u64,
    /// Sent and never echoed (an echo server answers every frame of a call that ended normally).
    pub lost: u64,
    /// Of `lost`, the frames in flight when the server closed their stream (refused right
    /// after `start`, handed off): the rest were lost on streams that were working.
    pub lost_at_close: u64,
}

/// What a strict stand-in refused.
#[derive(Debug, Clone, Serialize)]
pub struct ModelErrors {
    pub count: usize,
    pub first: Vec<serde_json::Value>,
}

/// The end-of-run result.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub calls: usize,
    pub duration_secs: f64,
    pub ramp_secs: f64,
    pub elapsed_secs: f64,
    pub connected: usize,
    pub busy: usize,
    pub failed: usize,
    /// `--twilio-api`: calls the server's app hung up / transferred through the REST API.
    pub hung_up_by_app: usize,
    pub transferred: usize,
    pub failed_by_reason: BTreeMap<String, usize>,
    /// Calls that followed at least one `<Redirect>`.
    pub redirected: usize,
    pub redirects: u64,
    /// Calls moved at least once by a draining replica.
    pub handed_off: usize,
    pub handoffs: u64,
    /// For calls that heard busy: how many webhook tries each took, `tries -> calls`.
    pub busy_after_tries: BTreeMap<u32, usize>,
    /// How stream legs ended on the server's side, `ending -> count`.
    pub stream_ends: BTreeMap<String, usize>,
    pub frames: Frames,
    pub echo_rtt_ms: Option<Percentiles>,
    pub send_lag_ms: Option<Percentiles>,
    pub webhook_ms: Option<Percentiles>,
    pub handoff_gap_ms: Option<Percentiles>,
    /// `--say`: end of the caller's utterance to the first audio back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_ms: Option<Percentiles>,
    /// `--realtime-model`, `--live-model`: the model's reply delta to the caller, through the
    /// server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_to_caller_ms: Option<Percentiles>,
    /// `--realtime-tool`, `--live-tool`: from the model's tool call to the agent's output,
    /// through the server and the tool (the tool's own time included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_round_trip_ms: Option<Percentiles>,
    /// `--live-model`: the `error` events the GPT-Live stand-in sent (what the real service
    /// would have refused): how many, and the first few.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_model_errors: Option<ModelErrors>,
    /// `--chaos`: the seed (replay with `--seed`) and, per kind, how the calls went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<BTreeMap<crate::chaos::Kind, crate::chaos::Tally>>,
    /// `--callee`: what became of the outbound calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<crate::callee::OutboundSummary>,
    /// Every call, in the order they finished.
    pub call_records: Vec<CallRecord>,
}

impl Summary {
    pub fn new(
        stats: &Stats,
        target: &str,
        calls: usize,
        duration: Duration,
        ramp: Duration,
        elapsed: Duration,
    ) -> Self {
        let records = &stats.records;
        let count = |o: Outcome| records.iter().filter(|r| r.outcome == o).count();
        let mut failed_by_reason = BTreeMap::new();
        let mut busy_after_tries = BTreeMap::new();
        let mut stream_ends = BTreeMap::new();
        for r in records {
            match r.outcome {
                Outcome::Failed => {
                    let reason = r.reason.clone().unwrap_or_else(|| "unknown".into());
                    *failed_by_reason.entry(reason).or_insert(0) += 1;
                }
                Outcome::Busy => *busy_after_tries.entry(r.redirects + 1).or_insert(0) += 1,
                Outcome::Connected | Outcome::HungUpByApp | Outcome::Transferred => {}
            }
            for end in &r.stream_ends {
                *stream_ends.entry(end.clone()).or_insert(0) += 1;
            }
        }
        let sent: u64 = records.iter().map(|r| r.frames_sent).sum();
        let echoed: u64 = records.iter().map(|r| r.frames_echoed).sum();
        Summary {
            target: target.to_string(),
            calls,
            duration_secs: duration.as_secs_f64(),
            ramp_secs: ramp.as_secs_f64(),
            elapsed_secs: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            connected: count(Outcome::Connected),
            busy: count(Outcome::Busy),
            failed: count(Outcome::Failed),
            hung_up_by_app: count(Outcome::HungUpByApp),
            transferred: count(Outcome::Transferred),
            failed_by_reason,
            redirected: records.iter().filter(|r| r.redirects > 0).count(),
            redirects: records.iter().map(|r| u64::from(r.redirects)).sum(),
            handed_off: records.iter().filter(|r| r.handoffs > 0).count(),
            handoffs: records.iter().map(|r| u64::from(r.handoffs)).sum(),
            busy_after_tries,
            stream_ends,
            frames: Frames {
                sent,
                echoed,
                lost: sent.saturating_sub(echoed),
                lost_at_close: records.iter().map(|r| r.frames_lost_at_close).sum(),
            },
            echo_rtt_ms: Percentiles::of(&stats.rtt_us),
            send_lag_ms: Percentiles::of(&stats.lag_us),
            webhook_ms: Percentiles::of(&stats.webhook_us),
            handoff_gap_ms: Percentiles::of(&stats.handoff_gap_us),
            reply_ms: Percentiles::of(&stats.reply_us),
            model_to_caller_ms: Percentiles::of(&stats.model_us),
            tool_round_trip_ms: Percentiles::of(&stats.tool_us),
            live_model_errors: None,
            seed: None,
            chaos: None,
            outbound: None,
            call_records: records.clone(),
        }
    }

    /// Adds the `--chaos` tallies.
    pub fn with_chaos(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self.chaos = Some(crate::chaos::tally(&self.call_records));
        self
    }

    /// Adds what the `--live-model` stand-in refused.
    pub fn with_live_model_errors(mut self, count: usize, first: Vec<serde_json::Value>) -> Self {
        let first = first.into_iter().take(5).collect();
        self.live_model_errors = Some(ModelErrors { count, first });
        self
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "callsim: {} calls to {}, {}s each, ramp {}s, finished in {}s",
            self.calls, self.target, self.duration_secs, self.ramp_secs, self.elapsed_secs
        );
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<17} {v}");
        };
        row("connected", self.connected.to_string());
        row(
            "redirected",
            format!("{} ({} redirects)", self.redirected, self.redirects),
        );
        row(
            "handed off",
            format!("{} ({} hand-offs)", self.handed_off, self.handoffs),
        );
        let tries = self
            .busy_after_tries
            .iter()
            .map(|(tries, n)| format!("{n} after {tries} tries"))
            .collect::<Vec<_>>()
            .join(", ");
        row(
            "busy",
            if tries.is_empty() {
                self.busy.to_string()
            } else {
                format!("{} ({tries})", self.busy)
            },
        );
        if self.hung_up_by_app + self.transferred > 0 {
            row("hung up by app", self.hung_up_by_app.to_string());
            row("transferred", self.transferred.to_string());
        }
        row("failed", self.failed.to_string());
        for (reason, n) in &self.failed_by_reason {
            row("", format!("{n} × {reason}"));
        }
        let f = &self.frames;
        let pct = if f.sent == 0 {
            0.0
        } else {
            f.lost as f64 * 100.0 / f.sent as f64
        };
        let voice = self.reply_ms.is_some() || self.model_to_caller_ms.is_some();
        row(
            "media frames",
            if voice {
                // A voice caller: the server answers, it does not echo.
                format!("{} sent, {} received", f.sent, f.echoed)
            } else {
                format!(
                    "{} sent, {} echoed, {} lost ({pct:.3}%{})",
                    f.sent,
                    f.echoed,
                    f.lost,
                    if f.lost_at_close > 0 {
                        format!(
                            ", {} in flight as the server closed a stream",
                            f.lost_at_close
                        )
                    } else {
                        String::new()
                    }
                )
            },
        );
        let p = |p: &Option<Percentiles>| match p {
            Some(p) => format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms  (n={})",
                p.p50, p.p90, p.p99, p.max, p.count
            ),
            None => "-".into(),
        };
        row("echo round trip", p(&self.echo_rtt_ms));
        row("send lag", p(&self.send_lag_ms));
        row("webhook", p(&self.webhook_ms));
        row("hand-off gap", p(&self.handoff_gap_ms));
        if self.reply_ms.is_some() {
            row("reply after said", p(&self.reply_ms));
        }
        if self.model_to_caller_ms.is_some() {
            row("model to caller", p(&self.model_to_caller_ms));
        }
        if self.tool_round_trip_ms.is_some() {
            row("tool round trip", p(&self.tool_round_trip_ms));
        }
        if let Some(errors) = &self.live_model_errors {
            let first = errors.first.first().map_or(String::new(), |e| {
                format!(
                    " (first: {} {})",
                    e["error"]["code"].as_str().unwrap_or("?"),
                    e["error"]["message"].as_str().unwrap_or("")
                )
            });
            row("model refused", format!("{}{first}", errors.count));
        }
        if let (Some(seed), Some(chaos)) = (self.seed, &self.chaos) {
            row(
                "chaos seed",
                format!("{seed} (replay with --chaos --seed {seed})"),
            );
            for (kind, t) in chaos {
                let audio = if kind.carries_audio() {
                    format!(", {} frames sent, {} lost", t.frames_sent, t.frames_lost)
                } else {
                    String::new()
                };
                row(
                    "",
                    format!(
                        "{kind:?}: {} calls, {} as expected{audio}",
                        t.calls, t.as_expected
                    ),
                );
            }
        }
        if let Some(o) = &self.outbound {
            row(
                "outbound",
                format!(
                    "{} placed, {} created at Twilio, {} unaccounted",
                    o.placed, o.created_at_twilio, o.unaccounted
                ),
            );
            row(
                "",
                format!(
                    "{} people: {} connected until they hung up",
                    o.humans, o.humans_connected
                ),
            );
            row(
                "",
                format!(
                    "{} machines: {} left the voicemail message, {} hung up on",
                    o.machines, o.messages_left, o.machines_hung_up
                ),
            );
        }
        if !self.stream_ends.is_empty() {
            let ends = self
                .stream_ends
                .iter()
                .map(|(e, n)| format!("{n} × {e}"))
                .collect::<Vec<_>>()
                .join(", ");
            row("stream ends", ends);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome, tries: u32, reason: Option<&str>) -> CallRecord {
        CallRecord {
            call_sid: "CA1".into(),
            outcome,
            reason: reason.map(String::from),
            redirects: tries - 1,
            handoffs: 0,
            streams: 1,
            frames_sent: 10,
            frames_echoed: if outcome == Outcome::Connected { 10 } else { 7 },
            frames_lost_at_close: if outcome == Outcome::Connected { 0 } else { 3 },
            said: None,
            stream_ends: vec!["1000 stop".into()],
            chaos: None,
            reply_ms: Vec::new(),
            callee: None,
        }
    }

    #[test]
    fn summary_groups_outcomes_tries_and_lost_frames() {
        let mut stats = Stats {
            records: vec![
                record(Outcome::Connected, 1, None),
                record(Outcome::Connected, 2, None),
                record(Outcome::Busy, 3, None),
                record(Outcome::Busy, 3, None),
                record(Outcome::Failed, 1, Some("webhook HTTP 500")),
            ],
            ..Stats::default()
        };
        stats.rtt_us.record(1500).unwrap();
        let s = Summary::new(
            &stats,
            "http://x",
            5,
            Duration::from_secs(2),
            Duration::ZERO,
            Duration::from_secs(3),
        );
        assert_eq!((s.connected, s.busy, s.failed), (2, 2, 1));
        assert_eq!(s.redirected, 3);
        assert_eq!(s.redirects, 5);
        assert_eq!(s.busy_after_tries, BTreeMap::from([(3, 2)]));
        assert_eq!(
            s.failed_by_reason,
            BTreeMap::from([("webhook HTTP 500".to_string(), 1)])
        );
        assert_eq!((s.frames.sent, s.frames.echoed, s.frames.lost), (50, 41, 9));
        assert_eq!(s.frames.lost_at_close, 9);
        assert_eq!(s.stream_ends["1000 stop"], 5);
        let rtt = s.echo_rtt_ms.unwrap();
        assert_eq!((rtt.count, rtt.p99), (1, 1.5));
        assert!(s.send_lag_ms.is_none());
        let table = s.table();
        assert!(
            table.contains("busy              2 (2 after 3 tries)"),
            "{table}"
        );
        assert!(table.contains("1 × webhook HTTP 500"), "{table}");
        assert!(
            table.contains("9 lost (18.000%, 9 in flight as the server closed a stream)"),
            "{table}"
        );
    }
}
