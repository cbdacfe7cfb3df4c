//! Delivering records to `CALL_EVENTS_URL`: signed (Standard Webhooks, one `webhook-id` per
//! record, the same on every retry), in parallel, retried with backoff, bounded, and never
//! silently lost: a record given up is logged whole at ERROR.
//!
//! One actor on its own thread (an [`Arbiter`]): a slow receiver or a spool's fsync never
//! holds up a call or the supervisor. Calls hand their records over with a message and go on.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;

use super::spool::Spool;
use crate::metrics::Metrics;
use crate::webhooks::WebhookSecret;

/// Deliveries in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// While a drain runs, retries come at least this often: its deadline is near.
const DRAIN_BACKOFF: Duration = Duration::from_secs(1);

/// One record, serialized once: every attempt sends the same bytes with the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The `webhook-id`.
    pub id: String,
    /// `call.started` or `call.ended`.
    pub kind: &'static str,
    /// When it was made (Unix milliseconds): its age bounds its retries.
    pub created_ms: u64,
    pub body: String,
}

impl Record {
    pub fn new(id: String, kind: &'static str, body: String) -> Self {
        Record {
            id,
            kind,
            created_ms: unix_ms(),
            body,
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `CALL_EVENTS_*`.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    pub url: String,
    pub secret: WebhookSecret,
    /// Per attempt, answer included.
    pub timeout: Duration,
    /// Past this age a record is given up.
    pub max_age: Duration,
    /// Records waiting at most; past it the oldest is given up.
    pub queue: usize,
    pub spool_dir: Option<PathBuf>,
}

/// A handle on the delivery actor; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Deliveries {
    addr: Addr<Delivery>,
}

impl Deliveries {
    /// Starts the delivery actor on its own thread. With a spool, opens it first (an error is
    /// the caller's to report) and queues what it holds undelivered ahead of anything new.
    pub fn start(settings: DeliverySettings, metrics: Metrics) -> std::io::Result<Deliveries> {
        let (spool, pending) = match &settings.spool_dir {
            Some(dir) => {
                let (spool, pending) = Spool::open(dir)?;
                if !pending.is_empty() {
                    log::info!(
                        "records spool: {} record(s) from before the restart are delivered first",
                        pending.len()
                    );
                }
                (Some(spool), pending)
            }
            None => (None, Vec::new()),
        };
        let arbiter = Arbiter::new();
        let addr = Delivery::start_in_arbiter(&arbiter.handle(), move |_| {
            let mut delivery = Delivery {
                settings,
                metrics,
                client: None,
                queue: VecDeque::new(),
                in_flight: 0,
                spool,
                wake: None,
                flush: None,
                next_seq: 0,
            };
            let now = Instant::now();
            for record in pending {
                delivery.push(record, now);
            }
            delivery
        });
        Ok(Deliveries { addr })
    }

    /// Hands a record over; never waits.
    pub fn send(&self, record: Record) {
        self.addr.do_send(Enqueue(record));
    }

    /// Delivers what is queued until nothing is or `deadline` passes; what is left then is
    /// logged at ERROR (or, with a spool, stays there for the next start).
    pub async fn flush(&self, deadline: Instant) {
        let _ = self.addr.send(Flush { deadline }).await;
    }
}

struct Entry {
    /// This entry's own number: answers find their entry by it (two records may share an id).
    seq: u64,
    record: Record,
    /// Attempts that failed.
    attempts: u32,
    /// When the next attempt may start.
    due: Instant,
    in_flight: bool,
}

pub struct Delivery {
    settings: DeliverySettings,
    metrics: Metrics,
    /// Made on the actor's own thread (awc's client is not `Send`).
    client: Option<awc::Client>,
    /// Oldest first.
    queue: VecDeque<Entry>,
    in_flight: usize,
    spool: Option<Spool>,
    /// The timer for the next due retry.
    wake: Option<SpawnHandle>,
    /// A drain waits for the queue to empty.
    flush: Option<(Instant, tokio::sync::oneshot::Sender<()>)>,
    next_seq: u64,
}

impl Actor for Delivery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.client = Some(
            crate::client::builder()
                .timeout(self.settings.timeout)
                .connect_timeout(self.settings.timeout)
                .finish(),
        );
        self.metrics.call_events_queue.set(self.queue.len() as i64);
        self.pump(ctx);
    }
}

