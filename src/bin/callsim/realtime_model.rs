//! `--realtime-model ADDR`: a stand-in for OpenAI's Realtime API (GA), so that a voice agent
//! (`HANDLER=openai`, `OPENAI_REALTIME_URL=ws://ADDR/v1/realtime`) can be driven at scale without
//! OpenAI, and callvisor's own share of the latency measured.
//!
//! It is the project's one strict fake of the Realtime API (`callvisor::fakes::realtime`, the
//! one the tests use), run on its own: an energy VAD over the appended audio
//! (`speech_started`, then after 500 ms of silence — server_vad's default — `speech_stopped`,
//! `committed` and a response), each response 2 s of a tone in 100 ms
//! `response.output_audio.delta`s sent at twice real time (as the model streams faster than it
//! plays); speech over a response cancels it the way the server does (the deltas in flight, then
//! `response.done` `cancelled`). The fake's rules (one response at a time, truncation within the
//! audio sent, GA `session.update`, known events only) answer a wrong agent with `error` events.
//!
//! Each delta carries an id in the lowest bit of its first 32 samples (inaudible): when the
//! caller hears that frame, callsim knows when the model sent it, on one clock: the latency from
//! the model's delta to the caller, through the server under test. [`Stamps`] are shared with
//! the GPT-Live stand-in (`live_model.rs`): one run may serve both.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use callvisor::fakes::realtime::{serve_auto, AutoVoice, Stamp, ToolAnswered};

use crate::audio;

/// One answer: this many deltas of `DELTA_MS`.
const DELTAS_PER_REPLY: usize = 20;
const DELTA_MS: usize = 100;
/// Deltas go out at twice real time.
const DELTA_EVERY: Duration = Duration::from_millis(DELTA_MS as u64 / 2);
/// server_vad's default `silence_duration_ms` (the GPT-Live stand-in waits as long).
pub const SILENCE_MS: u64 = 500;
const STAMP_BITS: usize = 32;
const RING: usize = 1 << 16;

/// When each stamped delta was sent, for the caller to look up.
pub struct Stamps {
    /// `--realtime-tool`: microseconds from each tool call to the agent's output.
    tool_rtt_us: Mutex<Vec<u64>>,
    next: AtomicU32,
    sent: Mutex<Vec<(u32, Option<Instant>)>>,
}

impl Stamps {
    pub fn new() -> Self {
        Stamps {
            tool_rtt_us: Mutex::new(Vec::new()),
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

    /// The stand-ins' hook that stamps each reply delta.
    pub fn stamper(self: &Arc<Self>) -> Stamp {
        let stamps = self.clone();
        Arc::new(move |delta: &mut [u8]| stamps.stamp(delta))
    }

    /// The stand-ins' hook told each tool round trip.
    pub fn tool_timer(self: &Arc<Self>) -> ToolAnswered {
        let stamps = self.clone();
        Arc::new(move |took: Duration| {
            stamps
                .tool_rtt_us
                .lock()
                .unwrap()
                .push(took.as_micros() as u64)
        })
    }

    /// The tool round trips so far (microseconds), taken.
    pub fn tool_round_trips(&self) -> Vec<u64> {
        std::mem::take(&mut self.tool_rtt_us.lock().unwrap())
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

/// Starts the stand-in on `addr`; it answers at `/v1/realtime`, stamping its deltas with
/// `stamps`. With `tool`, each answer to the caller's speech first calls that tool, and
/// [`Stamps::tool_round_trips`] collects how long the agent took to send each output back.
pub fn start(addr: SocketAddr, tool: Option<String>, stamps: &Arc<Stamps>) -> std::io::Result<()> {
    serve_auto(
        addr,
        AutoVoice {
            delta: audio::tone(350.0, DELTA_MS, 0.2),
            deltas_per_reply: DELTAS_PER_REPLY,
            delta_every: DELTA_EVERY,
            is_speech: audio::is_speech,
            silence_ms: SILENCE_MS,
            stamp: stamps.stamper(),
            tool_answered: tool.is_some().then(|| stamps.tool_timer()),
            tool,
        },
    )
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
