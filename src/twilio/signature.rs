//! Twilio request validation (`X-Twilio-Signature`) and the per-call stream token.
//!
//! Twilio signs every request with HMAC-SHA1 keyed by the account's auth token, over the URL it
//! requested plus the sorted form parameters. The WebSocket upgrade is signed too, but with no
//! parameters its signature is the same for every call; so the webhook also hands each stream a
//! token (a MAC over its CallSid and an expiry) that the session checks at `start`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// The `<Parameter>` name the stream token travels under.
pub const STREAM_TOKEN_PARAM: &str = "streamToken";
/// The stream parameter that carries what a stream token binds (the agent that answers).
pub const BOUND_PARAM: &str = "agent";

/// Twilio's signature of a request: base64(HMAC-SHA1(token, url + sorted name/value pairs)).
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key");
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name, byte order; a repeated name contributes each of its values, sorted.
    sorted.sort();
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks `signature` against every form of `url` Twilio may have signed: as given, with the
/// default port removed or added and, for WebSocket URLs, with or without a trailing `/`.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let mut ok = false;
    for candidate in url_variants(url) {
        // No early return: every variant costs the same whatever matches.
        ok |= constant_time_eq(
            sign(auth_token, &candidate, params).as_bytes(),
            signature.as_bytes(),
        );
    }
    ok
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The URL as given plus its port variants (and trailing-slash variants for ws/wss).
pub fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let default_port = match scheme {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => return out,
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!authority.starts_with('[') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    };
    let other_port = match port {
        // Twilio's helper libraries accept the URL with any port removed...
        Some(_) => format!("{scheme}://{host}{tail}"),
        // ...or with the default port added.
        None => format!("{scheme}://{host}:{default_port}{tail}"),
    };
    out.push(other_port);
    if scheme == "ws" || scheme == "wss" {
        // The upgrade's exact form is unconfirmed: accept a trailing slash either way.
        let toggled: Vec<String> = out
            .iter()
            .map(|u| match u.strip_suffix('/') {
                Some(s) => s.to_string(),
                None => format!("{u}/"),
            })
            .collect();
        out.extend(toggled);
    }
    out
}

/// Mints and checks per-call stream tokens. Stateless: any replica holding the same auth token
/// verifies a token minted by any other.
#[derive(Clone)]
pub struct StreamTokens {
    key: [u8; 32],
}

/// Why a stream token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no stream token")]
    Missing,
    #[error("malformed stream token")]
    Malformed,
    #[error("stream token expired")]
    Expired,
    #[error("stream token does not match this call")]
    Forged,
}

