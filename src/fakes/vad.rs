//! The voice activity detector of the fake models' auto modes (callsim's `--realtime-model` and
//! `--live-model`): one state machine over the caller's audio, so that both stand-ins hear a
//! caller start and stop at the same moments. Whether a chunk is speech is the caller's to say
//! (callsim's energy detector).

/// What the detector heard in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Speech after silence: the caller started talking.
    Started,
    /// `silence_ms` of silence after speech: the caller's utterance ended.
    Stopped,
}

/// Speech, then silence: in speech or not, and how long the silence has lasted.
#[derive(Debug, Default)]
pub struct Vad {
    speaking: bool,
    silent_ms: u64,
}

impl Vad {
    /// Hears one chunk of mu-law at 8 kHz (callers pass 20 ms, 160 bytes, at a time).
    pub fn hear(
        &mut self,
        chunk: &[u8],
        is_speech: fn(&[u8]) -> bool,
        silence_ms: u64,
    ) -> Option<Heard> {
        let ms = chunk.len() as u64 / 8;
        if is_speech(chunk) {
            self.silent_ms = 0;
            if !self.speaking {
                self.speaking = true;
                return Some(Heard::Started);
            }
        } else if self.speaking {
            self.silent_ms += ms;
            if self.silent_ms >= silence_ms {
                self.speaking = false;
                return Some(Heard::Stopped);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loud(chunk: &[u8]) -> bool {
        chunk[0] == 1
    }

    #[test]
    fn speech_starts_at_once_and_stops_after_the_silence() {
        let mut vad = Vad::default();
        let (speech, silence) = ([1u8; 160], [0u8; 160]);
        assert_eq!(vad.hear(&silence, loud, 100), None);
        assert_eq!(vad.hear(&speech, loud, 100), Some(Heard::Started));
        assert_eq!(vad.hear(&speech, loud, 100), None);
        // 80 ms of silence, then speech again: one utterance still.
        for _ in 0..4 {
            assert_eq!(vad.hear(&silence, loud, 100), None);
        }
        assert_eq!(vad.hear(&speech, loud, 100), None);
        let heard: Vec<_> = (0..5).map(|_| vad.hear(&silence, loud, 100)).collect();
        assert_eq!(heard, [None, None, None, None, Some(Heard::Stopped)]);
        assert_eq!(vad.hear(&silence, loud, 100), None);
    }
}
