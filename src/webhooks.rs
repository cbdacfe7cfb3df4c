//! Standard Webhooks signatures (standardwebhooks.com) on the requests callvisor sends to the
//! business: per-call configuration, tools, call records.
//!
//! Every such request carries three headers:
//!
//! ```text
//! webhook-id:        msg_2KWPBgLlAfxdpx2AI54pPJ85f4W   unique per message, the same on a retry
//! webhook-timestamp: 1674087231                        Unix seconds of this attempt
//! webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=
//!                    v1, + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
//! ```
//!
//! The key is the base64-decoded part of `WEBHOOK_SECRET` after its `whsec_` prefix, so a
//! receiver verifies with the official `standardwebhooks` libraries (Python, Node, Go, Rust, ...)
//! given the same secret. [`WebhookSecret::verify`] is the receiving side, for tests and for
//! anyone who needs it: several space-separated signatures (secret rotation), a 5-minute
//! tolerance on the timestamp, constant-time comparison.
//!
//! ```
//! use callvisor::webhooks::WebhookSecret;
//! let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
//! let body = r#"{"tool":"lookup_order"}"#;
//! let signed = secret.headers("call_8bX2", body, 1_700_000_000).unwrap();
//! assert!(signed.signature.starts_with("v1,"));
//! // On the wire: `signed.apply(client.post(url)).send_body(body.to_owned())`.
//! let (id, ts, sig) = (&signed.id, signed.timestamp.to_string(), &signed.signature);
//! assert!(secret.verify(id, &ts, sig, body.as_bytes(), 1_700_000_010).is_ok());
//! ```

use std::fmt;
use std::str::FromStr;

use actix_web::http::header::HeaderMap;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The header that names the message: unique per message, the same on every retry of it.
pub const HEADER_ID: &str = "webhook-id";
/// The header that carries the attempt's time, integer Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The header that carries the signature(s), `v1,<base64>`, space-separated.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// What a secret's text starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// The spec's minimum key length (192 bits): "Random. At least 24 bytes".
pub const MIN_KEY_BYTES: usize = 24;
/// How far a timestamp may be from the verifier's clock, either way (the official libraries'
/// value).
pub const TOLERANCE_SECS: u64 = 5 * 60;
/// The longest `webhook-id` [`WebhookSecret::headers`] accepts.
pub const MAX_ID_BYTES: usize = 256;

/// The symmetric signature scheme's version tag.
const VERSION: &str = "v1";

/// Standard base64 that takes its input padded or not (the official Python library accepts an
/// unpadded secret too).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The signing key, `whsec_<base64>` decoded. Held as a secret: wiped on drop, and its `Debug`
/// never shows it. Cheap enough to clone per call (the key is at most a few dozen bytes).
#[derive(Clone)]
pub struct WebhookSecret {
    key: SecretSlice<u8>,
}

/// Why a `whsec_` secret was refused. The messages never quote the secret, not even the one bad
/// character: only its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "webhook secret does not start with `whsec_` \
         (expected whsec_<base64 of at least {MIN_KEY_BYTES} random bytes>)"
    )]
    MissingPrefix,
    #[error(
        "webhook secret: the part after `whsec_` is not base64 ({0}; expected the standard \
         alphabet A-Z a-z 0-9 + /, `=` padding optional, no spaces or newlines)"
    )]
    BadBase64(String),
    #[error("webhook secret is empty after `whsec_` (expected whsec_<base64 key>)")]
    Empty,
    #[error(
        "webhook secret decodes to {0} bytes; Standard Webhooks requires at least \
         {MIN_KEY_BYTES} random bytes"
    )]
    TooShort(usize),
}

/// Why a `webhook-id` was refused for signing. The spec asks that ids never contain `.` (the
/// separator of the signed content); they also travel as an HTTP header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("webhook-id is empty")]
    Empty,
    #[error("webhook-id is {0} bytes, at most {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error(
        "webhook-id has a forbidden character at byte {0} \
         (allowed: printable ASCII except space and `.`)"
    )]
    BadChar(usize),
}

