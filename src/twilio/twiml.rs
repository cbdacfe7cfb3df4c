//! TwiML both ways: a small writer for the verbs this service answers with (every value
//! XML-escaped), and a reader that turns a `<Response>` into the verbs Twilio would run, for
//! `callsim` and the tests.

use std::fmt::Write;

/// One TwiML `<Response>` under construction.
#[derive(Debug, Default)]
pub struct TwimlResponse {
    body: String,
}

/// The `<Connect><Stream>` verb: where Twilio opens the bidirectional stream.
#[derive(Debug)]
pub struct StreamVerb<'a> {
    /// `wss://host/media-stream` (no query string: Twilio breaks or strips it).
    pub url: &'a str,
    /// Absolute URL Twilio POSTs stream-started / stream-stopped / stream-error events to.
    pub status_callback: Option<&'a str>,
    /// Per-call data; arrives in `start.customParameters`.
    pub parameters: &'a [(&'a str, &'a str)],
}

impl TwimlResponse {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn connect_stream(mut self, stream: &StreamVerb<'_>) -> Self {
        self.body.push_str("<Connect><Stream url=\"");
        escape_into(&mut self.body, stream.url);
        self.body.push('"');
        if let Some(cb) = stream.status_callback {
            self.body.push_str(" statusCallback=\"");
            escape_into(&mut self.body, cb);
            self.body.push_str("\" statusCallbackMethod=\"POST\"");
        }
        self.body.push('>');
        for (name, value) in stream.parameters {
            self.body.push_str("<Parameter name=\"");
            escape_into(&mut self.body, name);
            self.body.push_str("\" value=\"");
            escape_into(&mut self.body, value);
            self.body.push_str("\"/>");
        }
        self.body.push_str("</Stream></Connect>");
        self
    }

    pub fn redirect(mut self, url: &str) -> Self {
        self.body.push_str("<Redirect method=\"POST\">");
        escape_into(&mut self.body, url);
        self.body.push_str("</Redirect>");
        self
    }

    pub fn say(mut self, text: &str) -> Self {
        self.body.push_str("<Say>");
        escape_into(&mut self.body, text);
        self.body.push_str("</Say>");
        self
    }

    /// `<Dial>number</Dial>`: connects the caller to `number` (a transfer).
    /// `<Dial>` to a phone number (`<Number>`) or, for a `sip:` URI, a SIP endpoint (`<Sip>`).
    pub fn dial(mut self, to: &str) -> Self {
        let noun = if to.starts_with("sip:") {
            "Sip"
        } else {
            "Number"
        };
        self.body.push_str("<Dial><");
        self.body.push_str(noun);
        self.body.push('>');
        escape_into(&mut self.body, to);
        self.body.push_str("</");
        self.body.push_str(noun);
        self.body.push_str("></Dial>");
        self
    }

    pub fn hangup(mut self) -> Self {
        self.body.push_str("<Hangup/>");
        self
    }

    /// The finished document.
    pub fn build(self) -> String {
        let mut out = String::with_capacity(self.body.len() + 60);
        let _ = write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{}</Response>",
            self.body
        );
        out
    }
}

/// Escapes text for XML, for text and attribute values alike: the five special characters;
/// tab, newline and carriage return as character references (an XML parser turns them into
/// spaces in attribute values otherwise); and the characters XML 1.0 cannot carry at all (other
/// control characters, U+FFFE, U+FFFF) as U+FFFD, so a stray byte in a caller's data can never
/// make the whole document unreadable to Twilio.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// One verb of a `<Response>`, as Twilio runs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verb {
    /// `<Connect><Stream>`: open a bidirectional Media Stream; the next verb runs when it ends.
    ConnectStream(StreamTarget),
    /// `<Redirect>`: fetch new TwiML from `url` (relative URLs resolve against the current one).
    Redirect { url: String, method: String },
    /// `<Say>`: speak the text to the caller.
    Say(String),
    /// `<Pause length="N">`: wait N seconds (Twilio's default: 1).
    Pause(u32),
    /// `<Hangup/>`: end the call.
    Hangup,
    /// `<Reject reason="...">`: refuse the call (`rejected` unless `busy` is given).
    Reject { reason: String },
    /// Any verb a stream caller has no use for (`<Play>`, `<Gather>`, `<Connect><Room>`...).
    Other(String),
}

/// What `<Stream>` inside `<Connect>` names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamTarget {
    pub url: String,
    pub status_callback: Option<String>,
    /// The `<Parameter>`s, in document order; they arrive as `start.customParameters`.
    pub parameters: Vec<(String, String)>,
}

/// Why a TwiML document could not be run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TwimlError {
    #[error("not XML: {0}")]
    Xml(String),
    #[error("root element is <{0}>, not <Response>")]
    NotAResponse(String),
    #[error("<{verb}> without its {what}")]
    Missing {
        verb: &'static str,
        what: &'static str,
    },
}

