//! The Media Streams WebSocket messages, both directions.
//!
//! Inbound frames (Twilio to us) are parsed in one pass into borrowed views: the per-frame path
//! allocates nothing for `media`, and unknown events and fields are skipped, since Twilio adds
//! fields without notice. The same types serialize, so `callsim` speaks exactly what the server
//! parses.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A frame Twilio sends on the stream, already checked for the fields each event needs.
#[derive(Debug, PartialEq)]
pub enum StreamEvent<'a> {
    Connected,
    Start(Box<Start>),
    Media(Media<'a>),
    Dtmf(Dtmf),
    Mark(Mark),
    Stop,
    /// An event this version does not know; ignored rather than treated as an error.
    Unknown,
}

/// Why a text frame could not be understood (closes the stream with 1007).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{event} event without its `{field}` field")]
    MissingField {
        event: &'static str,
        field: &'static str,
    },
}

/// The `start` body: who the call is and what the stream carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    #[serde(default)]
    pub account_sid: String,
    pub stream_sid: String,
    pub call_sid: String,
    #[serde(default)]
    pub tracks: Vec<String>,
    /// The `<Parameter>`s of the `<Stream>` verb, the only per-call data a stream carries.
    #[serde(default)]
    pub custom_parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub media_format: MediaFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

impl Default for MediaFormat {
    fn default() -> Self {
        MediaFormat {
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
        }
    }
}

/// One inbound audio chunk. `payload` is base64 mu-law, borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Media<'a> {
    #[serde(borrow, default)]
    pub track: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub chunk: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dtmf {
    #[serde(default)]
    pub track: Option<String>,
    pub digit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stop {
    #[serde(default)]
    pub account_sid: String,
    #[serde(default)]
    pub call_sid: String,
}

/// Every field any event may carry. A flat struct rather than a tagged enum: serde buffers
/// internally tagged enums into an intermediate tree, which would cost allocations per frame.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default)]
    start: Option<Start>,
    #[serde(borrow, default)]
    media: Option<Media<'a>>,
    #[serde(default)]
    dtmf: Option<Dtmf>,
    #[serde(default)]
    mark: Option<Mark>,
}

impl<'a> StreamEvent<'a> {
    /// Parses one text frame from Twilio.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        let envelope: Envelope<'a> =
            serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
        fn need<T>(
            v: Option<T>,
            event: &'static str,
            field: &'static str,
        ) -> Result<T, FrameError> {
            v.ok_or(FrameError::MissingField { event, field })
        }
        Ok(match envelope.event.as_ref() {
            "connected" => StreamEvent::Connected,
            "start" => StreamEvent::Start(Box::new(need(envelope.start, "start", "start")?)),
            "media" => StreamEvent::Media(need(envelope.media, "media", "media")?),
            "dtmf" => StreamEvent::Dtmf(need(envelope.dtmf, "dtmf", "dtmf")?),
            "mark" => StreamEvent::Mark(need(envelope.mark, "mark", "mark")?),
            "stop" => StreamEvent::Stop,
            _ => StreamEvent::Unknown,
        })
    }
}

/// What Twilio sends, written as Twilio writes it (used by `callsim` and the tests).
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TwilioFrame<'a> {
    Connected {
        protocol: &'a str,
        version: &'a str,
    },
    Start {
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        #[serde(rename = "streamSid")]
        stream_sid: &'a str,
        start: &'a Start,
    },
    Media {
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        #[serde(rename = "streamSid")]
        stream_sid: &'a str,
        media: Media<'a>,
    },
    Dtmf {
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        #[serde(rename = "streamSid")]
        stream_sid: &'a str,
        dtmf: Dtmf,
    },
    Mark {
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        #[serde(rename = "streamSid")]
        stream_sid: &'a str,
        mark: Mark,
    },
    Stop {
        #[serde(rename = "sequenceNumber")]
        sequence_number: String,
        #[serde(rename = "streamSid")]
        stream_sid: &'a str,
        stop: Stop,
    },
}

impl TwilioFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("stream frames always serialize")
    }
}

