//! Phone audio for a voice caller: G.711 mu-law and the WAV files `--say` reads and `--record`
//! writes (8 kHz mono, as Twilio streams it).

use std::path::Path;

use tokio::time::Instant;

/// Twilio's sample rate; mu-law is one byte a sample, 8 bytes a millisecond.
pub const SAMPLE_RATE: u32 = 8000;
/// Mu-law silence.
pub const SILENCE: u8 = 0xff;

const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_MULAW: u16 = 7;

/// One 16-bit linear sample as G.711 mu-law.
pub fn mulaw_from_linear(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let sign = if sample < 0 { 0x80 } else { 0 };
    let magnitude = (i32::from(sample).abs()).min(CLIP) + BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (31 - magnitude.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// One G.711 mu-law byte as a 16-bit linear sample.
pub fn linear_from_mulaw(byte: u8) -> i16 {
    let byte = !byte;
    let exponent = (byte >> 4) & 0x07;
    let mantissa = i32::from(byte & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if byte & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Reads a WAV file as 8 kHz mu-law: mu-law as is, 16-bit PCM converted; mono, 8 kHz only
/// (callsim does not resample: `sox in.wav -r 8000 -c 1 out.wav` does).
pub fn read_wav(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_wav(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_wav(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a WAV file (no RIFF/WAVE header)".into());
    }
    let mut format: Option<(u16, u16, u32, u16)> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = bytes
            .get(at + 8..at + 8 + size)
            .ok_or("a chunk runs past the end of the file")?;
        match id {
            b"fmt " if body.len() >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
                format = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"data" => {
                let (tag, channels, rate, bits) = format.ok_or("no fmt chunk before the data")?;
                if channels != 1 || rate != SAMPLE_RATE {
                    return Err(format!(
                        "{channels} channel(s) at {rate} Hz; callsim plays 8000 Hz mono"
                    ));
                }
                return match (tag, bits) {
                    (WAVE_FORMAT_MULAW, 8) => Ok(body.to_vec()),
                    (WAVE_FORMAT_PCM, 16) => Ok(body
                        .chunks_exact(2)
                        .map(|s| mulaw_from_linear(i16::from_le_bytes([s[0], s[1]])))
                        .collect()),
                    _ => Err(format!(
                        "format {tag} with {bits} bits a sample; callsim plays mu-law (7) or \
                         16-bit PCM (1)"
                    )),
                };
            }
            _ => {}
        }
        at += 8 + size + (size & 1); // chunks are padded to an even size
    }
    Err("no data chunk".into())
}

/// Writes 8 kHz mono mu-law as a WAV file any player opens.
pub fn write_wav(path: &Path, mulaw: &[u8]) -> std::io::Result<()> {
    let data_len = mulaw.len() as u32;
    let mut out = Vec::with_capacity(mulaw.len() + 58);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(4 + 26 + 12 + 8 + data_len + (data_len & 1)).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    // A non-PCM fmt chunk has an extension size (0) and a fact chunk with the sample count.
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&18u32.to_le_bytes());
    out.extend_from_slice(&WAVE_FORMAT_MULAW.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // channels
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // bytes a second
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes()); // bits a sample
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(b"fact");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(mulaw);
    if data_len & 1 == 1 {
        out.push(0);
    }
    std::fs::write(path, out)
}

/// `ms` milliseconds of a sine tone as mu-law, for the stand-in model's answers.
pub fn tone(hz: f64, ms: usize, amplitude: f64) -> Vec<u8> {
    (0..ms * 8)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let s = (2.0 * std::f64::consts::PI * hz * t).sin() * amplitude * f64::from(i16::MAX);
            mulaw_from_linear(s as i16)
        })
        .collect()
}

/// Whether 20 ms of mu-law sounds like speech to a simple energy detector (the stand-in model's
/// VAD): a mean magnitude above about -40 dBFS.
pub fn is_speech(mulaw: &[u8]) -> bool {
    if mulaw.is_empty() {
        return false;
    }
    let sum: u64 = mulaw
        .iter()
        .map(|&b| u64::from(linear_from_mulaw(b).unsigned_abs()))
        .sum();
    sum / mulaw.len() as u64 > 330
}

/// What one caller heard, on the call's own timeline: audio plays in order as it arrives,
/// silence fills the gaps, `clear` drops what had not played yet (as Twilio does).
pub struct Recording {
    origin: Instant,
    mulaw: Vec<u8>,
}

impl Recording {
    pub fn new(origin: Instant) -> Self {
        Recording {
            origin,
            mulaw: Vec::new(),
        }
    }

    /// The sample playing at `now`.
    fn position(&self, now: Instant) -> usize {
        (now.saturating_duration_since(self.origin).as_micros() * u128::from(SAMPLE_RATE)
            / 1_000_000) as usize
    }

    pub fn play(&mut self, now: Instant, audio: &[u8]) {
        let at = self.position(now);
        if self.mulaw.len() < at {
            self.mulaw.resize(at, SILENCE);
        }
        self.mulaw.extend_from_slice(audio);
    }

    pub fn clear(&mut self, now: Instant) {
        let at = self.position(now);
        self.mulaw.truncate(self.mulaw.len().min(at));
    }

    pub fn audio(&self) -> &[u8] {
        &self.mulaw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mu_law_matches_g711() {
        // Reference points of ITU-T G.711's mu-law table.
        assert_eq!(mulaw_from_linear(0), 0xff);
        assert_eq!(mulaw_from_linear(i16::MAX), 0x80);
        assert_eq!(mulaw_from_linear(i16::MIN), 0x00);
        assert_eq!(mulaw_from_linear(-1), 0x7f);
        assert_eq!(linear_from_mulaw(0xff), 0);
        assert_eq!(linear_from_mulaw(0x80), 32124);
        assert_eq!(linear_from_mulaw(0x00), -32124);
        // Every code decodes to a value that encodes back to it.
        for code in 0..=255u8 {
            let back = mulaw_from_linear(linear_from_mulaw(code));
            assert!(
                back == code || (code == 0x7f && back == 0xff),
                "{code:#x} -> {back:#x}"
            );
        }
    }

    #[test]
    fn a_written_wav_reads_back_and_pcm_is_converted() {
        let dir = std::env::temp_dir().join(format!("callsim-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let odd = tone(440.0, 1, 0.5)[..7].to_vec();
        let path = dir.join("heard.wav");
        write_wav(&path, &odd).unwrap();
        assert_eq!(read_wav(&path).unwrap(), odd);

        // 16-bit PCM, with an unknown chunk before the data.
        let samples: [i16; 3] = [0, 1000, -1000];
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        wav.extend_from_slice(&16u32.to_le_bytes());
        for v in [1u16, 1] {
            wav.extend_from_slice(&v.to_le_bytes());
        }
        wav.extend_from_slice(&8000u32.to_le_bytes());
        wav.extend_from_slice(&16000u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"LIST\x03\0\0\0abc\0data\x06\0\0\0");
        for s in samples {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        let expected: Vec<u8> = samples.iter().map(|&s| mulaw_from_linear(s)).collect();
        assert_eq!(parse_wav(&wav).unwrap(), expected);

        // 44.1 kHz is refused with the reason.
        wav[24..28].copy_from_slice(&44100u32.to_le_bytes());
        let err = parse_wav(&wav).unwrap_err();
        assert!(err.contains("44100 Hz"), "{err}");
        assert!(parse_wav(b"not a wav").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_recording_holds_what_played_and_when() {
        let t0 = Instant::now();
        let ms = std::time::Duration::from_millis;
        let mut r = Recording::new(t0);
        // 10 ms of silence, then 20 ms of audio; more audio arriving while it plays queues.
        r.play(t0 + ms(10), &[1; 160]);
        r.play(t0 + ms(15), &[2; 160]);
        assert_eq!(r.audio().len(), 80 + 320);
        assert!(r.audio()[..80].iter().all(|&b| b == SILENCE));
        assert_eq!((r.audio()[80], r.audio()[240]), (1, 2));
        // `clear` 25 ms in: what had not played is gone.
        r.clear(t0 + ms(25));
        assert_eq!(r.audio().len(), 200);
        // A clear after everything played changes nothing.
        r.clear(t0 + ms(100));
        assert_eq!(r.audio().len(), 200);
    }

    #[test]
    fn the_detector_hears_a_tone_and_not_silence() {
        assert!(is_speech(&tone(300.0, 20, 0.1)));
        assert!(!is_speech(&[SILENCE; 160]));
        assert!(!is_speech(&tone(300.0, 20, 0.005)));
    }
}
