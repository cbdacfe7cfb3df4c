//! An outbound call with answering-machine detection (docs/apps.md, *Outbound calls*): who
//! answered, a person or a machine, as the stream's app needs it to decide whether to greet.
//!
//! Twilio tells `AsyncAmdStatusCallback` (`/amd-status`), and behind a random load balancer that
//! callback may reach any replica, not the one holding the call's stream. Replicas share nothing;
//! what they all reach is Twilio. So the stream's replica reads the call's resource (`GET
//! …/Calls/{CallSid}.json`, whose `answered_by` Twilio fills in with the same result) every
//! [`ANSWERED_BY_POLL`] until it is set or `AMD_GREETING_WAIT_MS` has passed, then tells the app
//! once ([`CallHandler::on_answered_by`]: the result, or `None` when the wait ran out).
//!
//! Like the recording requests, the polling runs on its own task beside the call: the call goes
//! on meanwhile (audio flows, the model connects), and its end stops nothing but the answer's
//! delivery. A failed read (Twilio unreachable, a 5xx) is tried again at the next tick; past the
//! wait the app hears `None`, and greets.
//!
//! [`CallHandler::on_answered_by`]: crate::call::handler::CallHandler::on_answered_by

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{call_log, CallSession};
use crate::twilio::rest::CallControl;

/// How often the stream's replica reads the call while it waits for the answer.
pub const ANSWERED_BY_POLL: Duration = Duration::from_millis(250);

/// Reads the call `call_sid` every `every` until Twilio's `answered_by` is set (returned), or
/// `wait` has passed (`None`).
pub async fn poll_answered_by(
    control: &CallControl,
    account_sid: &str,
    call_sid: &str,
    wait: Duration,
    every: Duration,
) -> Option<String> {
    let deadline = Instant::now() + wait;
    let mut failures = 0u32;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match actix_web::rt::time::timeout(left, control.fetch_call(account_sid, call_sid)).await {
            Err(_) => return None,
            Ok(Ok(call)) => {
                if let Some(answered_by) = call.answered_by.filter(|a| !a.is_empty()) {
                    return Some(answered_by);
                }
            }
            Ok(Err(failure)) => {
                failures += 1;
                if failures == 1 {
                    log::warn!(call_sid = call_sid; "cannot read the call's answering-machine detection result (trying again until the wait is over): {}", failure.why);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        actix_web::rt::time::sleep(every.min(left)).await;
    }
}

/// Who answered the call (or `None`: not known within the wait).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct AnsweredBy {
    answered_by: Option<String>,
}

impl CallSession {
    /// An outbound call with detection has started: learn who answered, beside the call. Without
    /// REST credentials (or with no wait) the app hears `None` at once.
    pub(super) fn await_answered_by(&mut self, ctx: &mut Context<Self>) {
        let wait = self.settings.amd_wait;
        let (Some(control), Some(sids), false) =
            (self.settings.control.clone(), &self.sids, wait.is_zero())
        else {
            ctx.notify(AnsweredBy { answered_by: None });
            return;
        };
        let (account_sid, call_sid) = (sids.account_sid.clone(), sids.call_sid.clone());
        let metrics = self.metrics.clone();
        let addr = ctx.address();
        actix_web::rt::spawn(async move {
            let answered_by =
                poll_answered_by(&control, &account_sid, &call_sid, wait, ANSWERED_BY_POLL).await;
            let outcome = if answered_by.is_some() {
                "known"
            } else {
                "timed_out"
            };
            metrics
                .outbound
                .amd_wait
                .get_or_create(&[("outcome", outcome)])
                .inc();
            addr.do_send(AnsweredBy { answered_by });
        });
    }
}

impl Handler<AnsweredBy> for CallSession {
    type Result = ();

    fn handle(&mut self, msg: AnsweredBy, ctx: &mut Self::Context) {
        if self.is_closing() {
            return;
        }
        match &msg.answered_by {
            Some(answered_by) => {
                call_log!(self, Info, "answering-machine detection: {answered_by}")
            }
            None => call_log!(
                self,
                Info,
                "answering-machine detection: no result within {} ms, the call goes on as answered by a person",
                self.settings.amd_wait.as_millis()
            ),
        }
        if let Some(records) = &mut self.records {
            records.answered_by.clone_from(&msg.answered_by);
        }
        let answered_by = msg.answered_by.as_deref();
        let result = self.dispatch(ctx, |h, call| h.on_answered_by(answered_by, call));
        self.after_handler(ctx, result);
    }
}
