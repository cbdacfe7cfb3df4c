//! Property tests of the code that reads and writes what crosses the wire: Twilio's stream
//! frames, TwiML, and request signatures. proptest prints the failing case (shrunk) and saves
//! its seed in `proptest-regressions/`, so a failure replays.

#![forbid(unsafe_code)]

use base64::Engine;
use callvisor::twilio::messages::{
    Dtmf, Mark, Media, MediaFormat, Start, Stop, StreamEvent, TwilioFrame,
};
use callvisor::twilio::signature::{sign, url_variants, verify};
use callvisor::twilio::twiml::{self, StreamVerb, TwimlResponse, Verb};
use proptest::prelude::*;

/// Valid frames of every kind Twilio sends, as Twilio writes them.
fn valid_frames() -> impl Strategy<Value = String> {
    let sid = "[A-Za-z0-9]{1,40}";
    prop_oneof![
        Just(
            TwilioFrame::Connected {
                protocol: "Call",
                version: "1.0.0"
            }
            .to_json()
        ),
        (sid, sid, prop::collection::btree_map(".*", ".*", 0..4)).prop_map(|(s, c, params)| {
            let start = Start {
                account_sid: "AC1".into(),
                stream_sid: s.clone(),
                call_sid: c,
                tracks: vec!["inbound".into()],
                custom_parameters: params,
                media_format: MediaFormat::default(),
            };
            TwilioFrame::Start {
                sequence_number: "1".into(),
                stream_sid: &s,
                start: &start,
            }
            .to_json()
        }),
        (sid, prop::collection::vec(any::<u8>(), 0..400)).prop_map(|(s, audio)| {
            let payload = base64::engine::general_purpose::STANDARD.encode(audio);
            TwilioFrame::Media {
                sequence_number: "2".into(),
                stream_sid: &s,
                media: Media {
                    track: Some("inbound".into()),
                    chunk: Some("1".into()),
                    timestamp: Some("20".into()),
                    payload: payload.into(),
                },
            }
            .to_json()
        }),
        (sid, "[0-9*#]").prop_map(|(s, digit)| TwilioFrame::Dtmf {
            sequence_number: "3".into(),
            stream_sid: &s,
            dtmf: Dtmf { track: None, digit },
        }
        .to_json()),
        (sid, ".*").prop_map(|(s, name)| TwilioFrame::Mark {
            sequence_number: "4".into(),
            stream_sid: &s,
            mark: Mark { name },
        }
        .to_json()),
        sid.prop_map(|s| TwilioFrame::Stop {
            sequence_number: "5".into(),
            stream_sid: &s,
            stop: Stop::default(),
        }
        .to_json()),
    ]
}

/// A byte-level edit of a frame: what a corrupted or hostile sender produces.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, u8),
    Replace(usize, u8),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(frame: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = frame.as_bytes().to_vec();
    for edit in edits {
        let n = bytes.len().max(1);
        match *edit {
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % n);
            }
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Replace(i, b) if !bytes.is_empty() => bytes[i % n] = b,
            Edit::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

/// Text weighted towards what breaks XML: ASCII controls, the special characters, the two
/// non-characters; plus any Unicode at all.
fn xml_hostile_text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        3 => any::<char>(),
        3 => prop::char::range('\0', '\u{7f}'),
        2 => prop::sample::select(vec!['&', '<', '>', '"', '\'', '\t', '\n', '\r', '\u{FFFE}', '\u{FFFF}']),
    ];
    prop::collection::vec(c, 0..24).prop_map(|v| v.into_iter().collect())
}

