//! `--chaos`: a seeded mix of callers that misbehave the ways networks and hostile peers do, for
//! soak tests. Every call draws its kind from its own generator (the run's seed and the call's
//! number), so a run replays exactly with `--seed`.
//!
//! Callers of the audio kinds (`normal`, `slow_reader`, `duplicate`) are judged as any call:
//! they must connect and get every frame back. The others go through the webhook as Twilio does,
//! then misbehave on the stream and must get the close code the protocol promises. A reset caller
//! hears nothing after its reset (it is gone): callsim checks that the server had taken its call
//! (one frame echoed) before the reset, and the server's side is judged from outside, by
//! `scripts/soak.py`: that call's end-of-call line must say `client_gone` (the call ended and its
//! slot was freed).

use std::collections::BTreeMap;
use std::time::Duration;

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::timeout;

use callvisor::twilio::messages::{Media, MediaFormat, Start, TwilioFrame};
use callvisor::twilio::signature::sign;
use callvisor::twilio::twiml::StreamTarget;

use crate::caller::{Ctx, Ws};

/// What one chaos caller does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A call as Twilio places it.
    Normal,
    /// A normal call whose reader pauses for up to 3 s mid-call, then catches up.
    SlowReader,
    /// A stream that is replaced by a second stream of the same CallSid (a network handover):
    /// the first must be closed `1000 superseded`, the second carries the call.
    Duplicate,
    /// A stream that starts, sends audio until the server echoes its first frame (the call is
    /// bound to its CallSid), then resets its TCP connection in the middle of a frame.
    Reset,
    /// Invalid JSON after `start`: 1007.
    Garbage,
    /// A binary frame after `start`: 1003.
    Binary,
    /// A 70 KiB text frame after `start`: 1009.
    Oversized,
    /// `connected` and then nothing: 1008 once the start timeout passes.
    NeverStart,
}

impl Kind {
    /// Kinds whose audio is judged like a normal call's (every frame echoed).
    pub fn carries_audio(self) -> bool {
        matches!(self, Kind::Normal | Kind::SlowReader | Kind::Duplicate)
    }
}

/// Relative weights of the mix.
const MIX: [(Kind, u64); 8] = [
    (Kind::Normal, 50),
    (Kind::SlowReader, 10),
    (Kind::Duplicate, 8),
    (Kind::Reset, 10),
    (Kind::Garbage, 6),
    (Kind::Binary, 4),
    (Kind::Oversized, 4),
    (Kind::NeverStart, 8),
];

/// SplitMix64: small, fast, and the same on every machine, which is all a replayable mix needs.
pub struct Rng(u64);