/// What we may send to Twilio: only these three events exist (anything else is Twilio error
/// 31924), so only these three can be built.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Media {
        #[serde(rename = "streamSid", borrow)]
        stream_sid: Cow<'a, str>,
        #[serde(borrow)]
        media: OutboundMedia<'a>,
    },
    Mark {
        #[serde(rename = "streamSid", borrow)]
        stream_sid: Cow<'a, str>,
        mark: Mark,
    },
    Clear {
        #[serde(rename = "streamSid", borrow)]
        stream_sid: Cow<'a, str>,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboundMedia<'a> {
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

impl<'a> ServerFrame<'a> {
    /// Parses a frame the server sent (used by `callsim` and the tests).
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("stream frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_event() {
        let start = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","streamSid":"MZ1",
            "callSid":"CA1","tracks":["inbound"],"customParameters":{"k":"v"},
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;
        match StreamEvent::parse(start).unwrap() {
            StreamEvent::Start(s) => {
                assert_eq!(s.call_sid, "CA1");
                assert_eq!(s.stream_sid, "MZ1");
                assert_eq!(s.custom_parameters["k"], "v");
                assert_eq!(s.media_format.sample_rate, 8000);
            }
            other => panic!("{other:?}"),
        }
        let media = r#"{"event":"media","sequenceNumber":"4","streamSid":"MZ1","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"AAEC"}}"#;
        match StreamEvent::parse(media).unwrap() {
            StreamEvent::Media(m) => {
                assert_eq!(m.payload, "AAEC");
                assert!(
                    matches!(m.payload, Cow::Borrowed(_)),
                    "payload must not be copied"
                );
            }
            other => panic!("{other:?}"),
        }
        let dtmf = r#"{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"1"}}"#;
        assert_eq!(
            StreamEvent::parse(dtmf).unwrap(),
            StreamEvent::Dtmf(Dtmf {
                track: Some("inbound_track".into()),
                digit: "1".into()
            })
        );
        let mark =
            r#"{"event":"mark","sequenceNumber":"6","streamSid":"MZ1","mark":{"name":"label"}}"#;
        assert_eq!(
            StreamEvent::parse(mark).unwrap(),
            StreamEvent::Mark(Mark {
                name: "label".into()
            })
        );
        let stop = r#"{"event":"stop","sequenceNumber":"7","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#;
        assert_eq!(StreamEvent::parse(stop).unwrap(), StreamEvent::Stop);
        let connected = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
        assert_eq!(
            StreamEvent::parse(connected).unwrap(),
            StreamEvent::Connected
        );
    }

    #[test]
    fn unknown_events_and_fields_are_ignored() {
        assert_eq!(
            StreamEvent::parse(r#"{"event":"hologram","x":1}"#).unwrap(),
            StreamEvent::Unknown
        );
        let media =
            r#"{"event":"media","new":{"a":[1,2]},"media":{"payload":"AA==","extra":true}}"#;
        assert!(matches!(
            StreamEvent::parse(media),
            Ok(StreamEvent::Media(_))
        ));
    }

    #[test]
    fn a_known_event_without_its_body_is_an_error() {
        assert_eq!(
            StreamEvent::parse(r#"{"event":"media","streamSid":"MZ1"}"#),
            Err(FrameError::MissingField {
                event: "media",
                field: "media"
            })
        );
        assert!(matches!(
            StreamEvent::parse(r#"{"event":"start","start":{"streamSid":"MZ1"}}"#),
            Err(FrameError::Json(_))
        ));
        assert!(matches!(
            StreamEvent::parse("not json"),
            Err(FrameError::Json(_))
        ));
        assert!(matches!(
            StreamEvent::parse(r#"{"no":"event"}"#),
            Err(FrameError::Json(_))
        ));
    }

    #[test]
    fn twilio_frames_round_trip_through_the_parser() {
        let start = Start {
            account_sid: "AC1".into(),
            stream_sid: "MZ9".into(),
            call_sid: "CA9".into(),
            tracks: vec!["inbound".into()],
            custom_parameters: [("From".to_string(), "+1".to_string())].into(),
            media_format: MediaFormat::default(),
        };
        let json = TwilioFrame::Start {
            sequence_number: "1".into(),
            stream_sid: "MZ9",
            start: &start,
        }
        .to_json();
        assert_eq!(
            StreamEvent::parse(&json).unwrap(),
            StreamEvent::Start(Box::new(start))
        );
    }

    #[test]
    fn server_frames_have_twilios_shape() {
        let f = ServerFrame::Clear {
            stream_sid: "MZ1".into(),
        };
        assert_eq!(f.to_json(), r#"{"event":"clear","streamSid":"MZ1"}"#);
        let m = ServerFrame::Media {
            stream_sid: "MZ1".into(),
            media: OutboundMedia {
                payload: "AA==".into(),
            },
        };
        assert_eq!(
            m.to_json(),
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"AA=="}}"#
        );
        assert_eq!(ServerFrame::parse(&m.to_json()).unwrap(), m);
    }
}
