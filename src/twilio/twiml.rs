//! A small TwiML writer: only the verbs this service answers with, every value XML-escaped.

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

/// Escapes the five XML special characters, for text and attribute values alike.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
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
}
