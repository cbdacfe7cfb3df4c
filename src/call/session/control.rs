//! Ending a call through Twilio's REST API (hang up, transfer, say-and-hang-up).
//!
//! The request runs on its own task, not as a future of the call's actor: once sent, it always
//! completes, with its metric and log line (`CallControl::update`), whatever happens to the
//! stream meanwhile. Its answer comes back to the actor as [`ControlDone`]; the actor does not
//! stop before it (so a drain waits for it, at most the request's own timeout).

use actix::prelude::*;

use super::{call_log, CallSession, CallState, EndReason};
use crate::twilio::rest::{CallUpdate, ControlOutcome};

/// A call update answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ControlDone {
    update: CallUpdate,
    outcome: ControlOutcome,
}

impl CallSession {
    /// The transition `Live` → `Ending`: sends `update` (or, without REST credentials, fails
    /// the call 1011: it cannot be ended as asked).
    pub(super) fn send_control(&mut self, update: CallUpdate, ctx: &mut Context<Self>) {
        let (Some(control), Some(sids)) = (self.settings.control.clone(), &self.sids) else {
            call_log!(
                self,
                Error,
                "cannot {}: no Twilio REST credentials (TWILIO_API_KEY_SID/SECRET or TWILIO_AUTH_TOKEN)",
                update.label()
            );
            return self.close(ctx, EndReason::HandlerFailed, 1011, "no call control");
        };
        let (account, call_sid) = (sids.account_sid.clone(), sids.call_sid.clone());
        call_log!(self, Info, "call {}: asking Twilio", update.label());
        let addr = ctx.address();
        let sent = update.clone();
        actix_web::rt::spawn(async move {
            let outcome = control.update(&account, &call_sid, &sent).await;
            // The actor is alive: it waits for this answer before it stops.
            addr.do_send(ControlDone {
                update: sent,
                outcome,
            });
        });
        self.state = CallState::Ending {
            update,
            queued: None,
        };
    }

    /// A REST update answered. A hang-up closes the stream whatever Twilio said (a failed one is
    /// logged and counted by `CallControl`: the call then comes back through the `<Redirect>`);
    /// a successful transfer closes it; a failed transfer leaves the call up, tells the app, and
    /// runs the end request the app queued meanwhile, if any.
    fn control_done(&mut self, done: ControlDone, ctx: &mut Context<Self>) {
        let queued = match std::mem::replace(&mut self.state, CallState::Live) {
            CallState::Ending { queued, .. } => queued,
            CallState::Closing(mut closing) => {
                // The stream ended while the request ran: the call only waited for this.
                closing.rest_in_flight = false;
                self.state = CallState::Closing(closing);
                return self.maybe_stop(ctx);
            }
            other => {
                self.state = other;
                return;
            }
        };
        let ControlDone { update, outcome } = done;
        match &update {
            CallUpdate::Transfer { to } if outcome.succeeded() => {
                self.transfer_to = Some(to.clone());
                self.close(ctx, EndReason::Transferred, 1000, "transfer")
            }
            CallUpdate::Transfer { .. } => {
                let result = self.dispatch(ctx, |h, call| h.on_control(&update, &outcome, call));
                self.after_handler(ctx, result);
                if let Some(end) = queued {
                    self.end_request(end, ctx);
                }
            }
            CallUpdate::HangUp | CallUpdate::SayAndHangUp { .. } => {
                self.close(ctx, EndReason::HungUp, 1000, "hangup")
            }
        }
    }
}

impl Handler<ControlDone> for CallSession {
    type Result = ();

    fn handle(&mut self, done: ControlDone, ctx: &mut Self::Context) {
        self.control_done(done, ctx);
    }
}