impl Rng {
    /// The generator of call number `call` in a run seeded with `seed`.
    pub fn for_call(seed: u64, call: usize) -> Self {
        let mut rng = Rng(seed ^ (call as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick(&mut self) -> Kind {
        let total: u64 = MIX.iter().map(|(_, w)| w).sum();
        let mut x = self.below(total);
        for (kind, weight) in MIX {
            if x < weight {
                return kind;
            }
            x -= weight;
        }
        Kind::Normal
    }
}

/// One chaos call's plan, drawn before it starts.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub kind: Kind,
    /// For `slow_reader`: stop reading this long after the stream opens, for `pause`.
    pub pause_after: Duration,
    pub pause: Duration,
    /// For `reset`: media frames sent before the reset.
    pub frames_before_reset: u32,
}

impl Plan {
    pub fn draw(rng: &mut Rng) -> Self {
        Plan {
            kind: rng.pick(),
            pause_after: Duration::from_millis(500 + rng.below(3_000)),
            pause: Duration::from_millis(200 + rng.below(2_800)),
            frames_before_reset: 1 + rng.below(100) as u32,
        }
    }
}

/// Per kind: calls, how many went as the protocol promises, frames of the audio kinds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub calls: usize,
    pub as_expected: usize,
    pub frames_sent: u64,
    pub frames_lost: u64,
}

pub fn tally(records: &[crate::report::CallRecord]) -> BTreeMap<Kind, Tally> {
    let mut out: BTreeMap<Kind, Tally> = BTreeMap::new();
    for r in records {
        let Some(kind) = r.chaos else { continue };
        let t = out.entry(kind).or_default();
        t.calls += 1;
        t.as_expected += usize::from(r.outcome == crate::report::Outcome::Connected);
        t.frames_sent += r.frames_sent;
        t.frames_lost += r.frames_sent.saturating_sub(r.frames_echoed);
    }
    out
}

/// How long a misbehaving stream waits for the server's answer (the start timeout included).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Runs a misbehaving stream of `kind` against `target`. `Ok` when the server answered as the
/// protocol promises.
pub async fn misbehave(
    ctx: &Ctx,
    call_sid: &str,
    target: &StreamTarget,
    plan: &Plan,
) -> Result<(), String> {
    let client = if plan.kind == Kind::Reset {
        &ctx.resetting_client
    } else {
        &ctx.client
    };
    let stream_sid = format!("MZ{}", &call_sid[2..]);
    let mut ws = open(ctx, client, target).await?;
    let expected = match plan.kind {
        Kind::NeverStart => {
            send(&mut ws, connected()).await?;
            1008
        }
        Kind::Garbage | Kind::Binary | Kind::Oversized => {
            start(&mut ws, ctx, call_sid, &stream_sid, target).await?;
            let bad = match plan.kind {
                Kind::Garbage => Message::Text("{\"event\":\"media\",\"streamSid\":".into()),
                Kind::Binary => Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()),
                _ => Message::Text(big_media(&stream_sid).into()),
            };
            send(&mut ws, bad).await?;
            match plan.kind {
                Kind::Garbage => 1007,
                Kind::Binary => 1003,
                _ => 1009,
            }
        }
        Kind::Reset => {
            start(&mut ws, ctx, call_sid, &stream_sid, target).await?;
            send(&mut ws, Message::Text(media(&stream_sid, 1).into())).await?;
            // Once a frame is echoed the server has handled `start`: its end of this call is
            // logged under this CallSid, which is how the soak finds it. A reset that arrives
            // with `start` still unread ends a stream the server never tied to a call.
            first_echo(&mut ws, "reset").await?;
            for n in 2..=plan.frames_before_reset {
                send(&mut ws, Message::Text(media(&stream_sid, n).into())).await?;
            }
            // Half of the next frame, written under the codec, then a reset (SO_LINGER 0 on
            // this client's sockets): the server sees the connection die mid-frame.
            let frame = media(&stream_sid, plan.frames_before_reset + 1);
            let mut raw = vec![0x81, 0x80 | 126];
            raw.extend_from_slice(&(frame.len() as u16).to_be_bytes());
            raw.extend_from_slice(&[0; 4]);
            raw.extend_from_slice(&frame.as_bytes()[..frame.len() / 2]);
            tokio::io::AsyncWriteExt::write_all(ws.io_mut(), &raw)
                .await
                .map_err(|e| format!("reset: raw write failed: {e}"))?;
            drop(ws);
            return Ok(());
        }
        kind => return Err(format!("{kind:?} is not a misbehaving kind")),
    };
    match timeout(ANSWER_WITHIN, close_code(&mut ws)).await {
        Ok(Ok((code, _))) if code == expected => Ok(()),
        Ok(Ok((code, reason))) => Err(format!(
            "{:?}: expected close {expected}, got {code} {reason}",
            plan.kind
        )),
        Ok(Err(e)) => Err(format!("{:?}: {e}", plan.kind)),
        Err(_) => Err(format!(
            "{:?}: no close within {ANSWER_WITHIN:?}",
            plan.kind
        )),
    }
}

/// The first stream of a `duplicate` call: started, one echo seen (so the server has bound it to
/// the CallSid), then handed back to wait for its close while the second stream plays.
pub async fn first_of_duplicate(
    ctx: &Ctx,
    call_sid: &str,
    target: &StreamTarget,
) -> Result<Ws, String> {
    let stream_sid = format!("MZ{}dup", &call_sid[2..]);
    let mut ws = open(ctx, &ctx.client, target).await?;
    start(&mut ws, ctx, call_sid, &stream_sid, target).await?;
    send(&mut ws, Message::Text(media(&stream_sid, 1).into())).await?;
    first_echo(&mut ws, "duplicate").await?;
    Ok(ws)
}

/// Waits for the server's first text frame on a stream that has sent `start` and a media frame:
/// the echo that says the server holds the call.
async fn first_echo(ws: &mut Ws, kind: &str) -> Result<(), String> {
    loop {
        match timeout(ANSWER_WITHIN, ws.next()).await {
            Ok(Some(Ok(Frame::Text(_)))) => return Ok(()),
            Ok(Some(Ok(Frame::Ping(_) | Frame::Pong(_)))) => continue,
            other => return Err(format!("{kind}: no echo of the first frame: {other:?}")),
        }
    }
}

