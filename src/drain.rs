//! Shutdown as a deploy needs it: on the first SIGTERM or SIGINT stop admitting, let live calls
//! run until they end or the drain deadline, then hand the rest over (close 1001, so Twilio runs
//! the `<Redirect>` to a live replica). A second signal hands everything over at once.
//! The process exits 0 once no call is left, well before Railway's SIGKILL.

use std::time::Duration;

use actix::Addr;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{interval, sleep_until, Instant};

use crate::call::supervisor::{CallSupervisor, GetSnapshot, HandOffAll, StartDrain};

/// How often a drain logs the calls it still waits for.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long handed-off calls get to close before the process exits anyway. A call whose end
/// the app asked for is not handed off: it closes once its REST update answers, so the grace
/// covers the longest update.
const HANDOFF_GRACE: Duration = crate::twilio::rest::MAX_UPDATE_TIME;

/// The process's shutdown signals.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers (do it before serving, so no early signal kills the process).
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for the first signal, then drains; returns once no call is left on this replica, with
/// the time until which call records may still be delivered: the drain's deadline, and at
/// least [`RECORDS_AFTER_LAST_CALL`] after the last call ended.
pub async fn wait_and_drain(
    signals: Signals,
    supervisor: Addr<CallSupervisor>,
    timeout: Duration,
) -> Instant {
    let deadline = drain(signals, supervisor, timeout).await;
    deadline.max(Instant::now() + RECORDS_AFTER_LAST_CALL)
}

/// What the last calls of a drain (handed off at its deadline) get for their records.
pub const RECORDS_AFTER_LAST_CALL: Duration = Duration::from_secs(3);

/// Drains; returns the drain's deadline once no call is left.
async fn drain(
    mut signals: Signals,
    supervisor: Addr<CallSupervisor>,
    timeout: Duration,
) -> Instant {
    let first = signals.next().await;
    let deadline = Instant::now() + timeout;
    let Ok(mut drained) = supervisor.send(StartDrain).await else {
        return deadline;
    };
    let live = live_calls(&supervisor).await;
    log::info!(
        "{first}: draining: {live} live call(s), no new calls admitted, hand-off deadline in {}s",
        timeout.as_secs()
    );
    let mut progress = interval(PROGRESS_EVERY);
    progress.tick().await;
    let mut handed_off = false;
    let mut grace_end = None;
    loop {
        tokio::select! {
            _ = &mut drained => {
                log::info!("drain complete: no call left, exiting");
                return deadline;
            }
            _ = sleep_until(deadline), if !handed_off => {
                hand_off(&supervisor, "drain deadline").await;
                handed_off = true;
                grace_end = Some(Instant::now() + HANDOFF_GRACE);
            }
            signal = signals.next() => {
                hand_off(&supervisor, &format!("second signal ({signal})")).await;
                handed_off = true;
                grace_end.get_or_insert(Instant::now() + HANDOFF_GRACE);
            }
            _ = sleep_until(grace_end.unwrap_or(deadline)), if grace_end.is_some() => {
                log::warn!(
                    "{} call(s) did not close within {}s of the hand-off; exiting anyway",
                    live_calls(&supervisor).await,
                    HANDOFF_GRACE.as_secs()
                );
                return deadline;
            }
            _ = progress.tick() => {
                log::info!("draining: {} call(s) left", live_calls(&supervisor).await);
            }
        }
    }
}

async fn hand_off(supervisor: &Addr<CallSupervisor>, why: &str) {
    let n = supervisor.send(HandOffAll).await.unwrap_or(0);
    log::info!("{why}: handing {n} live call(s) over to another replica (close 1001 handoff)");
}

async fn live_calls(supervisor: &Addr<CallSupervisor>) -> usize {
    supervisor
        .send(GetSnapshot)
        .await
        .map_or(0, |s| s.active_calls)
}
