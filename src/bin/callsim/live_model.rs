//! `--live-model ADDR`: a stand-in for OpenAI's GPT-Live, so that a voice agent on the live
//! engine (`engine = "live"`, `OPENAI_LIVE_URL=ws://ADDR/v1/live/sessions`) can be driven at
//! scale without OpenAI, and callvisor's own share of the latency and CPU measured.
//!
//! It is the project's one strict fake of GPT-Live (`callvisor::fakes::live`, the one the
//! engine's tests drive), run on its own: the handshake checked (Bearer, no query, no
//! `OpenAI-Beta`), `session.start` validated against the SDK's `SessionConfig` with unknown
//! fields refused, every command before `session.started` refused; then, as GPT-Live does, output
//! without end at real-time pace: a `session.output_audio.delta` of `--live-delta-ms` every as
//! many milliseconds, mu-law silence between replies. The same energy VAD as the Realtime
//! stand-in hears the caller; 500 ms after an utterance the model answers: 2 s of a tone in
//! place of the silence, in stamped deltas (the same [`Stamps`]: model to caller is timed the
//! same way), with transcript deltas both ways; `--live-tool` makes its backend delegate that
//! tool first (Responses delegation: it waits for the output and `response.create`);
//! `--live-goodbye-after N` makes the Nth reply a goodbye after which the backend delegates
//! `end_call`. What the fake refused (`error` events) is counted in the report: a correct agent
//! gets none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callvisor::fakes::live::{serve_auto, AutoLive, AutoVoice, FakeLive};

use crate::audio;
use crate::realtime_model::{Stamps, SILENCE_MS};

/// A reply lasts this long, as the Realtime stand-in's.
const REPLY_MS: u64 = 2000;
/// The delta size partners observed (a third party saw 100 ms deltas of PCM16 at 24 kHz); the
/// project's notes also say "about 50 frames a second" (20 ms): `--live-delta-ms` picks.
pub const DEFAULT_DELTA_MS: u64 = 100;

/// What the stand-in does besides talking.
pub struct Options {
    /// Each answer first delegates this tool (no arguments).
    pub tool: Option<String>,
    /// The Nth reply is a goodbye, then `end_call`.
    pub goodbye_after: Option<usize>,
    /// The size of each delta, and its pace (real time).
    pub delta_ms: u64,
}

/// Starts the stand-in on `addr` (`ws://ADDR/v1/live/sessions`), stamping its reply deltas with
/// `stamps`; the handle reads what it refused.
pub fn start(
    addr: SocketAddr,
    options: Options,
    stamps: &Arc<Stamps>,
) -> std::io::Result<FakeLive> {
    let delta_ms = options.delta_ms;
    serve_auto(
        addr,
        AutoLive {
            voice: AutoVoice {
                delta: audio::tone(350.0, delta_ms as usize, 0.2),
                deltas_per_reply: REPLY_MS.div_ceil(delta_ms) as usize,
                delta_every: Duration::from_millis(delta_ms),
                is_speech: audio::is_speech,
                silence_ms: SILENCE_MS,
                stamp: stamps.stamper(),
                tool_answered: options.tool.is_some().then(|| stamps.tool_timer()),
                tool: options.tool,
            },
            goodbye_after: options.goodbye_after,
        },
    )
}