/// Waits for the server's close of the first stream of a `duplicate` call: `1000 superseded`.
pub async fn expect_superseded(mut ws: Ws) -> Result<(), String> {
    match timeout(ANSWER_WITHIN, close_code(&mut ws)).await {
        Ok(Ok((1000, reason))) if reason == "superseded" => Ok(()),
        Ok(Ok((code, reason))) => Err(format!(
            "duplicate: first stream closed {code} {reason}, not 1000 superseded"
        )),
        Ok(Err(e)) => Err(format!("duplicate: {e}")),
        Err(_) => Err("duplicate: first stream never closed".into()),
    }
}

/// Opens the stream as Twilio does (signed when callsim has the auth token).
async fn open(ctx: &Ctx, client: &awc::Client, target: &StreamTarget) -> Result<Ws, String> {
    let mut req = client.ws(&target.url).max_frame_size(128 * 1024);
    if let Some(token) = &ctx.auth_token {
        req = req.set_header("X-Twilio-Signature", sign(token, &target.url, &[]));
    }
    req.connect()
        .await
        .map(|(_, ws)| ws)
        .map_err(|e| format!("stream handshake failed: {e}"))
}

async fn send(ws: &mut Ws, message: Message) -> Result<(), String> {
    ws.send(message)
        .await
        .map_err(|e| format!("stream write failed: {e}"))
}

fn connected() -> Message {
    Message::Text(
        TwilioFrame::Connected {
            protocol: "Call",
            version: "1.0.0",
        }
        .to_json()
        .into(),
    )
}

async fn start(
    ws: &mut Ws,
    ctx: &Ctx,
    call_sid: &str,
    stream_sid: &str,
    target: &StreamTarget,
) -> Result<(), String> {
    send(ws, connected()).await?;
    let start = Start {
        account_sid: ctx.account_sid.clone(),
        stream_sid: stream_sid.into(),
        call_sid: call_sid.into(),
        tracks: vec!["inbound".into()],
        custom_parameters: target.parameters.iter().cloned().collect(),
        media_format: MediaFormat::default(),
    };
    let frame = TwilioFrame::Start {
        sequence_number: "1".into(),
        stream_sid,
        start: &start,
    };
    send(ws, Message::Text(frame.to_json().into())).await
}

fn media(stream_sid: &str, n: u32) -> String {
    TwilioFrame::Media {
        sequence_number: (n + 1).to_string(),
        stream_sid,
        media: Media {
            track: Some("inbound".into()),
            chunk: Some(n.to_string().into()),
            timestamp: Some((n * 20).to_string().into()),
            payload: "/".repeat(216).into(), // 160 bytes of audio
        },
    }
    .to_json()
}

fn big_media(stream_sid: &str) -> String {
    TwilioFrame::Media {
        sequence_number: "2".into(),
        stream_sid,
        media: Media {
            track: Some("inbound".into()),
            chunk: Some("1".into()),
            timestamp: Some("0".into()),
            payload: "A".repeat(70 * 1024).into(),
        },
    }
    .to_json()
}

/// Reads until the server's close frame; its code and reason.
async fn close_code(ws: &mut Ws) -> Result<(u16, String), String> {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Close(Some(reason)))) => {
                let _ = ws.send(Message::Close(Some(reason.clone()))).await;
                return Ok((reason.code.into(), reason.description.unwrap_or_default()));
            }
            Some(Ok(Frame::Close(None))) => return Err("closed without a code".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("stream error before the close: {e}")),
            None => return Err("stream dropped without a close frame".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_replays_from_the_seed_and_draws_every_kind() {
        let kinds = |seed| -> Vec<Kind> {
            (0..2_000)
                .map(|i| Plan::draw(&mut Rng::for_call(seed, i)).kind)
                .collect()
        };
        assert_eq!(kinds(7), kinds(7));
        assert_ne!(kinds(7), kinds(8));
        let drawn = kinds(7);
        for (kind, weight) in MIX {
            let n = drawn.iter().filter(|k| **k == kind).count() as u64;
            // Within a factor of two of its share of 2,000 calls.
            let share = 2_000 * weight / 100;
            assert!(n > share / 2 && n < share * 2, "{kind:?}: {n} of ~{share}");
        }
    }
}
