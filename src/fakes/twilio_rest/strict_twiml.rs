//! A strict reader of voice TwiML, for the fake's `Twiml` parameter: it accepts only what Twilio
//! documents and refuses the rest, the way Twilio refuses a document it cannot run.
//!
//! Written apart from `callvisor::twilio::twiml` on purpose: that module is the code under test,
//! and a fake that reads documents with the writer's own reader would agree with every mistake
//! the writer makes. This one knows nothing of callvisor; its rules come from Twilio's TwiML
//! reference for voice:
//!
//! - the root is `<Response>`, without attributes;
//! - under it only Twilio's voice verbs (`Connect`, `Dial`, `Echo`, `Enqueue`, `Gather`, `Hangup`,
//!   `Leave`, `Pause`, `Pay`, `Play`, `Record`, `Redirect`, `Refer`, `Reject`, `Say`, `Start`,
//!   `Stop`), each with only the nouns it takes (`Dial`: `Number`, `Sip`, `Client`, `Conference`,
//!   `Queue`, `Application`, `WhatsApp`; `Connect`: `Stream`, `Room`, `VirtualAgent`,
//!   `Conversation`, `ConversationRelay`; `Gather`: `Say`, `Play`, `Pause`; `Say`: SSML ...) and
//!   only the attributes documented for it (names are case-sensitive, as in Twilio);
//! - text only where a verb or noun takes it (a `Say`'s words, a `Dial`'s number, a
//!   `Redirect`'s URL), and present where it is required (`Redirect`, `Number`, `Sip`, ...);
//! - `Twiml` of at most [`MAX_TWIML_CHARS`] characters (Twilio's error 32018 beyond).
//!
//! Not modelled: attribute values (a `loop="x"` passes) and SSML in the `amazon:` namespace
//! (an undeclared prefix is not XML; Twilio's helpers write it without a declaration).

use std::fmt;

/// Twilio's limit on the `Twiml` parameter of a call update, in characters (error 32018, "Twiml
/// size exceeded maximum allowed value of 4000 characters").
pub const MAX_TWIML_CHARS: usize = 4000;

/// One verb or noun of a document, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    /// Its text and its descendants' text, in document order, whitespace runs collapsed: a
    /// `<Say>`'s words with its SSML tags dropped, a `<Dial>`'s number.
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why Twilio would refuse a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// More than [`MAX_TWIML_CHARS`] characters: Twilio's error 32018.
    TooLong { chars: usize },
    /// Not well-formed XML.
    NotXml(String),
    /// The root element is not `<Response>`.
    NotAResponse(String),
    /// An element Twilio does not know in this place (`parent` is where it was found).
    UnknownElement { name: String, parent: String },
    /// An attribute not documented for this verb or noun.
    UnknownAttribute { element: String, attribute: String },
    /// Text where the element takes none.
    UnexpectedText { element: String },
    /// A required attribute or text is missing.
    Missing { element: String, what: &'static str },
}

