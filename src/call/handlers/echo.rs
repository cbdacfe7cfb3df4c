//! The echo handler: every inbound audio chunk goes straight back to the caller. It is the
//! default handler, the one the tests and the benchmark measure.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::call::handler::{Call, CallHandler, HandlerError, HandlerFactory, MediaChunk};
use crate::call::handlers::{AppEntry, CallApp};

/// `HANDLER=echo` (the default): no settings, no metrics of its own, no call control.
pub const APP: AppEntry = AppEntry {
    name: "echo",
    from_env: |_| Ok(Arc::new(EchoApp)),
};

/// The echo app: it has nothing to configure.
#[derive(Debug, Default)]
pub struct EchoApp;

impl CallApp for EchoApp {
    fn name(&self) -> &'static str {
        APP.name
    }

    /// Echo never ends a call itself: the caller hangs up.
    fn needs_call_control(&self) -> bool {
        false
    }

    fn handler_factory(self: Arc<Self>, _: &mut Registry) -> HandlerFactory {
        Arc::new(|| Box::new(EchoHandler))
    }
}

/// One call's echo.
#[derive(Debug, Default)]
pub struct EchoHandler;

impl CallHandler for EchoHandler {
    fn on_media(
        &mut self,
        media: &MediaChunk<'_>,
        call: &mut Call<'_>,
    ) -> Result<(), HandlerError> {
        call.media_base64(media.payload_base64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::messages::ServerFrame;

    #[test]
    fn echoes_the_payload_with_the_stream_sid() {
        let mut frames = Vec::new();
        let mut counts = crate::metrics::MediaCounts::default();
        let mut requests = crate::call::handler::Requests::default();
        let mut out = Call::new(
            "MZ42",
            "CA42",
            None,
            &mut frames,
            &mut counts,
            &mut requests,
        );
        EchoHandler
            .on_media(
                &MediaChunk {
                    payload_base64: "f39/fw==",
                    audio: &[0x7f; 4],
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!((counts.frames_out, counts.bytes_out), (1, 4));
        match ServerFrame::parse(&frames[0]).unwrap() {
            ServerFrame::Media { stream_sid, media } => {
                assert_eq!(stream_sid, "MZ42");
                assert_eq!(media.payload, "f39/fw==");
            }
            other => panic!("{other:?}"),
        }
    }
}
