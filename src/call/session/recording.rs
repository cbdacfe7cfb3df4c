//! `RECORD_CALLS`: Twilio records each call, once, from its first stream's start (docs/records.md,
//! *Recordings*).
//!
//! Once per call, with replicas that share nothing: the stream's `attempt` parameter (set by the
//! webhook, 1 for the call's first try) says whether an earlier stream of the call may exist.
//!
//! - attempt 1: no stream of this call came before, so nothing recorded it: `POST` a recording.
//! - a later attempt follows a bounce (no stream was served, no recording) or a hand-off or a
//!   failed-over stream (a recording was started): `GET` the call's recordings first, and `POST`
//!   only when the call has none. One in progress (or paused) is this call's recording, reused;
//!   one that is stopped or done while the call is still up was stopped on purpose (by the
//!   business, through Twilio's API): it is not restarted either.
//! - a `POST` that fails in a way that may have taken effect (a 5xx, a lost connection, a
//!   timeout) is never blindly sent again: the call's recordings are listed, and the `POST` sent
//!   once more only if there is none. A `GET` changes nothing: one that fails that way is
//!   retried once.
//!
//! The requests run on their own task, like call control, but the actor never waits for them:
//! the call goes on whatever they do, and stops when it ends. The answer reaches the actor as
//! [`RecordingKnown`], which puts the SID in the call's records; a call that ended first has no
//! `recording_sid` in its `call.ended` record (the log line has it). Every outcome is counted
//! (`callvisor_recordings_total{outcome}`: started, exists, failed) and logged, a failure at WARN
//! with Twilio's reason (never a secret).

use actix::prelude::*;

use super::{call_log, CallSession};
use crate::records::recording::RecordingSettings;
use crate::twilio::rest::{CallControl, CallRecording, RestFailure};

/// What asking Twilio to record a call came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordingOutcome {
    /// This stream started the recording: its SID.
    Started(String),
    /// The call already had one (an earlier stream of the call started it): its SID.
    Exists(String),
    /// No recording could be started, or told of; why.
    Failed(String),
}

impl RecordingOutcome {
    /// The `outcome` label of `callvisor_recordings_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RecordingOutcome::Started(_) => "started",
            RecordingOutcome::Exists(_) => "exists",
            RecordingOutcome::Failed(_) => "failed",
        }
    }
}

/// Records the call `call_sid` (of `account_sid`, unless `TWILIO_ACCOUNT_SID` says otherwise)
/// once, from its try number `attempt`: the rules are the module's.
pub async fn ensure_recording(
    control: &CallControl,
    account_sid: &str,
    call_sid: &str,
    settings: &RecordingSettings,
    attempt: u32,
) -> RecordingOutcome {
    if attempt > 1 {
        match existing(control, account_sid, call_sid).await {
            Ok(Some(recording)) => return RecordingOutcome::Exists(recording.sid),
            Ok(None) => {}
            Err(why) => {
                return RecordingOutcome::Failed(format!(
                    "cannot tell whether an earlier stream of the call started one: {why}"
                ))
            }
        }
    }
    match control
        .start_recording(account_sid, call_sid, settings)
        .await
    {
        Ok(sid) => RecordingOutcome::Started(sid),
        Err(RestFailure {
            why,
            transient: false,
        }) => RecordingOutcome::Failed(why),
        Err(RestFailure {
            why,
            transient: true,
        }) => {
            log::warn!(call_sid = call_sid; "recording request failed ({why}): looking for the recording it may have started");
            match existing(control, account_sid, call_sid).await {
                // It did start: only its answer was lost.
                Ok(Some(recording)) => RecordingOutcome::Started(recording.sid),
                Ok(None) => match control
                    .start_recording(account_sid, call_sid, settings)
                    .await
                {
                    Ok(sid) => RecordingOutcome::Started(sid),
                    Err(again) => RecordingOutcome::Failed(format!("{why}; again: {}", again.why)),
                },
                Err(list) => RecordingOutcome::Failed(format!(
                    "{why}; and whether it started is unknown: {list}"
                )),
            }
        }
    }
}

/// The call's recording, if it has one: the one in progress (or paused), else the newest.
async fn existing(
    control: &CallControl,
    account_sid: &str,
    call_sid: &str,
) -> Result<Option<CallRecording>, String> {
    let mut first_failure = None;
    for _ in 0..2 {
        match control.list_recordings(account_sid, call_sid).await {
            Ok(recordings) => {
                let active = recordings.iter().position(CallRecording::is_active);
                return Ok(match active {
                    Some(i) => recordings.into_iter().nth(i),
                    None => recordings.into_iter().next(),
                });
            }
            Err(failure) if failure.transient && first_failure.is_none() => {
                first_failure = Some(failure.why);
            }
            Err(failure) => return Err(failure.why),
        }
    }
    Err(first_failure.unwrap_or_default())
}

/// The call's recording is known: its SID goes in the records.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct RecordingKnown {
    sid: String,
}

impl CallSession {
    /// With `RECORD_CALLS` and REST credentials: has Twilio record the started call (on its own
    /// task; the call goes on meanwhile). `attempt`: the stream's try number.
    pub(super) fn start_recording(&mut self, attempt: u32, ctx: &mut Context<Self>) {
        let (Some(settings), Some(control), Some(sids)) = (
            self.settings.recording.clone(),
            self.settings.control.clone(),
            &self.sids,
        ) else {
            return;
        };
        let (account_sid, call_sid, stream_sid) = (
            sids.account_sid.clone(),
            sids.call_sid.clone(),
            sids.stream_sid.clone(),
        );
        call_log!(
            self,
            Debug,
            "asking Twilio to record the call (attempt {attempt})"
        );
        let metrics = self.metrics.clone();
        let has_records = self.records.is_some();
        let addr = ctx.address();
        actix_web::rt::spawn(async move {
            let outcome =
                ensure_recording(&control, &account_sid, &call_sid, &settings, attempt).await;
            metrics
                .recordings
                .get_or_create(&[("outcome", outcome.label())])
                .inc();
            let (call_sid, stream_sid) = (call_sid.as_str(), stream_sid.as_str());
            let sid = match outcome {
                RecordingOutcome::Started(sid) => {
                    log::info!(call_sid = call_sid, stream_sid = stream_sid; "recording started: {sid}");
                    sid
                }
                RecordingOutcome::Exists(sid) => {
                    log::info!(call_sid = call_sid, stream_sid = stream_sid; "recording {sid} already there (an earlier stream of the call started it): not started again");
                    sid
                }
                RecordingOutcome::Failed(why) => {
                    log::warn!(call_sid = call_sid, stream_sid = stream_sid; "recording not started: {why}; the call goes on unrecorded");
                    return;
                }
            };
            if addr.connected() {
                addr.do_send(RecordingKnown { sid });
            } else if has_records {
                log::info!(call_sid = call_sid, stream_sid = stream_sid; "the stream ended before Twilio answered: its call.ended record has no recording_sid ({sid})");
            }
        });
    }
}

impl Handler<RecordingKnown> for CallSession {
    type Result = ();

    fn handle(&mut self, known: RecordingKnown, _: &mut Self::Context) {
        // The records are there until the actor stops (`call.ended` goes out then).
        if let Some(records) = &mut self.records {
            records.recording_sid = Some(known.sid);
        }
    }
}