struct Enqueue(Record);

impl Message for Enqueue {
    type Result = ();
}

impl Handler<Enqueue> for Delivery {
    type Result = ();

    fn handle(&mut self, Enqueue(record): Enqueue, ctx: &mut Context<Self>) {
        if self.queue.len() >= self.settings.queue {
            if let Some(at) = self.queue.iter().position(|e| !e.in_flight) {
                let oldest = self.queue.remove(at).expect("found");
                self.give_up(oldest.record, "the queue is full (CALL_EVENTS_QUEUE)");
            }
        }
        if let Some(spool) = &mut self.spool {
            if let Err(e) = spool.add(&record) {
                log::error!("records spool: could not write record {}: {e}", record.id);
            }
        }
        self.push(record, Instant::now());
        self.metrics.call_events_queue.set(self.queue.len() as i64);
        self.pump(ctx);
    }
}

struct Flush {
    deadline: Instant,
}

impl Message for Flush {
    type Result = ();
}

impl Handler<Flush> for Delivery {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Flush { deadline }: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.queue.is_empty() {
            let _ = tx.send(());
        } else {
            log::info!(
                "draining: delivering {} call record(s) until the deadline",
                self.queue.len()
            );
            self.flush = Some((deadline, tx));
            // Retries waiting for their backoff go now: the deadline is all the time left.
            let now = Instant::now();
            for entry in &mut self.queue {
                entry.due = entry.due.min(now);
            }
            ctx.run_later(deadline.saturating_duration_since(now), |act, _| {
                act.flush_deadline()
            });
            self.pump(ctx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Delivery {
    fn push(&mut self, record: Record, due: Instant) {
        self.next_seq += 1;
        self.queue.push_back(Entry {
            seq: self.next_seq,
            record,
            attempts: 0,
            due,
            in_flight: false,
        });
    }

    /// Starts the due attempts (oldest first, at most [`MAX_IN_FLIGHT`]) and sets the timer
    /// for the next.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let max_age_ms = self.settings.max_age.as_millis() as u64;
        let now_ms = unix_ms();
        let mut i = 0;
        while i < self.queue.len() && self.in_flight < MAX_IN_FLIGHT {
            let entry = &self.queue[i];
            if entry.in_flight || entry.due > now {
                i += 1;
                continue;
            }
            if now_ms.saturating_sub(entry.record.created_ms) > max_age_ms {
                let old = self.queue.remove(i).expect("in range");
                self.give_up(old.record, "older than CALL_EVENTS_MAX_AGE_SECS");
                continue;
            }
            let entry = &mut self.queue[i];
            entry.in_flight = true;
            self.in_flight += 1;
            let (seq, record) = (entry.seq, entry.record.clone());
            self.attempt(seq, record, ctx);
            i += 1;
        }
        self.metrics.call_events_queue.set(self.queue.len() as i64);
        if let Some(handle) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        if self.in_flight < MAX_IN_FLIGHT {
            if let Some(next) = self
                .queue
                .iter()
                .filter(|e| !e.in_flight)
                .map(|e| e.due)
                .min()
            {
                self.wake = Some(
                    ctx.run_later(next.saturating_duration_since(now), |act, ctx| {
                        act.wake = None;
                        act.pump(ctx)
                    }),
                );
            }
        }
    }

    fn attempt(&mut self, seq: u64, record: Record, ctx: &mut Context<Self>) {
        let client = self.client.clone().expect("made at start");
        let url = self.settings.url.clone();
        let headers = self.settings.secret.headers(
            &record.id,
            &record.body,
            crate::twilio::signature::unix_now(),
        );
        let started = Instant::now();
        let id = record.id.clone();
        let fut = async move {
            let headers = headers.map_err(|e| e.to_string())?;
            let mut request = client
                .post(&url)
                .insert_header(("content-type", "application/json"));
            for (name, value) in headers.pairs() {
                request = request.insert_header((name, value));
            }
            let response = request
                .send_body(record.body)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", status.as_u16()))
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| act.answered(seq, &id, result, started, ctx)),
        );
    }

    fn answered(
        &mut self,
        seq: u64,
        id: &str,
        result: Result<(), String>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight -= 1;
        let Some(at) = self.queue.iter().position(|e| e.seq == seq) else {
            self.pump(ctx);
            return;
        };
        let kind = self.queue[at].record.kind;
        match result {
            Ok(()) => {
                let entry = self.queue.remove(at).expect("found");
                self.metrics.call_event(kind, "delivered");
                let age = unix_ms().saturating_sub(entry.record.created_ms);
                self.metrics
                    .call_events_delivery_seconds
                    .observe(age as f64 / 1000.0);
                log::debug!(
                    "call record {id} delivered in {} ms (attempt {})",
                    started.elapsed().as_millis(),
                    entry.attempts + 1
                );
                if let Some(spool) = &mut self.spool {
                    spool.done(id, &mut self.queue.iter().map(|e| &e.record));
                }
            }
            Err(why) => {
                let draining = self.flush.is_some();
                let entry = &mut self.queue[at];
                entry.attempts += 1;
                entry.in_flight = false;
                let backoff = backoff(entry.attempts, jitter());
                let backoff = if draining {
                    backoff.min(DRAIN_BACKOFF)
                } else {
                    backoff
                };
                entry.due = Instant::now() + backoff;
                self.metrics.call_event(kind, "retried");
                log::warn!(
                    "call record {id} not delivered ({why}); attempt {} failed, next in {} ms",
                    entry.attempts,
                    backoff.as_millis()
                );
            }
        }
        if self.queue.is_empty() {
            if let Some((_, done)) = self.flush.take() {
                let _ = done.send(());
            }
        }
        self.pump(ctx);
    }

    /// The drain's deadline: what is left is logged (or stays spooled for the next start).
    fn flush_deadline(&mut self) {
        let Some((_, done)) = self.flush.take() else {
            return;
        };
        if self.spool.is_some() {
            if !self.queue.is_empty() {
                let ids: Vec<&str> = self.queue.iter().map(|e| e.record.id.as_str()).collect();
                log::warn!(
                    "drain over: {} call record(s) stay in the spool for the next start: {}",
                    ids.len(),
                    ids.join(" ")
                );
            }
        } else {
            for entry in std::mem::take(&mut self.queue) {
                self.give_up(entry.record, "the drain ended before it was delivered");
            }
        }
        let _ = done.send(());
    }

    /// Never silently: the whole record goes to the log at ERROR, one line, and is counted.
    fn give_up(&mut self, record: Record, why: &str) {
        log::error!(record = record.body.as_str(), record_id = record.id.as_str();
            "call record undelivered ({why}): {} {}", record.kind, record.id);
        self.metrics.call_event(record.kind, "given_up");
        if let Some(spool) = &mut self.spool {
            spool.done(&record.id, &mut self.queue.iter().map(|e| &e.record));
        }
    }
}

/// The delay before retry number `attempts` (1 = the first retry): [`FIRST_BACKOFF`] doubling
/// up to [`MAX_BACKOFF`], of which a random part (`jitter` in 0..1 takes away up to half), so
/// that records failed together do not come back together.
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let full = doubled.min(MAX_BACKOFF);
    full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in 0..1, different each call (SipHash with the process's random keys).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(5, 0.0), Duration::from_secs(16));
        assert_eq!(backoff(9, 0.0), Duration::from_secs(256));
        assert_eq!(backoff(10, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(3, 1.0), Duration::from_secs(2));
        let j: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(j.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(j.windows(2).any(|w| w[0] != w[1]), "jitter varies");
    }
}
