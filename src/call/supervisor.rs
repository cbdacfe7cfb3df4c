//! The single owner of admission on this replica.
//!
//! Every decision (admit, refuse, supersede, drain) is made synchronously inside this actor's
//! mailbox, so two streams racing for the last slot can never both win. Sessions hold a
//! [`CallSlot`]; dropping it (whatever ended the call) hands the slot back.

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use serde::Serialize;

use crate::metrics::Metrics;

/// Identifies one admitted stream for the lifetime of the process.
pub type SlotId = u64;

/// Asks a live session to close its stream.
#[derive(Message, Clone, Copy, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum CloseCall {
    /// A newer stream of the same CallSid arrived: it replaces this one.
    Superseded,
    /// The replica is going away: closing makes Twilio run the `<Redirect>` to a live replica.
    Handoff,
}

impl CloseCall {
    /// The WebSocket close code and reason the session closes with.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            CloseCall::Superseded => (1000, "superseded"),
            CloseCall::Handoff => (1001, "handoff"),
        }
    }
}

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AtCapacity,
    Draining,
}

impl Refusal {
    /// The WebSocket close code and reason the refused stream gets. Twilio then runs the TwiML
    /// after `</Connect>`, i.e. the redirect to another replica.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            Refusal::AtCapacity => (1013, "at capacity"),
            Refusal::Draining => (1001, "draining"),
        }
    }

    /// The `reason` label of `callvisor_calls_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::AtCapacity => "capacity",
            Refusal::Draining => "draining",
        }
    }
}

/// Asks for a slot for a new stream.
#[derive(Message)]
#[rtype(result = "Result<CallSlot, Refusal>")]
pub struct Admit;

/// A slot came back (sent by [`CallSlot`]'s `Drop`).
#[derive(Message)]
#[rtype(result = "()")]
struct Release(SlotId);

/// A session started: how to reach it to close its stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach {
    pub slot: SlotId,
    pub session: Recipient<CloseCall>,
}

/// A stream said `start`: from now on it is the live stream of `call_sid` on this replica.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BindCall {
    pub slot: SlotId,
    pub call_sid: String,
}

/// Stop admitting (SIGTERM). The answer fires once no call is left.
#[derive(Message)]
#[rtype(result = "tokio::sync::oneshot::Receiver<()>")]
pub struct StartDrain;

/// Close every live stream with 1001 `handoff` (drain deadline, or a second signal).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct HandOffAll;

/// Asks for the current counts.
#[derive(Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

/// What `/`, `/ready` and the webhook need to know about this replica.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub active_calls: usize,
    pub limit: usize,
    pub draining: bool,
    pub calls_admitted: u64,
    pub calls_rejected: u64,
    pub calls_completed: u64,
    pub calls_handed_off: u64,
    pub uptime_secs: u64,
}

impl Snapshot {
    /// Whether a new call would be admitted now (the webhook's question; the stream's own
    /// admission is the authoritative one).
    pub fn admitting(&self) -> bool {
        !self.draining && self.active_calls < self.limit
    }

    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.active_calls)
    }
}

/// A held slot. Dropping it releases the slot: the session keeps it as a field, so every way an
/// actor can stop gives the slot back.
#[derive(Debug)]
pub struct CallSlot {
    id: SlotId,
    supervisor: Addr<CallSupervisor>,
}

impl CallSlot {
    pub fn id(&self) -> SlotId {
        self.id
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        // `do_send` ignores the mailbox bound, so a release is never lost to back-pressure.
        self.supervisor.do_send(Release(self.id));
    }
}

/// A live stream as the supervisor sees it.
struct LiveCall {
    /// Set at `start`; before that the stream is known only by its slot.
    call_sid: Option<String>,
    /// How to ask the session to close (superseded, handed off).
    session: Option<Recipient<CloseCall>>,
}

pub struct CallSupervisor {
    limit: usize,
    draining: bool,
    next_slot: SlotId,
    live: HashMap<SlotId, LiveCall>,
    /// CallSid to the slot of its current stream, to replace rather than double-count a second
    /// stream of the same call (seen on network handovers).
    by_call_sid: HashMap<String, SlotId>,
    admitted: u64,
    rejected: u64,
    completed: u64,
    handed_off: u64,
    /// Told when the last call of a drain ends.
    drained: Vec<tokio::sync::oneshot::Sender<()>>,
    started: Instant,
    metrics: Metrics,
}