impl Refusal {
    /// Twilio's error code for it: 32018 for the length, 12100 ("Document parse failure") for
    /// everything else.
    pub fn code(&self) -> u32 {
        match self {
            Refusal::TooLong { .. } => 32018,
            _ => 12100,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLong { chars } => write!(
                f,
                "Twiml size exceeded maximum allowed value of {MAX_TWIML_CHARS} characters ({chars})"
            ),
            Refusal::NotXml(e) => write!(f, "Document parse failure: {e}"),
            Refusal::NotAResponse(root) => {
                write!(f, "Document parse failure: root <{root}> is not <Response>")
            }
            Refusal::UnknownElement { name, parent } => write!(
                f,
                "Document parse failure: <{name}> is not a verb or noun of <{parent}>"
            ),
            Refusal::UnknownAttribute { element, attribute } => write!(
                f,
                "Document parse failure: <{element}> has no attribute {attribute:?}"
            ),
            Refusal::UnexpectedText { element } => {
                write!(f, "Document parse failure: <{element}> takes no text")
            }
            Refusal::Missing { element, what } => {
                write!(f, "Document parse failure: <{element}> without its {what}")
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// Reads a `Twiml` parameter: the verbs under `<Response>`, in order, or why Twilio would refuse
/// it.
pub fn read(twiml: &str) -> Result<Vec<Node>, Refusal> {
    let chars = twiml.chars().count();
    if chars > MAX_TWIML_CHARS {
        return Err(Refusal::TooLong { chars });
    }
    let doc = roxmltree::Document::parse(twiml).map_err(|e| Refusal::NotXml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Response" || root.tag_name().namespace().is_some() {
        return Err(Refusal::NotAResponse(root.tag_name().name().into()));
    }
    if let Some(attribute) = root.attributes().next() {
        return Err(Refusal::UnknownAttribute {
            element: "Response".into(),
            attribute: attribute.name().into(),
        });
    }
    let mut verbs = Vec::new();
    for child in root.children() {
        if child.is_element() {
            verbs.push(read_element("Response", child)?);
        } else if child.is_text() && !child.text().unwrap_or("").trim().is_empty() {
            return Err(Refusal::UnexpectedText {
                element: "Response".into(),
            });
        }
    }
    Ok(verbs)
}

fn read_element(parent: &str, node: roxmltree::Node) -> Result<Node, Refusal> {
    let tag = node.tag_name();
    let name = tag.name();
    let unknown = || Refusal::UnknownElement {
        name: name.into(),
        parent: parent.into(),
    };
    if tag.namespace().is_some() {
        return Err(unknown());
    }
    let spec = spec(parent, name).ok_or_else(unknown)?;
    let mut attributes = Vec::new();
    for attribute in node.attributes() {
        let qualified = match attribute.namespace() {
            Some("http://www.w3.org/XML/1998/namespace") => format!("xml:{}", attribute.name()),
            Some(_) => format!("{{namespaced}}{}", attribute.name()),
            None => attribute.name().to_string(),
        };
        if !spec.attributes.contains(&qualified.as_str()) {
            return Err(Refusal::UnknownAttribute {
                element: name.into(),
                attribute: qualified,
            });
        }
        attributes.push((qualified, attribute.value().to_string()));
    }
    for required in spec.required {
        if node.attribute(*required).is_none() {
            return Err(Refusal::Missing {
                element: name.into(),
                what: required,
            });
        }
    }
    let mut children = Vec::new();
    let mut text = String::new();
    for child in node.children() {
        if child.is_element() {
            let read = read_element(name, child)?;
            if spec.ssml {
                push_words(&mut text, &read.text);
            }
            children.push(read);
        } else if child.is_text() {
            let words = child.text().unwrap_or("");
            if !words.trim().is_empty() && spec.text == Text::None {
                return Err(Refusal::UnexpectedText {
                    element: name.into(),
                });
            }
            push_words(&mut text, words);
        }
    }
    if spec.text == Text::Required && text.is_empty() {
        return Err(Refusal::Missing {
            element: name.into(),
            what: "text",
        });
    }
    Ok(Node {
        name: name.into(),
        attributes,
        text,
        children,
    })
}

/// Appends `words` with whitespace runs collapsed to one space, trimmed at both ends.
fn push_words(out: &mut String, words: &str) {
    for word in words.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    None,
    Allowed,
    Required,
}

/// What Twilio documents for one verb or noun in one place.
struct Spec {
    attributes: &'static [&'static str],
    required: &'static [&'static str],
    text: Text,
    /// Its children are SSML: their words are part of its text.
    ssml: bool,
}

const fn spec_of(attributes: &'static [&'static str], text: Text) -> Spec {
    Spec {
        attributes,
        required: &[],
        text,
        ssml: false,
    }
}

/// The verbs and nouns of voice TwiML, by where they may appear. Lists of attributes come from
/// Twilio's TwiML reference page of each verb.
fn spec(parent: &str, name: &str) -> Option<&'static Spec> {
    const NONE: Spec = spec_of(&[], Text::None);
    const SAY: Spec = Spec {
        attributes: &["voice", "language", "loop"],
        required: &[],
        text: Text::Allowed,
        ssml: true,
    };
    const PLAY: Spec = spec_of(&["loop", "digits"], Text::Allowed);
    const PAUSE: Spec = spec_of(&["length"], Text::None);
    const PARAMETER: Spec = Spec {
        attributes: &["name", "value"],
        required: &["name"],
        text: Text::None,
        ssml: false,
    };
    const DIAL: Spec = spec_of(
        &[
            "action",
            "answerOnBridge",
            "callerId",
            "callReason",
            "hangupOnStar",
            "method",
            "record",
            "recordingStatusCallback",
            "recordingStatusCallbackMethod",
            "recordingStatusCallbackEvent",
            "recordingTrack",
            "referUrl",
            "referMethod",
            "ringTone",
            "sequential",
            "timeLimit",
            "timeout",
            "trim",
        ],
        Text::Allowed,
    );
    const NUMBER: Spec = spec_of(
        &[
            "sendDigits",
            "url",
            "method",
            "statusCallbackEvent",
            "statusCallback",
            "statusCallbackMethod",
            "byoc",
            "machineDetection",
            "machineDetectionTimeout",
            "machineDetectionSpeechThreshold",
            "machineDetectionSpeechEndThreshold",
            "machineDetectionSilenceTimeout",
            "amdStatusCallback",
            "amdStatusCallbackMethod",
        ],
        Text::Required,
    );
    const SIP: Spec = spec_of(
        &[
            "username",
            "password",
            "url",
            "method",
            "statusCallbackEvent",
            "statusCallback",
            "statusCallbackMethod",
            "machineDetection",
            "machineDetectionTimeout",
            "machineDetectionSpeechThreshold",
            "machineDetectionSpeechEndThreshold",
            "machineDetectionSilenceTimeout",
            "amdStatusCallback",
            "amdStatusCallbackMethod",
        ],
        Text::Required,
    );
    const CLIENT: Spec = spec_of(
        &[
            "url",
            "method",
            "statusCallbackEvent",
            "statusCallback",
            "statusCallbackMethod",
        ],
        Text::Allowed,
    );
    const CONFERENCE: Spec = spec_of(
        &[
            "muted",
            "beep",
            "startConferenceOnEnter",
            "endConferenceOnExit",
            "waitUrl",
            "waitMethod",
            "maxParticipants",
            "record",
            "region",
            "coach",
            "trim",
            "participantLabel",
            "jitterBufferSize",
            "eventCallbackUrl",
            "statusCallbackEvent",
            "statusCallback",
            "statusCallbackMethod",
            "recordingStatusCallback",
            "recordingStatusCallbackMethod",
            "recordingStatusCallbackEvent",
        ],
        Text::Required,
    );
    const QUEUE: Spec = spec_of(
        &["url", "method", "reservationSid", "postWorkActivitySid"],
        Text::Required,
    );
    const APPLICATION: Spec = spec_of(
        &[
            "url",
            "method",
            "statusCallbackEvent",
            "statusCallback",
            "statusCallbackMethod",
            "customerId",
            "copyParentTo",
        ],
        Text::None,
    );
    const WHATSAPP: Spec = spec_of(
        &[
            "url",
            "method",
            "statusCallbackEvent",
            "statusCallback",
            "statusCallbackMethod",
        ],
        Text::Required,
    );
    const GATHER: Spec = spec_of(
        &[
            "action",
            "actionOnEmptyResult",
            "enhanced",
            "finishOnKey",
            "hints",
            "input",
            "language",
            "method",
            "numDigits",
            "partialResultCallback",
            "partialResultCallbackMethod",
            "profanityFilter",
            "speechModel",
            "speechTimeout",
            "timeout",
            "debug",
        ],
        Text::None,
    );
    const RECORD: Spec = spec_of(
        &[
            "action",
            "finishOnKey",
            "maxLength",
            "method",
            "playBeep",
            "recordingStatusCallback",
            "recordingStatusCallbackMethod",
            "recordingStatusCallbackEvent",
            "timeout",
            "transcribe",
            "transcribeCallback",
            "trim",
        ],
        Text::None,
    );
    const ACTION_METHOD: Spec = spec_of(&["action", "method"], Text::None);
    const CONNECT_STREAM: Spec = Spec {
        attributes: &[
            "url",
            "name",
            "track",
            "statusCallback",
            "statusCallbackMethod",
        ],
        required: &["url"],
        text: Text::None,
        ssml: false,
    };
    const SIPREC: Spec = spec_of(
        &[
            "name",
            "connectorName",
            "track",
            "statusCallback",
            "statusCallbackMethod",
        ],
        Text::None,
    );
    const TRANSCRIPTION: Spec = spec_of(
        &[
            "name",
            "track",
            "statusCallbackUrl",
            "statusCallbackMethod",
            "languageCode",
            "inboundTrackLabel",
            "outboundTrackLabel",
            "partialResults",
            "transcriptionEngine",
            "profanityFilter",
            "speechModel",
            "hints",
            "enableAutomaticPunctuation",
            "intelligenceService",
        ],
        Text::None,
    );
    const STOP_NOUN: Spec = spec_of(&["name"], Text::None);
    const ROOM: Spec = spec_of(&["participantIdentity"], Text::Required);
    const VIRTUAL_AGENT: Spec = spec_of(
        &[
            "connectorName",
            "language",
            "sentimentAnalysis",
            "statusCallback",
            "statusCallbackMethod",
        ],
        Text::None,
    );
    const CONVERSATION: Spec = spec_of(
        &[
            "serviceInstanceSid",
            "inboundAutocreation",
            "routingAssignmentTimeout",
            "inboundTimeout",
            "url",
            "method",
            "record",
            "trim",
            "recordingStatusCallback",
            "recordingStatusCallbackMethod",
            "recordingStatusCallbackEvent",
            "statusCallback",
            "statusCallbackMethod",
            "statusCallbackEvent",
        ],
        Text::None,
    );
    const CONVERSATION_RELAY: Spec = Spec {
        attributes: &[
            "url",
            "welcomeGreeting",
            "welcomeGreetingInterruptible",
            "language",
            "ttsLanguage",
            "ttsProvider",
            "voice",
            "transcriptionLanguage",
            "transcriptionProvider",
            "speechModel",
            "interruptible",
            "interruptSensitivity",
            "dtmfDetection",
            "reportInputDuringAgentSpeech",
            "preemptible",
            "hints",
            "debug",
            "elevenlabsTextNormalization",
            "intelligenceService",
        ],
        required: &["url"],
        text: Text::None,
        ssml: false,
    };
    const RELAY_LANGUAGE: Spec = spec_of(
        &[
            "code",
            "ttsProvider",
            "voice",
            "transcriptionProvider",
            "speechModel",
        ],
        Text::None,
    );
    const CONFIG: Spec = spec_of(&["name", "value"], Text::None);
    const ENQUEUE: Spec = spec_of(
        &[
            "action",
            "maxQueueSize",
            "method",
            "waitUrl",
            "waitUrlMethod",
            "workflowSid",
        ],
        Text::Allowed,
    );
    const TASK: Spec = spec_of(&["priority", "timeout"], Text::Required);
    const REDIRECT: Spec = spec_of(&["method"], Text::Required);
    const REJECT: Spec = spec_of(&["reason"], Text::None);
    const REFER_SIP: Spec = spec_of(&[], Text::Required);
    const TEXT_ONLY: Spec = spec_of(&[], Text::Required);
    const PAY: Spec = spec_of(
        &[
            "input",
            "action",
            "bankAccountType",
            "statusCallback",
            "statusCallbackMethod",
            "timeout",
            "maxAttempts",
            "securityCode",
            "postalCode",
            "minPostalCodeLength",
            "paymentConnector",
            "paymentMethod",
            "tokenType",
            "chargeAmount",
            "currency",
            "description",
            "validCardTypes",
            "language",
        ],
        Text::None,
    );
    const PROMPT: Spec = spec_of(
        &[
            "for",
            "errorType",
            "cardType",
            "attempt",
            "requireMatchingInputs",
        ],
        Text::None,
    );
    // SSML inside <Say> (Twilio's "SSML tags" table, Polly and Google voices).
    const fn ssml(attributes: &'static [&'static str], text: Text) -> Spec {
        Spec {
            attributes,
            required: &[],
            text,
            ssml: true,
        }
    }
    const BREAK: Spec = ssml(&["strength", "time"], Text::None);
    const EMPHASIS: Spec = ssml(&["level"], Text::Allowed);
    const LANG: Spec = ssml(&["xml:lang"], Text::Allowed);
    const PLAIN: Spec = ssml(&[], Text::Allowed);
    const PHONEME: Spec = ssml(&["alphabet", "ph"], Text::Allowed);
    const PROSODY: Spec = ssml(&["pitch", "rate", "volume"], Text::Allowed);
    const SAY_AS: Spec = ssml(&["interpret-as", "format"], Text::Allowed);
    const SUB: Spec = ssml(&["alias"], Text::Allowed);
    const W: Spec = ssml(&["role"], Text::Allowed);

    const SSML_PARENTS: [&str; 8] = [
        "Say", "emphasis", "lang", "p", "prosody", "s", "say-as", "w",
    ];
    let ssml_parent = SSML_PARENTS.contains(&parent);
    Some(match (parent, name) {
        ("Response", "Say") | ("Gather" | "Prompt", "Say") => &SAY,
        ("Response", "Play") | ("Gather" | "Prompt", "Play") => &PLAY,
        ("Response", "Pause") | ("Gather" | "Prompt", "Pause") => &PAUSE,
        ("Response", "Hangup" | "Leave" | "Echo") => &NONE,
        ("Response", "Redirect") => &REDIRECT,
        ("Response", "Reject") => &REJECT,
        ("Response", "Dial") => &DIAL,
        ("Response", "Gather") => &GATHER,
        ("Response", "Record") => &RECORD,
        ("Response", "Connect" | "Start" | "Refer") => &ACTION_METHOD,
        ("Response", "Stop") => &NONE,
        ("Response", "Enqueue") => &ENQUEUE,
        ("Response", "Pay") => &PAY,
        ("Dial", "Number") => &NUMBER,
        ("Dial", "Sip") => &SIP,
        ("Dial", "Client") => &CLIENT,
        ("Dial", "Conference") => &CONFERENCE,
        ("Dial", "Queue") => &QUEUE,
        ("Dial", "Application") => &APPLICATION,
        ("Dial", "WhatsApp") => &WHATSAPP,
        ("Client", "Identity") | ("Application", "ApplicationSid") => &TEXT_ONLY,
        ("Connect" | "Start", "Stream") => &CONNECT_STREAM,
        ("Connect", "Room") => &ROOM,
        ("Connect", "VirtualAgent") => &VIRTUAL_AGENT,
        ("Connect", "Conversation") => &CONVERSATION,
        ("Connect", "ConversationRelay") => &CONVERSATION_RELAY,
        ("ConversationRelay", "Language") => &RELAY_LANGUAGE,
        ("VirtualAgent", "Config") => &CONFIG,
        ("Start", "Siprec") => &SIPREC,
        ("Start", "Transcription") => &TRANSCRIPTION,
        ("Stop", "Stream" | "Siprec" | "Transcription") => &STOP_NOUN,
        ("Refer", "Sip") => &REFER_SIP,
        ("Enqueue", "Task") => &TASK,
        ("Pay", "Prompt") => &PROMPT,
        (
            "Client" | "Application" | "Stream" | "Siprec" | "Transcription" | "VirtualAgent"
            | "ConversationRelay" | "Pay",
            "Parameter",
        ) => &PARAMETER,
        (_, "break") if ssml_parent => &BREAK,
        (_, "emphasis") if ssml_parent => &EMPHASIS,
        (_, "lang") if ssml_parent => &LANG,
        (_, "p" | "s") if ssml_parent => &PLAIN,
        (_, "phoneme") if ssml_parent => &PHONEME,
        (_, "prosody") if ssml_parent => &PROSODY,
        (_, "say-as") if ssml_parent => &SAY_AS,
        (_, "sub") if ssml_parent => &SUB,
        (_, "w") if ssml_parent => &W,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::twiml::TwimlResponse;

    fn names(verbs: &[Node]) -> Vec<&str> {
        verbs.iter().map(|v| v.name.as_str()).collect()
    }

    // What callvisor's writer produces for each call update (rest.rs's forms) must pass.

    #[test]
    fn accepts_a_hang_up_as_callvisor_writes_it() {
        // rest.rs hangs up with Status=completed; its writer's <Hangup/> is the TwiML form.
        let doc = read(&TwimlResponse::new().hangup().build()).unwrap();
        assert_eq!(names(&doc), ["Hangup"]);
    }

    #[test]
    fn accepts_a_transfer_to_an_e164_number_as_callvisor_writes_it() {
        let doc = read(&TwimlResponse::new().dial("+14155550123").build()).unwrap();
        assert_eq!(names(&doc), ["Dial"]);
        assert_eq!(names(&doc[0].children), ["Number"]);
        assert_eq!(doc[0].children[0].text, "+14155550123");
    }

    #[test]
    fn accepts_a_transfer_to_a_sip_uri_as_callvisor_writes_it() {
        let to = "sip:agent@example.com;transport=tls?X-Case=1&X-Tier=2";
        let xml = TwimlResponse::new().dial(to).build();
        assert!(xml.contains("&amp;"), "{xml}");
        let doc = read(&xml).unwrap();
        assert_eq!(names(&doc[0].children), ["Sip"]);
        assert_eq!(doc[0].children[0].text, to);
    }

    #[test]
    fn accepts_say_and_hang_up_with_escaped_text_as_callvisor_writes_it() {
        let text = "Sorry & <goodbye> \"now\" 'ok'";
        let xml = TwimlResponse::new().say(text).hangup().build();
        let doc = read(&xml).unwrap();
        assert_eq!(names(&doc), ["Say", "Hangup"]);
        assert_eq!(doc[0].text, text);
    }

    #[test]
    fn accepts_the_webhook_answer_callvisor_writes() {
        use crate::twilio::twiml::StreamVerb;
        let xml = TwimlResponse::new()
            .connect_stream(&StreamVerb {
                url: "wss://h/media-stream",
                status_callback: Some("https://h/stream-status"),
                parameters: &[("From", "+1 & co")],
            })
            .redirect("https://h/incoming-call?attempt=2&x=1")
            .build();
        let doc = read(&xml).unwrap();
        assert_eq!(names(&doc), ["Connect", "Redirect"]);
        assert_eq!(doc[1].text, "https://h/incoming-call?attempt=2&x=1");
    }

    #[test]
    fn accepts_documented_verbs_nouns_attributes_and_ssml() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
            <Response>
              <Say voice="Polly.Joanna" language="en-US" loop="2">Hello <break time="1s"/>
                <prosody rate="slow">there</prosody></Say>
              <Play loop="1">https://x/a.mp3</Play>
              <Pause length="2"/>
              <Gather input="dtmf speech" numDigits="1" action="/g"><Say>Press 1</Say></Gather>
              <Dial callerId="+14155550100" timeout="20" record="record-from-answer">
                <Number sendDigits="1">+14155550123</Number>
                <Sip username="u" password="p">sip:a@b.example</Sip>
                <Client><Identity>alice</Identity><Parameter name="k" value="v"/></Client>
                <Conference beep="false">Room 1</Conference>
                <Queue url="/about">support</Queue>
              </Dial>
              <Enqueue waitUrl="/wait">support</Enqueue>
              <Start><Stream url="wss://s/x" track="both_tracks"/></Start>
              <Stop><Stream name="x"/></Stop>
              <Refer><Sip>sip:x@y.example</Sip></Refer>
              <Record maxLength="30" playBeep="true"/>
              <Redirect method="GET">https://x/next</Redirect>
              <Reject reason="busy"/>
              <Leave/>
              <Hangup/>
            </Response>"#;
        let doc = read(xml).unwrap();
        assert_eq!(doc[0].text, "Hello there");
        assert_eq!(doc[0].attribute("voice"), Some("Polly.Joanna"));
        assert_eq!(doc.len(), 14);
    }

    #[test]
    fn refuses_an_unknown_verb() {
        let refused = read("<Response><Speak>hi</Speak></Response>").unwrap_err();
        assert_eq!(
            refused,
            Refusal::UnknownElement {
                name: "Speak".into(),
                parent: "Response".into()
            }
        );
        assert_eq!(refused.code(), 12100);
        // Names are case-sensitive, and nouns belong to their verb.
        assert!(read("<Response><say>hi</say></Response>").is_err());
        assert!(read("<Response><Number>+14155550123</Number></Response>").is_err());
        assert!(read("<Response><Dial><Say>hi</Say></Dial></Response>").is_err());
    }

    #[test]
    fn refuses_an_unknown_attribute() {
        let refused = read(r#"<Response><Say volume="loud">hi</Say></Response>"#).unwrap_err();
        assert_eq!(
            refused,
            Refusal::UnknownAttribute {
                element: "Say".into(),
                attribute: "volume".into()
            }
        );
        assert_eq!(refused.code(), 12100);
        assert!(read(r#"<Response><Dial callerid="+1">+2</Dial></Response>"#).is_err());
        assert!(read(r#"<Response version="2"><Hangup/></Response>"#).is_err());
    }

    #[test]
    fn refuses_twiml_past_4000_characters_with_twilios_code() {
        let wrap = TwimlResponse::new().say("").build().len();
        let fits = TwimlResponse::new().say(&"a".repeat(4000 - wrap)).build();
        assert_eq!(fits.chars().count(), 4000);
        assert!(read(&fits).is_ok());
        let over = TwimlResponse::new().say(&"a".repeat(4001 - wrap)).build();
        let refused = read(&over).unwrap_err();
        assert_eq!(refused, Refusal::TooLong { chars: 4001 });
        assert_eq!(refused.code(), 32018);
        // Characters, not bytes: 4,000 two-byte characters still fit.
        let wide = TwimlResponse::new().say(&"é".repeat(4000 - wrap)).build();
        assert!(wide.len() > 4000 && read(&wide).is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_runnable_document() {
        assert!(matches!(read("<Response>"), Err(Refusal::NotXml(_))));
        assert!(matches!(read("hello"), Err(Refusal::NotXml(_))));
        assert_eq!(read("<Html/>"), Err(Refusal::NotAResponse("Html".into())));
        assert_eq!(
            read("<Response>hang up</Response>"),
            Err(Refusal::UnexpectedText {
                element: "Response".into()
            })
        );
        assert_eq!(
            read("<Response><Hangup>now</Hangup></Response>"),
            Err(Refusal::UnexpectedText {
                element: "Hangup".into()
            })
        );
        assert_eq!(
            read("<Response><Redirect> </Redirect></Response>"),
            Err(Refusal::Missing {
                element: "Redirect".into(),
                what: "text"
            })
        );
        assert_eq!(
            read("<Response><Connect><Stream/></Connect></Response>"),
            Err(Refusal::Missing {
                element: "Stream".into(),
                what: "url"
            })
        );
        assert!(read(r#"<Response xmlns="urn:x"><Hangup/></Response>"#).is_err());
    }

    // Whatever text callvisor's writer is given, what it writes Twilio can run, and the words
    // read back are the words written (XML 1.0 carries no control characters: the writer puts
    // U+FFFD for them; Twilio speaks whitespace runs as one).
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn accepts_any_text_the_writer_escapes(text in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::char::any(),
                proptest::sample::select(vec!['&', '<', '>', '"', '\'', '\t', '\n', '\r', '\0', '\u{FFFE}']),
            ],
            0..64,
        )) {
            let text: String = text.into_iter().collect();
            let doc = read(&TwimlResponse::new().say(&text).hangup().build())
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let representable: String = text
                .chars()
                .map(|c| match c {
                    '\t' | '\n' | '\r' => c,
                    c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
                    c => c,
                })
                .collect();
            let words = representable.split_whitespace().collect::<Vec<_>>().join(" ");
            proptest::prop_assert_eq!(names(&doc), ["Say", "Hangup"]);
            proptest::prop_assert_eq!(&doc[0].text, &words);
        }

        #[test]
        fn accepts_any_transfer_target_the_writer_writes(
            to in "\\+[1-9][0-9]{6,14}|sip:[a-z0-9._-]{1,12}@[a-z0-9.-]{1,20}(;[a-z]{1,8}=[a-z0-9]{1,8})?(\\?[A-Za-z-]{1,8}=[a-z0-9]{1,8}(&[A-Za-z-]{1,8}=[a-z0-9]{1,8})?)?",
        ) {
            let doc = read(&TwimlResponse::new().dial(&to).build())
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(names(&doc), ["Dial"]);
            proptest::prop_assert_eq!(&doc[0].children[0].text, &to);
        }
    }
}
