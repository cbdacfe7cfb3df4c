//! `RECORD_CALLS`: Twilio records each call (its REST API, once per call), and the records say
//! which recording (`recording_sid`).

use crate::config::ConfigError;

pub const ENV_RECORD_CALLS: &str = "RECORD_CALLS";
pub const ENV_RECORDING_STATUS_URL: &str = "RECORDING_STATUS_URL";

/// Twilio's `RecordingChannels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// The caller and the other side on two channels.
    Dual,
    Mono,
}

impl Channels {
    pub fn as_str(self) -> &'static str {
        match self {
            Channels::Dual => "dual",
            Channels::Mono => "mono",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingSettings {
    pub channels: Channels,
    /// `RECORDING_STATUS_URL`: Twilio tells the business there when the file is ready.
    pub status_url: Option<String>,
}

/// `RECORD_CALLS` (`off`, the default, `dual` or `mono`) and `RECORDING_STATUS_URL`.
pub fn settings_from(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<RecordingSettings>, ConfigError> {
    let channels = match get(ENV_RECORD_CALLS).map(|v| v.trim().to_ascii_lowercase()) {
        None => return Ok(None),
        Some(v) if v == "off" => return Ok(None),
        Some(v) if v == "dual" => Channels::Dual,
        Some(v) if v == "mono" => Channels::Mono,
        Some(v) => {
            return Err(ConfigError {
                variable: ENV_RECORD_CALLS,
                value: v,
                expected: "off, dual (caller and agent on two channels) or mono".into(),
            })
        }
    };
    let status_url = match get(ENV_RECORDING_STATUS_URL).map(|v| v.trim().to_string()) {
        Some(url) if crate::config::valid_base_url(&url) || url.contains('?') => {
            if !crate::config::valid_base_url(url.split('?').next().unwrap_or("")) {
                return Err(bad_url(url));
            }
            Some(url)
        }
        Some(url) => return Err(bad_url(url)),
        None => None,
    };
    Ok(Some(RecordingSettings {
        channels,
        status_url,
    }))
}

fn bad_url(url: String) -> ConfigError {
    ConfigError {
        variable: ENV_RECORDING_STATUS_URL,
        value: url,
        expected: "an http:// or https:// URL".into(),
    }
}
