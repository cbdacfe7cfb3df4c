//! Prometheus metrics, one registry per process.
//!
//! Counters are atomics: incrementing one takes no lock and sends no message. Per-frame counts are
//! kept as plain fields by each call's actor and added here in batches (every second and at the
//! call's end), so the per-frame path touches no shared memory at all.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One label, as a fixed-size set (no allocation per increment).
pub type Label = [(&'static str, &'static str); 1];
/// Labels whose values come from the configuration (an agent's tool names: bounded by its file).
pub type NamedLabels<const N: usize> = [(&'static str, String); N];

/// Every metric of the service itself; the running call app adds its own ([`Metrics::new_with`]).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The three gauges mirror the supervisor's snapshot; `/metrics` sets them at scrape time.
    pub calls_active: Gauge,
    pub calls_limit: Gauge,
    pub draining: Gauge,
    pub calls_admitted: Counter,
    /// `reason`: capacity, draining, auth.
    pub calls_rejected: Family<Label, Counter>,
    /// `reason`: stop, client_closed, client_gone, start_timeout, idle_timeout, protocol_error,
    /// handler_failed, superseded, handoff, auth.
    pub calls_ended: Family<Label, Counter>,
    /// `outcome`: connect (first try), retry (a bounced or handed-off call), busy, forbidden.
    pub webhook_answers: Family<Label, Counter>,
    pub media_frames_in: Counter,
    pub media_frames_out: Counter,
    pub media_bytes_in: Counter<u64, AtomicU64>,
    pub media_bytes_out: Counter<u64, AtomicU64>,
    pub call_duration: Histogram,
    /// `event`: stream-started, stream-stopped, stream-error (as Twilio names them).
    pub stream_status_events: Family<[(&'static str, String); 1], Counter>,
    /// Twilio REST call updates; `action`: hangup, transfer, say_hangup; `outcome`: ok,
    /// already_over (404: the call had ended), failed.
    pub call_control: Family<[(&'static str, &'static str); 2], Counter>,
    /// Call records (`CALL_EVENTS_URL`) by `type` and `outcome` (delivered, retried, given_up),
    /// the records waiting, and the time from a record's making to its delivery.
    pub call_events: Family<[(&'static str, &'static str); 2], Counter>,
    pub call_events_queue: Gauge,
    pub call_events_delivery_seconds: Histogram,
    /// `RECORD_CALLS`: recordings asked of Twilio, by outcome (started, exists, failed).
    pub recordings: Family<Label, Counter>,
    /// Call apps' upstream WebSockets: handshake time, failures (`reason`: unreachable, lost),
    /// frames relayed (`direction`: to_upstream, from_upstream) and frames dropped because the
    /// upstream did not keep up.
    pub upstream_connect: Histogram,
    pub upstream_failures: Family<Label, Counter>,
    pub upstream_frames: Family<Label, Counter>,
    pub upstream_dropped: Counter,
    /// Outbound calls (`POST /calls`, their callbacks and streams): `callvisor_outbound_*`.
    pub outbound: crate::outbound::metrics::OutboundMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The service's own metrics.
    pub fn new() -> Self {
        Self::new_with(|_| ()).0
    }

    /// The service's own metrics, and those `register_app` adds to the same registry before it
    /// is shared: the running call app's own (`CallApp::handler_factory`), under the same
    /// `callvisor_` prefix. Returns what `register_app` returns beside them.
    pub fn new_with<T>(register_app: impl FnOnce(&mut Registry) -> T) -> (Self, T) {
        let calls_active = Gauge::default();
        let calls_limit = Gauge::default();
        let draining = Gauge::default();
        let calls_admitted = Counter::default();
        let calls_rejected = Family::default();
        let calls_ended = Family::default();
        let webhook_answers = Family::default();
        let media_frames_in = Counter::default();
        let media_frames_out = Counter::default();
        let media_bytes_in = Counter::default();
        let media_bytes_out = Counter::default();
        // 1 s .. ~4.5 h
        let call_duration = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        let stream_status_events = Family::default();
        let call_control = Family::default();
        let call_events = Family::default();
        let call_events_queue = Gauge::default();
        // 10 ms .. ~1.6 days: a record may wait for its receiver a long time.
        let call_events_delivery_seconds = Histogram::new(exponential_buckets(0.01, 4.0, 14));
        let recordings = Family::default();
        // 1 ms .. ~8 s
        let upstream_connect = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let upstream_failures = Family::default();
        let upstream_frames = Family::default();
        let upstream_dropped = Counter::default();

        let mut r = Registry::with_prefix("callvisor");
        r.register(
            "calls_active",
            "Live calls on this replica",
            calls_active.clone(),
        );
        r.register(
            "calls_limit",
            "LIMIT_CONCURRENCY of this replica",
            calls_limit.clone(),
        );
        r.register(
            "draining",
            "1 while this replica drains (SIGTERM)",
            draining.clone(),
        );
        r.register("calls_admitted", "Streams admitted", calls_admitted.clone());
        r.register(
            "calls_rejected",
            "Streams refused, by reason",
            calls_rejected.clone(),
        );
        r.register(
            "calls_ended",
            "Admitted calls that ended, by reason",
            calls_ended.clone(),
        );
        r.register(
            "webhook_answers",
            "Voice webhook answers, by outcome",
            webhook_answers.clone(),
        );
        r.register(
            "media_frames_in",
            "Media frames received",
            media_frames_in.clone(),
        );
        r.register(
            "media_frames_out",
            "Media frames sent",
            media_frames_out.clone(),
        );
        r.register(
            "media_bytes_in",
            "Decoded audio bytes received",
            media_bytes_in.clone(),
        );
        r.register(
            "media_bytes_out",
            "Decoded audio bytes sent",
            media_bytes_out.clone(),
        );
        r.register(
            "call_duration_seconds",
            "Duration of admitted calls",
            call_duration.clone(),
        );
        r.register(
            "stream_status_events",
            "Twilio <Stream statusCallback> events, by event",
            stream_status_events.clone(),
        );
        r.register(
            "call_control",
            "Twilio REST call updates (hang-up, transfer, say and hang up), by action and outcome",
            call_control.clone(),
        );
        r.register(
            "call_events",
            "Call records (CALL_EVENTS_URL), by type and outcome (delivered, retried, given_up)",
            call_events.clone(),
        );
        r.register(
            "call_events_queue",
            "Call records waiting for delivery",
            call_events_queue.clone(),
        );
        r.register(
            "call_events_delivery_seconds",
            "From a call record's making to its delivery",
            call_events_delivery_seconds.clone(),
        );
        r.register(
            "recordings",
            "RECORD_CALLS: Twilio recordings asked for, by outcome (started, exists, failed)",
            recordings.clone(),
        );
        r.register(
            "upstream_connect_seconds",
            "Call apps' upstream WebSocket handshakes",
            upstream_connect.clone(),
        );
        r.register(
            "upstream_failures",
            "Call apps' upstreams that could not be reached or were lost mid-call, by reason",
            upstream_failures.clone(),
        );
        r.register(
            "upstream_frames",
            "Frames relayed to and from call apps' upstreams, by direction",
            upstream_frames.clone(),
        );
        r.register(
            "upstream_dropped_frames",
            "Frames to an upstream dropped because it did not keep up",
            upstream_dropped.clone(),
        );
        let outbound = crate::outbound::metrics::OutboundMetrics::register(&mut r);
        let app = register_app(&mut r);
        let metrics = Metrics {
            registry: Arc::new(r),
            calls_active,
            calls_limit,
            draining,
            calls_admitted,
            calls_rejected,
            calls_ended,
            webhook_answers,
            media_frames_in,
            media_frames_out,
            media_bytes_in,
            media_bytes_out,
            call_duration,
            stream_status_events,
            call_control,
            call_events,
            call_events_queue,
            call_events_delivery_seconds,
            recordings,
            upstream_connect,
            upstream_failures,
            upstream_frames,
            upstream_dropped,
            outbound,
        };
        (metrics, app)
    }

    /// The OpenMetrics text exposition (Prometheus reads it).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn rejected(&self, reason: &'static str) {
        self.calls_rejected
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn call_event(&self, kind: &'static str, outcome: &'static str) {
        self.call_events
            .get_or_create(&[("type", kind), ("outcome", outcome)])
            .inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhook_answers
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }
}

/// Per-call media counts, kept by the call's actor and flushed into [`Metrics`] in batches.
#[derive(Debug, Default, Clone, Copy)]
pub struct MediaCounts {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Frames sent to / received from the app's upstream, and dropped on the way to it.
    pub upstream_out: u64,
    pub upstream_in: u64,
    pub upstream_dropped: u64,
}

impl MediaCounts {
    /// Adds to `metrics` what was counted since `reported`, then records it as reported.
    pub fn report(&self, reported: &mut MediaCounts, metrics: &Metrics) {
        metrics
            .media_frames_in
            .inc_by(self.frames_in - reported.frames_in);
        metrics
            .media_frames_out
            .inc_by(self.frames_out - reported.frames_out);
        metrics
            .media_bytes_in
            .inc_by(self.bytes_in - reported.bytes_in);
        metrics
            .media_bytes_out
            .inc_by(self.bytes_out - reported.bytes_out);
        if self.upstream_out + self.upstream_in + self.upstream_dropped > 0 {
            metrics
                .upstream_frames
                .get_or_create(&[("direction", "to_upstream")])
                .inc_by(self.upstream_out - reported.upstream_out);
            metrics
                .upstream_frames
                .get_or_create(&[("direction", "from_upstream")])
                .inc_by(self.upstream_in - reported.upstream_in);
            metrics
                .upstream_dropped
                .inc_by(self.upstream_dropped - reported.upstream_dropped);
        }
        *reported = *self;
    }
}