impl StreamTokens {
    /// Derives the token key from the auth token (so the auth token itself never signs tokens).
    pub fn new(auth_token: &str) -> Self {
        let mut mac =
            HmacSha256::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key");
        mac.update(b"callvisor stream token key v1");
        StreamTokens {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, call_sid: &str, expires: u64, bound: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(call_sid.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        if !bound.is_empty() {
            mac.update(b"\n");
            mac.update(bound.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// A token for `call_sid` that expires at `expires` (unix seconds): `EXPIRES.MAC`.
    pub fn mint(&self, call_sid: &str, expires: u64) -> String {
        self.mint_bound(call_sid, "", expires)
    }

    /// A token that also binds a value to the call (the agent that answers it; letters,
    /// digits, `-` and `_`): `EXPIRES.VALUE.MAC`. The stream gets the value from the token, so
    /// a forged parameter cannot change it.
    pub fn mint_bound(&self, call_sid: &str, bound: &str, expires: u64) -> String {
        let mac = URL_SAFE_NO_PAD.encode(self.mac(call_sid, expires, bound));
        if bound.is_empty() {
            format!("{expires}.{mac}")
        } else {
            format!("{expires}.{bound}.{mac}")
        }
    }

    /// Checks a token for `call_sid` at time `now` (unix seconds); the value it binds, if any.
    pub fn check(
        &self,
        token: Option<&str>,
        call_sid: &str,
        now: u64,
    ) -> Result<Option<String>, TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        let (head, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (expires, bound) = head.split_once('.').unwrap_or((head, ""));
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        if !constant_time_eq(&self.mac(call_sid, expires, bound), &mac) {
            return Err(TokenError::Forged);
        }
        if now > expires {
            return Err(TokenError::Expired);
        }
        Ok((!bound.is_empty()).then(|| bound.to_string()))
    }
}

/// Seconds since the unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The parameters of the second and third vectors of ../shared/twilio-media-streams.md.
    fn second_vector_params() -> Vec<(String, String)> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ])
    }

    // The vectors of ../shared/twilio-media-streams.md (token 12345).
    #[test]
    fn twilio_documented_vectors() {
        let p1 = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            sign("12345", "https://example.com/myapp.php?foo=1&bar=2", &p1),
            "L/OH5YylLD5NRKLltdqwSvS0BnU="
        );
        let p2 = second_vector_params();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(sign("12345", url, &p2), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        let with_443 = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(sign("12345", with_443, &p2), "kvajT1Ptam85bY51eRf/AJRuM3w=");
        assert_eq!(
            sign("12345", "wss://example.com/media", &[]),
            "7PR3qMkpDyEJtMrVOY/LDyNq8J8="
        );
        assert_eq!(
            sign("12345", "wss://example.com/media/", &[]),
            "T+WBXwUXC0/CyoZ1DA+p9ilZORs="
        );
    }

    #[test]
    fn verify_accepts_the_port_variants_twilio_may_sign() {
        let p2 = second_vector_params();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        // Signed without the port, validated on a URL that carries one (and the other way).
        assert!(verify(
            "12345",
            "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
            &p2,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(verify("12345", url, &p2, "kvajT1Ptam85bY51eRf/AJRuM3w="));
        assert!(verify("12345", url, &p2, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!verify("12345", url, &p2, "kvajT1Ptam85bY51eRf/AJRuM3x="));
        assert!(!verify("54321", url, &p2, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        let mut tampered = p2.clone();
        tampered[1].1 = "1235".into();
        assert!(!verify(
            "12345",
            url,
            &tampered,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn verify_accepts_websocket_url_variants() {
        for sig in [
            "7PR3qMkpDyEJtMrVOY/LDyNq8J8=",
            "T+WBXwUXC0/CyoZ1DA+p9ilZORs=",
        ] {
            assert!(verify("12345", "wss://example.com/media", &[], sig));
            assert!(verify("12345", "wss://example.com/media/", &[], sig));
        }
        let with_port = sign("12345", "wss://example.com:443/media", &[]);
        assert!(verify("12345", "wss://example.com/media", &[], &with_port));
        assert!(!verify(
            "12345",
            "wss://example.com/other",
            &[],
            "7PR3qMkpDyEJtMrVOY/LDyNq8J8="
        ));
    }

    #[test]
    fn repeated_names_sign_each_value_sorted() {
        let a = pairs(&[("b", "2"), ("a", "z"), ("a", "y")]);
        let b = pairs(&[("a", "y"), ("a", "z"), ("b", "2")]);
        assert_eq!(sign("t", "https://x/", &a), sign("t", "https://x/", &b));
        // And the order really is name+value concatenated: ayazb2.
        let mut mac = HmacSha1::new_from_slice(b"t").unwrap();
        mac.update(b"https://x/ayazb2");
        assert_eq!(
            sign("t", "https://x/", &a),
            STANDARD.encode(mac.finalize().into_bytes())
        );
    }

    #[test]
    fn a_bound_value_comes_back_and_cannot_be_swapped() {
        let tokens = StreamTokens::new("12345");
        let token = tokens.mint_bound("CA1", "support", 1_000);
        assert_eq!(
            tokens.check(Some(&token), "CA1", 999),
            Ok(Some("support".into()))
        );
        // The same MAC with another agent, or with the agent removed, is forged.
        let (_, mac) = token.rsplit_once('.').unwrap();
        for swapped in [format!("1000.sales.{mac}"), format!("1000.{mac}")] {
            assert_eq!(
                tokens.check(Some(&swapped), "CA1", 999),
                Err(TokenError::Forged),
                "{swapped}"
            );
        }
        // And a token without one cannot gain one.
        let plain = tokens.mint("CA1", 1_000);
        let (_, mac) = plain.split_once('.').unwrap();
        assert_eq!(
            tokens.check(Some(&format!("1000.support.{mac}")), "CA1", 999),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn stream_tokens_round_trip_and_fail_on_any_change() {
        let tokens = StreamTokens::new("12345");
        let token = tokens.mint("CA1", 1_000);
        assert_eq!(tokens.check(Some(&token), "CA1", 999), Ok(None));
        assert_eq!(tokens.check(Some(&token), "CA1", 1_000), Ok(None));
        assert_eq!(
            tokens.check(Some(&token), "CA1", 1_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            tokens.check(Some(&token), "CA2", 999),
            Err(TokenError::Forged)
        );
        assert_eq!(tokens.check(None, "CA1", 999), Err(TokenError::Missing));
        // Another expiry with the same MAC.
        let (_, mac) = token.split_once('.').unwrap();
        let later = format!("2000.{mac}");
        assert_eq!(
            tokens.check(Some(&later), "CA1", 999),
            Err(TokenError::Forged)
        );
        // One byte changed anywhere in the MAC.
        for i in 0..mac.len() {
            let mut bytes = token.clone().into_bytes();
            let at = token.len() - mac.len() + i;
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(bytes).unwrap();
            assert!(tokens.check(Some(&forged), "CA1", 999).is_err(), "{forged}");
        }
        // Another account's token never verifies.
        assert_eq!(
            StreamTokens::new("other").check(Some(&token), "CA1", 999),
            Err(TokenError::Forged)
        );
        assert_eq!(
            tokens.check(Some("garbage"), "CA1", 999),
            Err(TokenError::Malformed)
        );
    }
}
