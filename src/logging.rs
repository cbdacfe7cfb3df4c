//! Logging through `log` + env_logger: human-readable by default, one JSON object per line with
//! `LOG_FORMAT=json` (Railway's log explorer indexes its fields). `RUST_LOG` sets levels.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global logger (once, at start).
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let mut line = serde_json::Map::new();
            line.insert("time".into(), buf.timestamp_micros().to_string().into());
            line.insert("level".into(), record.level().as_str().into());
            line.insert("target".into(), record.target().into());
            line.insert("msg".into(), record.args().to_string().into());
            // Structured fields (call_sid, stream_sid) become top-level keys.
            let _ = record.key_values().visit(&mut Fields(&mut line));
            serde_json::to_writer(&mut *buf, &line)?;
            writeln!(buf)
        });
    }
    builder.init();
}

/// The structured field that holds a whole JSON document (a call record).
pub const RECORD_FIELD: &str = "record";

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let text = value.to_string();
        // A call record given up (records/delivery.rs) is kept whole as an object, so a log
        // drain can replay it as it is.
        let value = match key.as_str() {
            RECORD_FIELD => serde_json::from_str(&text).unwrap_or(text.into()),
            _ => text.into(),
        };
        self.0.insert(key.to_string(), value);
        Ok(())
    }
}
