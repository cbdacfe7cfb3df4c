//! What a call does with its audio. The session drives a [`CallHandler`] with typed events; the
//! handler answers through an [`Outbox`], which can only build the three frames Twilio accepts
//! (`media`, `mark`, `clear`), always with the stream's own streamSid.

use base64::Engine;
use serde::Serialize;

use crate::metrics::MediaCounts;
use crate::twilio::messages::{ServerFrame, Start};

/// A handler gave up on its call; the session closes the stream with 1011.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// One inbound `media` frame, handed over both ways: the base64 text as Twilio sent it (so a
/// handler that forwards audio need not re-encode it) and the decoded mu-law bytes.
pub struct MediaChunk<'a> {
    pub payload_base64: &'a str,
    pub audio: &'a [u8],
}

/// The behaviour of one call. Every method but `on_media` has a do-nothing default.
pub trait CallHandler: 'static {
    fn on_start(&mut self, _start: &Start, _out: &mut Outbox<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    fn on_media(
        &mut self,
        media: &MediaChunk<'_>,
        out: &mut Outbox<'_>,
    ) -> Result<(), HandlerError>;
    fn on_dtmf(&mut self, _digit: &str, _out: &mut Outbox<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    /// Twilio played (or cleared) the audio sent before the mark called `name`.
    fn on_mark(&mut self, _name: &str, _out: &mut Outbox<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    fn on_stop(&mut self) {}
}

/// Builds a fresh handler for each admitted call.
pub type HandlerFactory = std::sync::Arc<dyn Fn() -> Box<dyn CallHandler> + Send + Sync>;

/// Outbound frames of one event, serialized and ready for the socket.
pub struct Outbox<'a> {
    stream_sid: &'a str,
    frames: &'a mut Vec<String>,
    counts: &'a mut MediaCounts,
}

impl<'a> Outbox<'a> {
    pub fn new(
        stream_sid: &'a str,
        frames: &'a mut Vec<String>,
        counts: &'a mut MediaCounts,
    ) -> Self {
        Outbox {
            stream_sid,
            frames,
            counts,
        }
    }

    /// Sends audio that is already base64 mu-law 8 kHz (passed through, not re-encoded).
    pub fn media_base64(&mut self, payload: &str) {
        self.counts.frames_out += 1;
        self.counts.bytes_out += decoded_len(payload);
        // The per-frame path of every echo: serde_json's string escaping cost ~2,700 CPU
        // instructions per frame (callgrind), a tenth of the server's user-space work. Text that
        // needs no escaping is copied as is; anything else takes the serde path.
        if needs_no_escaping(payload) && needs_no_escaping(self.stream_sid) {
            let mut json =
                String::with_capacity(MEDIA_JSON_ENVELOPE + self.stream_sid.len() + payload.len());
            json.push_str(r#"{"event":"media","streamSid":""#);
            json.push_str(self.stream_sid);
            json.push_str(r#"","media":{"payload":""#);
            json.push_str(payload);
            json.push_str(r#""}}"#);
            self.frames.push(json);
            return;
        }
        self.push(&ServerFrame::Media {
            stream_sid: self.stream_sid.into(),
            media: crate::twilio::messages::OutboundMedia {
                payload: payload.into(),
            },
        });
    }

    /// Sends raw mu-law 8 kHz audio, any length: Twilio buffers and plays it in order.
    pub fn media(&mut self, audio: &[u8]) {
        let payload = base64::engine::general_purpose::STANDARD.encode(audio);
        self.media_base64(&payload);
    }

    /// Asks Twilio to tell us (with a `mark` back) when the audio sent so far has played.
    pub fn mark(&mut self, name: &str) {
        self.push(&ServerFrame::Mark {
            stream_sid: self.stream_sid.into(),
            mark: crate::twilio::messages::Mark { name: name.into() },
        });
    }

    /// Drops the audio Twilio has buffered but not played yet (barge-in).
    pub fn clear(&mut self) {
        self.push(&ServerFrame::Clear {
            stream_sid: self.stream_sid.into(),
        });
    }

    fn push(&mut self, frame: &impl Serialize) {
        // ~60 bytes of envelope around the payload; one allocation per frame.
        let mut buf = Vec::with_capacity(96 + self.stream_sid.len() + 300);
        serde_json::to_writer(&mut buf, frame).expect("stream frames always serialize");
        self.frames
            .push(String::from_utf8(buf).expect("serde_json writes UTF-8"));
    }
}

/// Bytes of a media frame's JSON around the streamSid and the payload.
const MEDIA_JSON_ENVELOPE: usize = 55;

/// Whether `s` can sit between JSON quotes unchanged: no `"`, no `\`, no control character.
/// Branch-free over the bytes, so the compiler vectorizes it.
fn needs_no_escaping(s: &str) -> bool {
    !s.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// The byte length of base64 data once decoded (what the caller hears), without decoding it.
fn decoded_len(b64: &str) -> u64 {
    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(padding) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media_json(stream_sid: &str, payload: &str) -> String {
        let mut frames = Vec::new();
        let mut counts = MediaCounts::default();
        Outbox::new(stream_sid, &mut frames, &mut counts).media_base64(payload);
        assert_eq!(frames.len(), 1);
        frames.pop().unwrap()
    }

    #[test]
    fn media_json_is_what_serde_would_write() {
        let payload = "f39/fw+/AAA=";
        let serde = serde_json::to_string(&ServerFrame::Media {
            stream_sid: "MZ42".into(),
            media: crate::twilio::messages::OutboundMedia {
                payload: payload.into(),
            },
        })
        .unwrap();
        assert_eq!(media_json("MZ42", payload), serde);
    }

    #[test]
    fn text_that_needs_escaping_still_makes_valid_json() {
        for (sid, payload) in [("MZ\"1", "AAAA"), ("MZ1", "A\\\"A\n"), ("MZ\u{1}", "AAAA")] {
            let json = media_json(sid, payload);
            match ServerFrame::parse(&json).unwrap() {
                ServerFrame::Media { stream_sid, media } => {
                    assert_eq!(
                        (stream_sid.as_ref(), media.payload.as_ref()),
                        (sid, payload)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(needs_no_escaping("AZaz09+/="));
        assert!(!needs_no_escaping("a\"b"));
        assert!(!needs_no_escaping("a\\b"));
        assert!(!needs_no_escaping("a\tb"));
    }
}