/// Reads a TwiML document into its verbs, in order.
pub fn parse(xml: &str) -> Result<Vec<Verb>, TwimlError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| TwimlError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Response" {
        return Err(TwimlError::NotAResponse(root.tag_name().name().to_string()));
    }
    let text = |node: roxmltree::Node| node.text().unwrap_or("").trim().to_string();
    root.children()
        .filter(|n| n.is_element())
        .map(|verb| {
            Ok(match verb.tag_name().name() {
                "Connect" => match verb.children().find(|n| n.has_tag_name("Stream")) {
                    Some(stream) => Verb::ConnectStream(StreamTarget {
                        url: stream
                            .attribute("url")
                            .ok_or(TwimlError::Missing {
                                verb: "Stream",
                                what: "url attribute",
                            })?
                            .to_string(),
                        status_callback: stream.attribute("statusCallback").map(String::from),
                        parameters: stream
                            .children()
                            .filter(|n| n.has_tag_name("Parameter"))
                            .map(|p| {
                                (
                                    p.attribute("name").unwrap_or("").to_string(),
                                    p.attribute("value").unwrap_or("").to_string(),
                                )
                            })
                            .collect(),
                    }),
                    None => Verb::Other("Connect".into()),
                },
                "Redirect" => {
                    let url = text(verb);
                    if url.is_empty() {
                        return Err(TwimlError::Missing {
                            verb: "Redirect",
                            what: "URL",
                        });
                    }
                    Verb::Redirect {
                        url,
                        method: verb.attribute("method").unwrap_or("POST").to_uppercase(),
                    }
                }
                "Say" => Verb::Say(text(verb)),
                "Pause" => Verb::Pause(
                    verb.attribute("length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(1),
                ),
                "Hangup" => Verb::Hangup,
                "Reject" => Verb::Reject {
                    reason: verb.attribute("reason").unwrap_or("rejected").to_string(),
                },
                other => Verb::Other(other.to_string()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_then_redirect() {
        let xml = TwimlResponse::new()
            .connect_stream(&StreamVerb {
                url: "wss://h/media-stream",
                status_callback: None,
                parameters: &[("CallSid", "CA1"), ("attempt", "1")],
            })
            .redirect("https://h/incoming-call?attempt=2&x=1")
            .build();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://h/media-stream\">\
             <Parameter name=\"CallSid\" value=\"CA1\"/><Parameter name=\"attempt\" value=\"1\"/></Stream></Connect>\
             <Redirect method=\"POST\">https://h/incoming-call?attempt=2&amp;x=1</Redirect></Response>"
        );
    }

    #[test]
    fn escapes_text_and_attributes() {
        let xml = TwimlResponse::new()
            .connect_stream(&StreamVerb {
                url: "wss://h/m",
                status_callback: Some("https://h/s?a=1&b=\"2\""),
                parameters: &[("From", "<evil> & 'co'")],
            })
            .say("Tom & Jerry <3")
            .hangup()
            .build();
        assert!(xml.contains("value=\"&lt;evil&gt; &amp; &apos;co&apos;\""));
        // And a real XML parser reads the original values back.
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let param = doc
            .descendants()
            .find(|n| n.has_tag_name("Parameter"))
            .unwrap();
        assert_eq!(param.attribute("value"), Some("<evil> & 'co'"));
        let stream = doc
            .descendants()
            .find(|n| n.has_tag_name("Stream"))
            .unwrap();
        assert_eq!(
            stream.attribute("statusCallback"),
            Some("https://h/s?a=1&b=\"2\"")
        );
        let say = doc.descendants().find(|n| n.has_tag_name("Say")).unwrap();
        assert_eq!(say.text(), Some("Tom & Jerry <3"));
    }

    #[test]
    fn reads_back_what_the_writer_writes() {
        let xml = TwimlResponse::new()
            .connect_stream(&StreamVerb {
                url: "wss://h/media-stream",
                status_callback: Some("https://h/stream-status"),
                parameters: &[("CallSid", "CA1"), ("From", "<+1 & co>")],
            })
            .redirect("https://h/incoming-call?attempt=2&x=1")
            .say("All lines are busy.")
            .hangup()
            .build();
        assert_eq!(
            parse(&xml).unwrap(),
            vec![
                Verb::ConnectStream(StreamTarget {
                    url: "wss://h/media-stream".into(),
                    status_callback: Some("https://h/stream-status".into()),
                    parameters: vec![
                        ("CallSid".into(), "CA1".into()),
                        ("From".into(), "<+1 & co>".into()),
                    ],
                }),
                Verb::Redirect {
                    url: "https://h/incoming-call?attempt=2&x=1".into(),
                    method: "POST".into(),
                },
                Verb::Say("All lines are busy.".into()),
                Verb::Hangup,
            ]
        );
    }

    #[test]
    fn reads_verbs_other_servers_answer_with() {
        let xml = r#"<?xml version="1.0"?>
            <Response>
              <Pause length="2"/>
              <Say voice="alice">  Hello  </Say>
              <Redirect method="get">/next</Redirect>
              <Reject reason="busy"/>
              <Reject/>
              <Play>https://x/a.mp3</Play>
              <Connect><Room>r</Room></Connect>
            </Response>"#;
        assert_eq!(
            parse(xml).unwrap(),
            vec![
                Verb::Pause(2),
                Verb::Say("Hello".into()),
                Verb::Redirect {
                    url: "/next".into(),
                    method: "GET".into()
                },
                Verb::Reject {
                    reason: "busy".into()
                },
                Verb::Reject {
                    reason: "rejected".into()
                },
                Verb::Other("Play".into()),
                Verb::Other("Connect".into()),
            ]
        );
    }

    #[test]
    fn refuses_what_twilio_could_not_run() {
        assert!(matches!(parse("<Response>"), Err(TwimlError::Xml(_))));
        assert_eq!(
            parse("<Html/>"),
            Err(TwimlError::NotAResponse("Html".into()))
        );
        assert_eq!(
            parse("<Response><Connect><Stream/></Connect></Response>"),
            Err(TwimlError::Missing {
                verb: "Stream",
                what: "url attribute"
            })
        );
        assert_eq!(
            parse("<Response><Redirect> </Redirect></Response>"),
            Err(TwimlError::Missing {
                verb: "Redirect",
                what: "URL"
            })
        );
    }
}