impl CallSupervisor {
    pub fn new(limit: usize, metrics: Metrics) -> Self {
        CallSupervisor {
            limit,
            draining: false,
            next_slot: 1,
            live: HashMap::new(),
            by_call_sid: HashMap::new(),
            admitted: 0,
            rejected: 0,
            completed: 0,
            handed_off: 0,
            drained: Vec::new(),
            started: Instant::now(),
            metrics,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            active_calls: self.live.len(),
            limit: self.limit,
            draining: self.draining,
            calls_admitted: self.admitted,
            calls_rejected: self.rejected,
            calls_completed: self.completed,
            calls_handed_off: self.handed_off,
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}

impl Actor for CallSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Admission requests queue here; a deep mailbox keeps bursts of calls from waiting on
        // each other's senders.
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<Admit> for CallSupervisor {
    type Result = MessageResult<Admit>;

    fn handle(&mut self, _: Admit, ctx: &mut Self::Context) -> Self::Result {
        let refusal = if self.draining {
            Some(Refusal::Draining)
        } else if self.live.len() >= self.limit {
            Some(Refusal::AtCapacity)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.rejected += 1;
            self.metrics.rejected(refusal.label());
            return MessageResult(Err(refusal));
        }
        let id = self.next_slot;
        self.next_slot += 1;
        self.admitted += 1;
        self.metrics.calls_admitted.inc();
        self.live.insert(
            id,
            LiveCall {
                call_sid: None,
                session: None,
            },
        );
        MessageResult(Ok(CallSlot {
            id,
            supervisor: ctx.address(),
        }))
    }
}

impl Handler<Release> for CallSupervisor {
    type Result = ();

    fn handle(&mut self, Release(id): Release, _: &mut Self::Context) {
        if let Some(call) = self.live.remove(&id) {
            self.completed += 1;
            if let Some(sid) = call.call_sid {
                if self.by_call_sid.get(&sid) == Some(&id) {
                    self.by_call_sid.remove(&sid);
                }
            }
        }
        self.notify_if_drained();
    }
}

impl CallSupervisor {
    fn notify_if_drained(&mut self) {
        if self.draining && self.live.is_empty() {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Handler<Attach> for CallSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Self::Context) {
        if let Some(call) = self.live.get_mut(&msg.slot) {
            call.session = Some(msg.session);
        }
    }
}

impl Handler<StartDrain> for CallSupervisor {
    type Result = MessageResult<StartDrain>;

    fn handle(&mut self, _: StartDrain, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.push(tx);
        self.notify_if_drained();
        MessageResult(rx)
    }
}

impl Handler<HandOffAll> for CallSupervisor {
    type Result = usize;

    fn handle(&mut self, _: HandOffAll, _: &mut Self::Context) -> usize {
        let mut sent = 0;
        for call in self.live.values_mut() {
            // take(): a call is handed off once, even if asked twice.
            if let Some(session) = call.session.take() {
                session.do_send(CloseCall::Handoff);
                sent += 1;
            }
        }
        self.handed_off += sent as u64;
        sent as usize
    }
}

impl Handler<BindCall> for CallSupervisor {
    type Result = ();

    fn handle(&mut self, msg: BindCall, _: &mut Self::Context) {
        let Some(call) = self.live.get_mut(&msg.slot) else {
            return; // the stream already ended
        };
        call.call_sid = Some(msg.call_sid.clone());
        if let Some(old) = self.by_call_sid.insert(msg.call_sid.clone(), msg.slot) {
            if old != msg.slot {
                if let Some(old_call) = self.live.get(&old) {
                    log::info!(
                        call_sid = msg.call_sid.as_str();
                        "a new stream replaces the live one (slot {old} -> {})",
                        msg.slot
                    );
                    if let Some(session) = &old_call.session {
                        // Not a completed call of its own: the call goes on in the new stream.
                        session.do_send(CloseCall::Superseded);
                    }
                }
            }
        }
    }
}

impl Handler<GetSnapshot> for CallSupervisor {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn admits_up_to_the_limit_and_slots_come_back_on_drop() {
        let sup = CallSupervisor::new(2, Metrics::new()).start();
        let a = sup.send(Admit).await.unwrap().unwrap();
        let b = sup.send(Admit).await.unwrap().unwrap();
        assert_eq!(
            sup.send(Admit).await.unwrap().unwrap_err(),
            Refusal::AtCapacity
        );
        let snap = sup.send(GetSnapshot).await.unwrap();
        assert_eq!(
            (snap.active_calls, snap.available(), snap.admitting()),
            (2, 0, false)
        );
        assert_eq!((snap.calls_admitted, snap.calls_rejected), (2, 1));
        drop(a);
        let snap = sup.send(GetSnapshot).await.unwrap();
        assert_eq!((snap.active_calls, snap.calls_completed), (1, 1));
        assert!(sup.send(Admit).await.unwrap().is_ok());
        drop(b);
    }

    #[actix::test]
    async fn a_drain_refuses_new_calls_and_reports_when_the_last_one_ends() {
        let sup = CallSupervisor::new(5, Metrics::new()).start();
        let a = sup.send(Admit).await.unwrap().unwrap();
        let mut drained = sup.send(StartDrain).await.unwrap();
        assert_eq!(
            sup.send(Admit).await.unwrap().unwrap_err(),
            Refusal::Draining
        );
        let snap = sup.send(GetSnapshot).await.unwrap();
        assert!(snap.draining && !snap.admitting());
        assert!(drained.try_recv().is_err(), "one call is still live");
        drop(a);
        drained.await.expect("told when the last call ended");
    }

    #[actix::test]
    async fn an_empty_replica_is_drained_at_once() {
        let sup = CallSupervisor::new(5, Metrics::new()).start();
        let drained = sup.send(StartDrain).await.unwrap();
        drained.await.unwrap();
    }
}
