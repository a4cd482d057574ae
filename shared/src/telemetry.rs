//! Tracing setup and W3C trace-context propagation.
//!
//! Every process (`qsched`, `qagent`, a shard worker) installs the same stack: an
//! `EnvFilter` (`RUST_LOG`), a human-readable log layer on stderr, and an OpenTelemetry
//! layer. The OpenTelemetry layer is always present so that every span has a trace id
//! that can travel in AMQP headers (`traceparent`) and into worker processes; spans are
//! exported over OTLP/HTTP only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) variable is set.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, TracerProviderBuilder};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the tracer provider alive; flushes and shuts it down on drop.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Flushes buffered spans now (e.g. before a worker process exits).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// Whether an OTLP endpoint is configured through the standard variables.
pub fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// A tracer-provider builder for `service` (no exporter yet).
fn provider_builder(service: &str) -> TracerProviderBuilder {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
    SdkTracerProvider::builder().with_resource(resource)
}

/// Installs logging and tracing for a process named `service`.
///
/// `default_filter` applies when `RUST_LOG` is unset (e.g. `"info"` for the agent,
/// `"warn"` for the CLI, whose stdout is for results). Safe to call once per process;
/// a second call leaves the first subscriber in place.
pub fn init(service: &str, default_filter: &str) -> TelemetryGuard {
    init_with_writer(service, default_filter, std::io::stderr, std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

/// Like [`init`] but the log lines go to `writer` (ANSI colours when `ansi`). `qsched`
/// passes a writer that prints each line above its progress bar, so that a log line does
/// not leave a copy of the bar behind on the terminal.
pub fn init_with_writer<W>(service: &str, default_filter: &str, writer: W, ansi: bool) -> TelemetryGuard
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let mut builder = provider_builder(service);
    if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            // Tracing still works locally (trace ids, propagation); only export is off.
            Err(e) => eprintln!("warning: OTLP exporter not started: {e}"),
        }
    }
    install(service, default_filter, builder.build(), writer, ansi)
}

/// Like [`init`] but exporting every span synchronously to `exporter` (tests use an
/// in-memory exporter to check trace propagation).
pub fn init_with_exporter<E: SpanExporter + 'static>(
    service: &str,
    default_filter: &str,
    exporter: E,
) -> TelemetryGuard {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    install(
        service,
        default_filter,
        provider_builder(service).with_simple_exporter(exporter).build(),
        std::io::stderr,
        ansi,
    )
}

fn install<W>(service: &str, default_filter: &str, provider: SdkTracerProvider, writer: W, ansi: bool) -> TelemetryGuard
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer(service.to_owned());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt =
        tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi).with_target(false).with_filter(filter);
    // The OpenTelemetry layer sees every span at INFO and above regardless of the log
    // filter, so traces are complete even when logs are quiet.
    let otel =
        tracing_opentelemetry::layer().with_tracer(tracer).with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::registry().with(fmt).with(otel).try_init();
    TelemetryGuard { provider }
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C trace-context headers (`traceparent`, `tracestate`) of `span`.
pub fn inject(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut headers));
    headers
}

/// The `traceparent` of `span`, if it has a valid trace context.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    inject(span).remove("traceparent")
}

/// Makes `span` a child of the trace context in `headers` (no-op without one).
pub fn set_parent(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&MapExtractor(headers));
    let _ = span.set_parent(cx);
}

/// Trace id (32 hex digits) of a `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_parsing() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
    }
}