/// Why a received message failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is not ASCII")]
    BadHeader(&'static str),
    #[error("webhook-timestamp is not integer Unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes in the past")]
    TooOld,
    #[error("webhook-timestamp is more than 5 minutes in the future")]
    TooNew,
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

/// The three headers of one signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`, Unix seconds.
    pub timestamp: u64,
    /// `webhook-signature`: `v1,<base64>`.
    pub signature: String,
}

impl WebhookHeaders {
    /// The headers as (name, value) pairs, in the spec's order.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_ID, self.id.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }

    /// Sets the three headers on an outgoing request (replacing any of the same name).
    pub fn apply(&self, mut request: awc::ClientRequest) -> awc::ClientRequest {
        for pair in self.pairs() {
            request = request.insert_header(pair);
        }
        request
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`: the prefix is required, the base64 is standard (padding
    /// optional), the key at least [`MIN_KEY_BYTES`] bytes.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key: SecretSlice<u8> = LENIENT
            .decode(encoded)
            .map_err(|e| SecretError::BadBase64(describe(&e)))?
            .into();
        match key.expose_secret().len() {
            0 => Err(SecretError::Empty),
            n if n < MIN_KEY_BYTES => Err(SecretError::TooShort(n)),
            _ => Ok(WebhookSecret { key }),
        }
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(self.key.expose_secret()).expect("HMAC takes any key");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// `v1,` + base64 of HMAC-SHA256 over `"{id}.{timestamp}.{body}"`: the `webhook-signature`
    /// value. The primitive: [`WebhookSecret::headers`] also checks the id.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        format!(
            "{VERSION},{}",
            STANDARD.encode(self.mac(id, timestamp, body))
        )
    }

    /// The three headers for a request with this `id` and `body` sent at `timestamp` (Unix
    /// seconds; `crate::twilio::signature::unix_now()` for now). The body is `&str` because the
    /// official libraries verify UTF-8 text; send exactly these bytes.
    pub fn headers(&self, id: &str, body: &str, timestamp: u64) -> Result<WebhookHeaders, IdError> {
        check_id(id)?;
        Ok(WebhookHeaders {
            id: id.to_owned(),
            timestamp,
            signature: self.sign(id, timestamp, body.as_bytes()),
        })
    }

    /// Verifies a received message at time `now` (Unix seconds): `timestamp` within
    /// [`TOLERANCE_SECS`] of `now`, and at least one `v1,` entry of the space-separated
    /// `signatures` equal (in constant time) to ours. Other versions (`v1a`, ...) are skipped.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), VerifyError> {
        if id.is_empty() {
            return Err(VerifyError::MissingHeader(HEADER_ID));
        }
        if timestamp.is_empty() {
            return Err(VerifyError::MissingHeader(HEADER_TIMESTAMP));
        }
        if signatures.is_empty() {
            return Err(VerifyError::MissingHeader(HEADER_SIGNATURE));
        }
        if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::BadTimestamp);
        }
        let ts: u64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
        if now.abs_diff(ts) > TOLERANCE_SECS {
            return Err(if ts < now {
                VerifyError::TooOld
            } else {
                VerifyError::TooNew
            });
        }
        let expected = self.mac(id, ts, body);
        let mut matched = subtle::Choice::from(0);
        for entry in signatures.split(' ') {
            let Some((VERSION, encoded)) = entry.split_once(',') else {
                continue;
            };
            let Ok(given) = LENIENT.decode(encoded) else {
                continue;
            };
            // No early exit: every candidate costs the same whichever matches.
            if given.len() == expected.len() {
                matched |= given.ct_eq(&expected);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::NoMatch)
        }
    }

    /// [`WebhookSecret::verify`] reading the three headers from a request (actix-web's, or
    /// awc's: the same type).
    pub fn verify_headers(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<(), VerifyError> {
        let get = |name: &'static str| -> Result<&str, VerifyError> {
            headers
                .get(name)
                .ok_or(VerifyError::MissingHeader(name))?
                .to_str()
                .map_err(|_| VerifyError::BadHeader(name))
        };
        self.verify(
            get(HEADER_ID)?,
            get(HEADER_TIMESTAMP)?,
            get(HEADER_SIGNATURE)?,
            body,
            now,
        )
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, SecretError> {
        WebhookSecret::parse(text)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// Checks an id for [`WebhookSecret::headers`]: 1 to [`MAX_ID_BYTES`] bytes of printable ASCII,
/// no space, no `.`.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(id.len()));
    }
    match id.bytes().position(|b| !b.is_ascii_graphic() || b == b'.') {
        Some(i) => Err(IdError::BadChar(i)),
        None => Ok(()),
    }
}

/// A base64 error without the offending character (it would be a character of the secret).
fn describe(e: &base64::DecodeError) -> String {
    match e {
        base64::DecodeError::InvalidByte(at, _) => format!("invalid character at offset {at}"),
        base64::DecodeError::InvalidLength(len) => format!("{len} symbols is not a valid length"),
        base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("invalid last symbol at offset {at}")
        }
        base64::DecodeError::InvalidPadding => "invalid padding".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The official libraries' test vector (standard-webhooks/standard-webhooks,
    // libraries/python/tests/test_webhooks.py `test_sign_function` and
    // libraries/javascript/src/webhook.test.ts "sign function works").
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: u64 = 1614265330;
    const PAYLOAD: &str = r#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> WebhookSecret {
        SECRET.parse().unwrap()
    }

    #[test]
    fn signs_the_published_vector_of_the_python_and_javascript_libraries() {
        assert_eq!(
            secret().sign(MSG_ID, TIMESTAMP, PAYLOAD.as_bytes()),
            EXPECTED
        );
        let h = secret().headers(MSG_ID, PAYLOAD, TIMESTAMP).unwrap();
        assert_eq!(
            h.pairs(),
            [
                ("webhook-id", MSG_ID.to_owned()),
                ("webhook-timestamp", "1614265330".to_owned()),
                ("webhook-signature", EXPECTED.to_owned()),
            ]
        );
    }

    #[test]
    fn signs_the_published_vector_of_the_rust_library() {
        // libraries/rust/src/lib.rs `test_sign`.
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn verifies_the_vector_within_five_minutes_either_way() {
        let s = secret();
        let ts = TIMESTAMP.to_string();
        let body = PAYLOAD.as_bytes();
        for now in [TIMESTAMP, TIMESTAMP - 300, TIMESTAMP + 300] {
            assert_eq!(s.verify(MSG_ID, &ts, EXPECTED, body, now), Ok(()));
        }
        // The timestamp 301 s after the verifier's clock is too new, 301 s before too old.
        assert_eq!(
            s.verify(MSG_ID, &ts, EXPECTED, body, TIMESTAMP - 301),
            Err(VerifyError::TooNew)
        );
        assert_eq!(
            s.verify(MSG_ID, &ts, EXPECTED, body, TIMESTAMP + 301),
            Err(VerifyError::TooOld)
        );
        for bad in [
            "hello",
            "-1",
            "1614265330.5",
            " 1614265330",
            "99999999999999999999",
        ] {
            assert_eq!(
                s.verify(MSG_ID, bad, EXPECTED, body, TIMESTAMP),
                Err(VerifyError::BadTimestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_any_change_to_body_id_timestamp_or_secret() {
        let s = secret();
        let ts = TIMESTAMP.to_string();
        let ok = |id: &str, ts: &str, sig: &str, body: &str| {
            s.verify(id, ts, sig, body.as_bytes(), TIMESTAMP)
        };
        let no = Err(VerifyError::NoMatch);
        assert_eq!(ok(MSG_ID, &ts, EXPECTED, r#"{"test": 2432232315}"#), no);
        assert_eq!(ok(MSG_ID, &ts, EXPECTED, r#"{"test":2432232314}"#), no);
        assert_eq!(
            ok("msg_p5jXN8AQM9LWM0D4loKWxJeK", &ts, EXPECTED, PAYLOAD),
            no
        );
        assert_eq!(ok(MSG_ID, "1614265331", EXPECTED, PAYLOAD), no);
        let other = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            other.verify(MSG_ID, &ts, EXPECTED, PAYLOAD.as_bytes(), TIMESTAMP),
            no
        );
        // The Python library's `test_invalid_signature_raises_error`: the last symbol changed.
        assert_eq!(
            ok(
                MSG_ID,
                &ts,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
                PAYLOAD
            ),
            no
        );
        // Partial signatures (the JavaScript library's "partial signature throws error").
        for partial in [
            &EXPECTED[..8],
            "v1,",
            "v1",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(ok(MSG_ID, &ts, partial, PAYLOAD), no, "{partial}");
        }
        // The right MAC under another version tag is no v1 signature.
        let v2 = EXPECTED.replacen("v1,", "v2,", 1);
        assert_eq!(ok(MSG_ID, &ts, &v2, PAYLOAD), no);
    }

    #[test]
    fn accepts_any_of_several_space_separated_signatures() {
        // The official libraries' "multi sig payload is valid".
        let s = secret();
        let ts = TIMESTAMP.to_string();
        let others = [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
            "garbage",
            "v1,!!!",
        ];
        for at in 0..=others.len() {
            let mut sigs: Vec<&str> = others.to_vec();
            sigs.insert(at, EXPECTED);
            let header = sigs.join(" ");
            assert_eq!(
                s.verify(MSG_ID, &ts, &header, PAYLOAD.as_bytes(), TIMESTAMP),
                Ok(()),
                "{header}"
            );
        }
        assert_eq!(
            s.verify(
                MSG_ID,
                &ts,
                &others.join(" "),
                PAYLOAD.as_bytes(),
                TIMESTAMP
            ),
            Err(VerifyError::NoMatch)
        );
        // Unpadded base64 of the right MAC is the same signature.
        let unpadded = EXPECTED.trim_end_matches('=');
        assert_eq!(
            s.verify(MSG_ID, &ts, unpadded, PAYLOAD.as_bytes(), TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn verifies_from_request_headers_and_names_a_missing_one() {
        use actix_web::http::header::{HeaderName, HeaderValue};
        let signed = secret().headers(MSG_ID, PAYLOAD, TIMESTAMP).unwrap();
        let full = || {
            let mut map = HeaderMap::new();
            for (name, value) in signed.pairs() {
                map.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value).unwrap(),
                );
            }
            map
        };
        let body = PAYLOAD.as_bytes();
        assert_eq!(secret().verify_headers(&full(), body, TIMESTAMP), Ok(()));
        for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut map = full();
            map.remove(name);
            assert_eq!(
                secret().verify_headers(&map, body, TIMESTAMP),
                Err(VerifyError::MissingHeader(name))
            );
            let mut map = full();
            map.insert(HeaderName::from_static(name), HeaderValue::from_static(""));
            assert_eq!(
                secret().verify_headers(&map, body, TIMESTAMP),
                Err(VerifyError::MissingHeader(name))
            );
        }
        let mut map = full();
        map.insert(
            HeaderName::from_static(HEADER_ID),
            HeaderValue::from_bytes(b"msg_\xff").unwrap(),
        );
        assert_eq!(
            secret().verify_headers(&map, body, TIMESTAMP),
            Err(VerifyError::BadHeader(HEADER_ID))
        );
    }

    #[actix_web::test]
    async fn sets_the_three_headers_on_an_awc_request() {
        let signed = secret().headers(MSG_ID, PAYLOAD, TIMESTAMP).unwrap();
        let request = signed.apply(
            awc::Client::default()
                .post("http://127.0.0.1:1/tool")
                .insert_header((HEADER_ID, "stale")),
        );
        let headers = request.headers();
        assert_eq!(headers.get_all(HEADER_ID).count(), 1, "replaced, not added");
        assert_eq!(headers.get(HEADER_ID).unwrap(), MSG_ID);
        assert_eq!(headers.get(HEADER_TIMESTAMP).unwrap(), "1614265330");
        assert_eq!(headers.get(HEADER_SIGNATURE).unwrap(), EXPECTED);
        assert_eq!(
            secret().verify_headers(headers, PAYLOAD.as_bytes(), TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn refuses_ids_a_receiver_could_misread() {
        let s = secret();
        assert_eq!(s.headers("", "{}", 1).unwrap_err(), IdError::Empty);
        assert_eq!(
            s.headers("msg.1", "{}", 1).unwrap_err(),
            IdError::BadChar(3)
        );
        assert_eq!(
            s.headers("msg 1", "{}", 1).unwrap_err(),
            IdError::BadChar(3)
        );
        assert_eq!(
            s.headers("msg\n1", "{}", 1).unwrap_err(),
            IdError::BadChar(3)
        );
        assert_eq!(s.headers("msgé", "{}", 1).unwrap_err(), IdError::BadChar(3));
        let long = "a".repeat(MAX_ID_BYTES + 1);
        assert_eq!(
            s.headers(&long, "{}", 1).unwrap_err(),
            IdError::TooLong(MAX_ID_BYTES + 1)
        );
        for id in [
            "call_DdUAYuBj1QRVH4Pu",
            "a",
            "msg_2KWP-x:y/z_~",
            &"a".repeat(MAX_ID_BYTES),
        ] {
            assert!(s.headers(id, "{}", 1).is_ok(), "{id}");
        }
    }

    #[test]
    fn secret_errors_say_what_is_wrong_and_never_quote_the_key() {
        // No prefix: the official libraries take bare base64 too, callvisor asks for the format.
        let e = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err();
        assert_eq!(e, SecretError::MissingPrefix);
        assert!(
            e.to_string().contains("does not start with `whsec_`"),
            "{e}"
        );
        assert_eq!(
            WebhookSecret::parse("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::MissingPrefix
        );

        let e = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjU#D8ILPZIo2LaLaSw").unwrap_err();
        assert_eq!(
            e,
            SecretError::BadBase64("invalid character at offset 16".to_owned())
        );
        let text = e.to_string();
        assert!(text.contains("not base64"), "{text}");
        assert!(!text.contains('#') && !text.contains("MfKQ"), "{text}");
        for bad in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
            "whsec_ MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", // 31 symbols
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw=", // a stray `=`
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa-_", // the URL-safe alphabet
        ] {
            let e = WebhookSecret::parse(bad).unwrap_err();
            assert!(matches!(e, SecretError::BadBase64(_)), "{bad:?}: {e}");
        }

        assert_eq!(
            WebhookSecret::parse("whsec_").unwrap_err(),
            SecretError::Empty
        );
        assert!(WebhookSecret::parse("whsec_")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        // Padding alone is no base64 at all.
        assert!(matches!(
            WebhookSecret::parse("whsec_==").unwrap_err(),
            SecretError::BadBase64(_)
        ));

        let sixteen = format!("whsec_{}", STANDARD.encode([7u8; 16]));
        let e = WebhookSecret::parse(&sixteen).unwrap_err();
        assert_eq!(e, SecretError::TooShort(16));
        assert!(e.to_string().contains("at least 24"), "{e}");
    }

    #[test]
    fn takes_padded_and_unpadded_base64_alike() {
        let key = [0x5au8; 32]; // 32 bytes: base64 ends in `=`
        let padded = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode(key))).unwrap();
        let unpadded = WebhookSecret::parse(&format!(
            "whsec_{}",
            STANDARD.encode(key).trim_end_matches('=')
        ))
        .unwrap();
        assert_eq!(padded.sign("m", 1, b""), unpadded.sign("m", 1, b""));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = secret();
        let shown = format!("{s:?} {:?}", Some(s.clone()));
        assert_eq!(
            shown,
            "WebhookSecret([REDACTED]) Some(WebhookSecret([REDACTED]))"
        );
    }

    /// Signed samples for the official Python library (scripts/webhook_conformance.py): random
    /// secrets, ids and bodies (unicode, empty, large, dots and newlines), each signed now and
    /// checked here by our own verifier. With `CALLVISOR_WEBHOOK_SAMPLES=FILE` they are written
    /// to FILE as JSON lines `{"secret", "body", "headers"}`; `CALLVISOR_WEBHOOK_SEED` replays a
    /// run.
    #[test]
    fn samples_for_the_official_library() {
        use rand::{Rng, SeedableRng};

        let seed = std::env::var("CALLVISOR_WEBHOOK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        println!("CALLVISOR_WEBHOOK_SEED={seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let now = crate::twilio::signature::unix_now();

        const ID_CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-:/~+=!@";
        let fixed_bodies = [
            String::new(),
            PAYLOAD.to_owned(),
            serde_json::json!({
                "call_sid": "CA5d1b2f0e8a7c6b5a4f3e2d1c0b9a8f7e",
                "agent": "support",
                "tool": "lookup_order",
                "call_id": "call_DdUAYuBj1QRVH4Pu",
                "arguments": {"order_number": "A-1042", "note": "Grüße aus Köln ☎️ 日本語 مرحبا"},
            })
            .to_string(),
            "é e\u{301} 🇫🇷 👩‍👩‍👧 \u{2028}\u{2029} \u{feff}\u{0}".to_owned(),
            "a.b.c\n.\r\n..\t \"quoted\" \\ {not json".to_owned(),
            "1614265330.{\"test\": 1}".to_owned(),
            "💬".repeat(5000),
        ];

        let mut lines = String::new();
        for n in 0..256 {
            let key_len = rng.random_range(MIN_KEY_BYTES..=64);
            let key: Vec<u8> = (0..key_len).map(|_| rng.random()).collect();
            let mut encoded = STANDARD.encode(&key);
            if n % 5 == 0 {
                encoded.truncate(encoded.trim_end_matches('=').len());
            }
            let secret_text = format!("whsec_{encoded}");
            let secret = WebhookSecret::parse(&secret_text).unwrap();

            let id_len = rng.random_range(1..=64);
            let id: String = (0..id_len)
                .map(|_| ID_CHARS[rng.random_range(0..ID_CHARS.len())] as char)
                .collect();
            let body = match fixed_bodies.get(n) {
                Some(b) => b.clone(),
                None => {
                    let len = rng.random_range(0..=300);
                    if n % 2 == 0 {
                        // Any Unicode scalar value, control characters and all.
                        (0..len).map(|_| rng.random::<char>()).collect()
                    } else {
                        let text: String = (0..len).map(|_| rng.random::<char>()).collect();
                        serde_json::json!({"n": n, "text": text, "ok": rng.random::<bool>()})
                            .to_string()
                    }
                }
            };

            let signed = secret.headers(&id, &body, now).unwrap();
            assert_eq!(
                secret.verify(
                    &signed.id,
                    &signed.timestamp.to_string(),
                    &signed.signature,
                    body.as_bytes(),
                    now
                ),
                Ok(())
            );
            let headers: serde_json::Map<String, serde_json::Value> = signed
                .pairs()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            let line = serde_json::json!({"secret": secret_text, "body": body, "headers": headers});
            lines.push_str(&line.to_string());
            lines.push('\n');
        }

        if let Some(path) = std::env::var_os("CALLVISOR_WEBHOOK_SAMPLES") {
            std::fs::write(&path, lines).expect("write CALLVISOR_WEBHOOK_SAMPLES");
            println!("256 signed samples written to {}", path.to_string_lossy());
        }
    }
}
