//! The relay's Prometheus metrics, served by the admin listener
//! ([`crate::admin`]) at `/metrics` in the Prometheus text format.
//!
//! Every metric is named `gangway_relay_…`. Labels hold only names from
//! the config (service, backend, limit) or the relay's own fixed codes,
//! never client text, so a client cannot grow the series without bound.
//! Backend health is read from the pools at each scrape.
//!
//! Built on the `prometheus` crate (TiKV's), whose text output
//! `promtool check metrics` accepts as it is.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets, seconds: 1 ms to about 16 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 15).unwrap_or_default()
}

/// Every metric of one relay.
pub struct Metrics {
    registry: Registry,
    /// Tunnel sessions open now.
    pub sessions: IntGauge,
    /// Sessions opened since start.
    pub sessions_opened: IntCounter,
    /// Data streams being served now, by service.
    pub streams_open: IntGaugeVec,
    /// Data streams accepted since start, by service.
    pub streams: IntCounterVec,
    /// HTTP requests answered, by service and status.
    pub http_requests: IntCounterVec,
    /// Failed authentications, by code.
    pub auth_failures: IntCounterVec,
    /// Refused sessions, streams and requests, by reason code.
    pub refusals: IntCounterVec,
    /// Events refused by a rate limit, by limit name.
    pub rate_limited: IntCounterVec,
    /// Rate-limit decisions taken alone (Redis out of reach), by limit.
    pub rate_limit_fallbacks: IntCounterVec,
    /// 1 while the rate limits are held in Redis, 0 while each relay
    /// decides alone.
    pub rate_limits_shared: IntGauge,
    /// Bytes carried, by service and direction ("up": agent to backend).
    pub bytes: IntCounterVec,
    /// Backend health: 1 available, 0 down, ejected or drained.
    pub backend_up: IntGaugeVec,
    /// Seconds from a stream's open header to the relay's answer.
    pub stream_open_seconds: HistogramVec,
    /// Seconds an HTTP request took, to the response head.
    pub http_request_seconds: HistogramVec,
    /// Sessions ended because their subject was locked.
    pub locked_sessions_ended: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histograms = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Metrics {
            sessions: gauge("gangway_relay_sessions", "Tunnel sessions open now."),
            sessions_opened: counter(
                "gangway_relay_sessions_opened_total",
                "Tunnel sessions opened since the relay started.",
            ),
            streams_open: gauges(
                "gangway_relay_streams",
                "Data streams being served now.",
                &["service"],
            ),
            streams: counters(
                "gangway_relay_streams_opened_total",
                "Data streams accepted since the relay started.",
                &["service"],
            ),
            http_requests: counters(
                "gangway_relay_http_requests_total",
                "HTTP requests answered, by service and status.",
                &["service", "status"],
            ),
            auth_failures: counters(
                "gangway_relay_auth_failures_total",
                "Refused access tokens, by code.",
                &["code"],
            ),
            refusals: counters(
                "gangway_relay_refusals_total",
                "Refused sessions, streams and requests, by reason.",
                &["reason"],
            ),
            rate_limited: counters(
                "gangway_relay_rate_limited_total",
                "Streams and requests refused by a rate limit.",
                &["limit"],
            ),
            rate_limit_fallbacks: counters(
                "gangway_relay_rate_limit_fallback_decisions_total",
                "Rate-limit decisions this relay took alone, Redis being out of reach.",
                &["limit"],
            ),
            rate_limits_shared: gauge(
                "gangway_relay_rate_limits_shared",
                "1 while rate limits are held in Redis across relays, 0 while on the per-relay fallback.",
            ),
            bytes: counters(
                "gangway_relay_bytes_total",
                "Bytes carried, by service and direction (up: agent to backend).",
                &["service", "direction"],
            ),
            backend_up: gauges(
                "gangway_relay_backend_up",
                "1 when a backend takes new work, 0 when it is down, ejected or drained.",
                &["service", "backend"],
            ),
            stream_open_seconds: histograms(
                "gangway_relay_stream_open_seconds",
                "Time from a stream's open header to the relay's answer.",
                &["service"],
            ),
            http_request_seconds: histograms(
                "gangway_relay_http_request_seconds",
                "Time an HTTP request took to its response head.",
                &["service"],
            ),
            locked_sessions_ended: counter(
                "gangway_relay_locked_sessions_ended_total",
                "Sessions ended because an admin locked their subject.",
            ),
            registry,
        }
    }

    /// Counts a refusal with `reason` (one of the relay's codes).
    pub fn refused(&self, reason: &str) {
        self.refusals.with_label_values(&[reason]).inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Counts a stream of `service` open while it lives.
pub struct StreamGauge(IntGauge);

impl StreamGauge {
    pub fn start(metrics: &Metrics, service: &str) -> Self {
        metrics.streams.with_label_values(&[service]).inc();
        let g = metrics.streams_open.with_label_values(&[service]);
        g.inc();
        StreamGauge(g)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A body that counts the bytes of its data frames into a counter as
/// they pass (`gangway_relay_bytes_total` of http services).
pub struct CountedBody<B> {
    inner: B,
    counter: IntCounter,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, counter: IntCounter) -> Self {
        Self { inner, counter }
    }
}

impl<B> hyper::body::Body for CountedBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_every_family_with_help_and_type() {
        let m = Metrics::new();
        m.refused("forbidden");
        m.http_requests.with_label_values(&["wiki", "200"]).inc();
        m.http_request_seconds
            .with_label_values(&["wiki"])
            .observe(0.01);
        let text = m.encode();
        assert!(text.contains("# TYPE gangway_relay_http_requests_total counter"));
        assert!(
            text.contains("gangway_relay_http_requests_total{service=\"wiki\",status=\"200\"} 1")
        );
        assert!(text.contains("gangway_relay_refusals_total{reason=\"forbidden\"} 1"));
        assert!(text.contains("gangway_relay_http_request_seconds_bucket"));
    }
}