/// What XML 1.0 can carry: the writer replaces anything else with U+FFFD.
fn xml_representable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in ".*") {
        let _ = StreamEvent::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        // The session only hands over valid UTF-8 (a text frame that is not is closed 1007).
        let _ = StreamEvent::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn parse_never_panics_on_mutated_valid_frames(frame in valid_frames(), edits in edits()) {
        let mutated = apply(&frame, &edits);
        if let Ok(text) = std::str::from_utf8(&mutated) {
            let _ = StreamEvent::parse(text);
        }
    }

    #[test]
    fn valid_frames_round_trip(
        sid in "[A-Za-z0-9]{1,40}",
        call in "CA[a-f0-9]{32}",
        params in prop::collection::btree_map(".*", ".*", 0..5),
        audio in prop::collection::vec(any::<u8>(), 0..400),
        digit in "[0-9*#]",
        mark in ".*",
    ) {
        let start = Start {
            account_sid: "AC1".into(),
            stream_sid: sid.clone(),
            call_sid: call,
            tracks: vec!["inbound".into(), "outbound".into()],
            custom_parameters: params,
            media_format: MediaFormat::default(),
        };
        let json = TwilioFrame::Start { sequence_number: "1".into(), stream_sid: &sid, start: &start }.to_json();
        prop_assert_eq!(StreamEvent::parse(&json).unwrap(), StreamEvent::Start(Box::new(start)));

        let payload = base64::engine::general_purpose::STANDARD.encode(&audio);
        let media = Media { track: Some("inbound".into()), chunk: Some("7".into()), timestamp: Some("140".into()), payload: payload.as_str().into() };
        let json = TwilioFrame::Media { sequence_number: "2".into(), stream_sid: &sid, media: media.clone() }.to_json();
        match StreamEvent::parse(&json).unwrap() {
            StreamEvent::Media(got) => {
                prop_assert_eq!(&got, &media);
                let decoded = base64::engine::general_purpose::STANDARD.decode(got.payload.as_bytes()).unwrap();
                prop_assert_eq!(decoded, audio);
            }
            other => prop_assert!(false, "{:?}", other),
        }

        let dtmf = Dtmf { track: Some("inbound_track".into()), digit };
        let json = TwilioFrame::Dtmf { sequence_number: "3".into(), stream_sid: &sid, dtmf: dtmf.clone() }.to_json();
        prop_assert_eq!(StreamEvent::parse(&json).unwrap(), StreamEvent::Dtmf(dtmf));

        let mark = Mark { name: mark };
        let json = TwilioFrame::Mark { sequence_number: "4".into(), stream_sid: &sid, mark: mark.clone() }.to_json();
        prop_assert_eq!(StreamEvent::parse(&json).unwrap(), StreamEvent::Mark(mark));
    }

    #[test]
    fn twiml_carries_any_parameter_text_back_unchanged(
        params in prop::collection::vec((xml_hostile_text(), xml_hostile_text()), 0..6),
        say in xml_hostile_text(),
        url_path in "[a-z/]{0,20}",
    ) {
        let url = format!("wss://calls.example.com/{url_path}");
        let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let xml = TwimlResponse::new()
            .connect_stream(&StreamVerb { url: &url, status_callback: None, parameters: &borrowed })
            .say(&say)
            .hangup()
            .build();
        let verbs = twiml::parse(&xml).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
        let expected: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (xml_representable(k), xml_representable(v)))
            .collect();
        match &verbs[..] {
            [Verb::ConnectStream(stream), Verb::Say(text), Verb::Hangup] => {
                prop_assert_eq!(&stream.url, &url);
                prop_assert_eq!(&stream.parameters, &expected);
                // The reader trims verb text (what Twilio speaks has no edges); parameters are
                // carried exactly.
                let spoken = xml_representable(&say);
                prop_assert_eq!(text.as_str(), spoken.trim());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// Any variant of a URL (default port added or removed) verifies a signature made on any
    /// other; a changed parameter or another path never does.
    #[test]
    fn signatures_hold_across_url_variants_and_break_on_any_change(
        secure in any::<bool>(),
        host in "[a-z]{1,12}\\.(com|io|app)",
        path in "(/[a-z0-9._-]{0,10}){0,3}",
        query in prop::option::of("[a-z]{1,5}=[a-z0-9]{0,5}"),
        params in prop::collection::vec(("[A-Za-z]{1,10}", ".{0,20}"), 0..6),
        token in "[a-f0-9]{32}",
    ) {
        let scheme = if secure { "https" } else { "http" };
        let url = format!("{scheme}://{host}{path}{}", query.map(|q| format!("?{q}")).unwrap_or_default());
        let params: Vec<(String, String)> = params;
        let variants = url_variants(&url);
        prop_assert!(variants.len() >= 2);
        for signed_on in &variants {
            let sig = sign(&token, signed_on, &params);
            for checked_on in &variants {
                prop_assert!(verify(&token, checked_on, &params, &sig), "{} vs {}", signed_on, checked_on);
            }
            let other_path = format!("{url}x");
            prop_assert!(!verify(&token, &other_path, &params, &sig));
            if let Some((name, value)) = params.first() {
                let mut tampered = params.clone();
                tampered[0] = (name.clone(), format!("{value}!"));
                prop_assert!(!verify(&token, &url, &tampered, &sig));
            }
        }
    }
}

/// Twilio's published vector (../shared/twilio-media-streams.md, token 12345): its signature
/// verifies on every variant of its URL, whichever way the port is written.
#[test]
fn the_published_vector_verifies_on_every_variant_of_its_url() {
    let params: Vec<(String, String)> = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Caller", "+14158675309"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for url in [
        "https://mycompany.com/myapp.php?foo=1&bar=2",
        "https://mycompany.com:443/myapp.php?foo=1&bar=2",
    ] {
        for variant in url_variants(url) {
            for sig in [
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
                "kvajT1Ptam85bY51eRf/AJRuM3w=",
            ] {
                assert!(verify("12345", &variant, &params, sig), "{variant} {sig}");
            }
        }
    }
}
