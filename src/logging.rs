//! Log setup: JSON lines or plain text, the process's level, and a span per mapping that carries its UUID
//! and its own level (`LoggingConfig.SystemLogLevel`).
//!
//! - Format and level follow `lambda_runtime`'s rules for Lambda's advanced logging controls:
//!   `AWS_LAMBDA_LOG_LEVEL` wins over `RUST_LOG`, `INFO` when neither is set; `AWS_LAMBDA_LOG_FORMAT=JSON`
//!   gives JSON lines. In Lambda without `AWS_LAMBDA_LOG_FORMAT` (e.g. `cargo lambda watch`) the relay keeps
//!   JSON lines; `AWS_LAMBDA_LOG_FORMAT=Text` gives text.
//! - Text never carries ANSI colour codes unless stderr is a terminal: logs redirected to a file or
//!   collected by a platform stay plain.
//! - Every line logged while a mapping runs is inside its [`mapping_span`], so it carries the mapping's
//!   UUID without each call repeating it. A mapping's `SystemLogLevel` replaces the process's level for the
//!   relay's own lines inside that span (other crates' lines keep the process's level): `DEBUG` shows one
//!   mapping's details without drowning the others, `WARN` quiets one mapping.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Mapping;

/// The name of the span each mapping's work runs in.
pub const MAPPING_SPAN: &str = "mapping";

/// The relay's own crate: the per-mapping level applies to its lines only.
const OWN_TARGET: &str = "kafka_lambda_relay";

/// Other crates' chatter kept at `warn` unless `RUST_LOG` says otherwise.
const QUIET: &str = "librdkafka=warn,aws_config=warn,aws_smithy_runtime=warn,hyper=warn";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, with the current span's fields.
    Json,
    /// Human-readable text; `ansi` only when writing to a terminal.
    Text {
        /// Colour codes.
        ansi: bool,
    },
}

/// The format and filter directives the process logs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The format.
    pub format: Format,
    /// `EnvFilter` directives (e.g. `info,librdkafka=warn`).
    pub directives: String,
}

impl LogSettings {
    /// The settings for this process: `in_lambda` when `AWS_LAMBDA_RUNTIME_API` is set, `env` reads a
    /// variable, `stderr_is_terminal` decides colours.
    pub fn from_env(in_lambda: bool, stderr_is_terminal: bool, env: impl Fn(&str) -> Option<String>) -> Self {
        let format = match env("AWS_LAMBDA_LOG_FORMAT").map(|f| f.trim().to_ascii_lowercase()) {
            Some(f) if f == "json" => Format::Json,
            Some(f) if f == "text" => Format::Text {
                ansi: stderr_is_terminal,
            },
            _ if in_lambda => Format::Json,
            _ => Format::Text {
                ansi: stderr_is_terminal,
            },
        };
        let directives = match env("AWS_LAMBDA_LOG_LEVEL").filter(|l| !l.trim().is_empty()) {
            // Lambda's levels are TRACE..FATAL; tracing has no FATAL.
            Some(level) => {
                let level = level.trim().to_ascii_lowercase();
                let level = if level == "fatal" { "error".to_string() } else { level };
                format!("{level},{QUIET}")
            }
            None => match env("RUST_LOG").filter(|l| !l.trim().is_empty()) {
                Some(directives) => directives,
                None => format!("info,{QUIET}"),
            },
        };
        Self { format, directives }
    }

    /// The settings of this process's environment.
    pub fn current() -> Self {
        Self::from_env(
            std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some(),
            std::io::stderr().is_terminal(),
            |name| std::env::var(name).ok(),
        )
    }
}

/// Installs the global subscriber, writing to stderr.
pub fn init(settings: &LogSettings) {
    let _ = tracing::subscriber::set_global_default(subscriber(settings, std::io::stderr));
}

/// The subscriber for `settings`, writing to `writer` (tests pass a buffer).
pub fn subscriber<W>(settings: &LogSettings, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env = EnvFilter::try_new(&settings.directives).unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    let levels = MappingLevels { env };
    let registry = tracing_subscriber::registry();
    match settings.format {
        Format::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer)
                    .with_filter(levels),
            ),
        ),
        Format::Text { ansi } => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(writer)
                    .with_filter(levels),
            ),
        ),
    }
}

/// The span a mapping's work runs in: `mapping{uuid=...}`, with its `SystemLogLevel` when set. Enabled at
/// every process level (it is an `ERROR`-level span) so the UUID is always there.
pub fn mapping_span(mapping: &Mapping) -> tracing::Span {
    match mapping.system_log_level() {
        Some(level) => tracing::error_span!(MAPPING_SPAN, uuid = %mapping.uuid(), system_log_level = level),
        None => tracing::error_span!(MAPPING_SPAN, uuid = %mapping.uuid()),
    }
}

/// A mapping's level, kept in its span's extensions.
#[derive(Debug, Clone, Copy)]
struct MappingLevel(LevelFilter);

/// The process's `EnvFilter`, except for the relay's own lines inside a mapping span with a level.
struct MappingLevels {
    env: EnvFilter,
}

impl MappingLevels {
    fn mapping_level<S>(cx: &Context<'_, S>) -> Option<LevelFilter>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let current = cx.lookup_current()?;
        let level = current
            .scope()
            .find_map(|span| span.extensions().get::<MappingLevel>().map(|l| l.0));
        level
    }
}

impl<S> Filter<S> for MappingLevels
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        if meta.is_span() && meta.name() == MAPPING_SPAN && meta.target().starts_with(OWN_TARGET) {
            return true;
        }
        if meta.is_event() && meta.target().starts_with(OWN_TARGET) {
            if let Some(level) = Self::mapping_level(cx) {
                return level >= *meta.level();
            }
        }
        Filter::<S>::enabled(&self.env, meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // The relay's own lines depend on the span they are logged in: decided each time.
        if meta.target().starts_with(OWN_TARGET) {
            Interest::sometimes()
        } else {
            Filter::<S>::callsite_enabled(&self.env, meta)
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // A mapping may ask for DEBUG whatever the process's level.
        Filter::<S>::max_level_hint(&self.env).map(|env| env.max(LevelFilter::DEBUG))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        if attrs.metadata().name() == MAPPING_SPAN {
            let mut visitor = LevelVisitor(None);
            attrs.record(&mut visitor);
            if let (Some(level), Some(span)) = (visitor.0, cx.span(id)) {
                span.extensions_mut().insert(MappingLevel(level));
            }
        }
        Filter::<S>::on_new_span(&self.env, attrs, id, cx)
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        Filter::<S>::on_record(&self.env, id, values, cx)
    }

    fn on_enter(&self, id: &Id, cx: Context<'_, S>) {
        Filter::<S>::on_enter(&self.env, id, cx)
    }

    fn on_exit(&self, id: &Id, cx: Context<'_, S>) {
        Filter::<S>::on_exit(&self.env, id, cx)
    }

    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        Filter::<S>::on_close(&self.env, id, cx)
    }
}

/// Reads `system_log_level` from a mapping span's fields.
struct LevelVisitor(Option<LevelFilter>);

impl Visit for LevelVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "system_log_level" {
            self.0 = match value {
                "DEBUG" => Some(LevelFilter::DEBUG),
                "INFO" => Some(LevelFilter::INFO),
                "WARN" => Some(LevelFilter::WARN),
                _ => None,
            };
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log writer tests read back (other modules' log tests use it too).
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        /// The lines written so far.
        pub(crate) fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn mapping(uuid: &str, level: Option<&str>) -> Mapping {
        let mut m = serde_json::json!({
            "UUID": uuid, "FunctionName": "f", "Topics": ["t"], "StartingPosition": "LATEST",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["h:9092"]}}
        });
        if let Some(level) = level {
            m["LoggingConfig"] = serde_json::json!({"SystemLogLevel": level});
        }
        serde_json::from_value(m).unwrap()
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn format_and_level_follow_lambda_runtime_rules() {
        let lambda_json = LogSettings::from_env(
            true,
            false,
            env(&[
                ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
                ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
                ("RUST_LOG", "warn"),
            ]),
        );
        assert_eq!(lambda_json.format, Format::Json);
        assert!(
            lambda_json.directives.starts_with("debug,"),
            "AWS_LAMBDA_LOG_LEVEL wins over RUST_LOG: {}",
            lambda_json.directives
        );
        let lambda_text = LogSettings::from_env(
            true,
            false,
            env(&[("AWS_LAMBDA_LOG_FORMAT", "Text"), ("RUST_LOG", "warn")]),
        );
        assert_eq!(
            lambda_text,
            LogSettings {
                format: Format::Text { ansi: false },
                directives: "warn".into()
            }
        );
        let watch = LogSettings::from_env(true, true, env(&[]));
        assert_eq!(
            watch.format,
            Format::Json,
            "in Lambda without a format the relay keeps JSON lines"
        );
        assert!(watch.directives.starts_with("info,"));
        let fatal = LogSettings::from_env(true, false, env(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")]));
        assert!(fatal.directives.starts_with("error,"));
        assert_eq!(
            LogSettings::from_env(false, false, env(&[])).format,
            Format::Text { ansi: false },
            "stderr to a file: no colours"
        );
        assert_eq!(
            LogSettings::from_env(false, true, env(&[])).format,
            Format::Text { ansi: true }
        );
    }

    fn log_in_mappings(settings: &LogSettings) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = subscriber(settings, buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("outside any mapping: debug");
            tracing::info!("outside any mapping: info");
            let verbose = mapping("aaaa-debug", Some("DEBUG"));
            let quiet = mapping("bbbb-warn", Some("WARN"));
            let plain = mapping("cccc-default", None);
            for m in [&verbose, &quiet, &plain] {
                let _entered = mapping_span(m).entered();
                tracing::debug!(mapping_debug = true, "debug line");
                tracing::info!("info line");
                tracing::warn!(error_code = "SOMETHING", "warn line");
            }
        });
        buffer.lines()
    }

    #[test]
    fn each_mapping_logs_at_its_own_level_with_its_uuid() {
        let lines = log_in_mappings(&LogSettings {
            format: Format::Text { ansi: false },
            directives: "info".into(),
        });
        let with = |uuid: &str, text: &str| lines.iter().filter(|l| l.contains(uuid) && l.contains(text)).count();
        assert_eq!(
            with("aaaa-debug", "debug line"),
            1,
            "DEBUG mapping shows its debug lines: {lines:#?}"
        );
        assert_eq!(with("aaaa-debug", "info line"), 1);
        assert_eq!(with("bbbb-warn", "info line"), 0, "WARN mapping drops its info lines");
        assert_eq!(with("bbbb-warn", "warn line"), 1);
        assert_eq!(
            with("cccc-default", "debug line"),
            0,
            "no SystemLogLevel: the process's INFO applies"
        );
        assert_eq!(with("cccc-default", "info line"), 1);
        assert!(!lines.iter().any(|l| l.contains("outside any mapping: debug")));
        assert!(lines.iter().any(|l| l.contains("outside any mapping: info")));
        assert!(
            lines.iter().all(|l| !l.contains('\u{1b}')),
            "no ANSI colour codes when not a terminal"
        );
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn json_lines_carry_the_mapping_span() {
        let lines = log_in_mappings(&LogSettings {
            format: Format::Json,
            directives: "warn".into(),
        });
        let parsed: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let warn: Vec<&serde_json::Value> = parsed
            .iter()
            .filter(|v| v["fields"]["message"] == "warn line")
            .collect();
        assert_eq!(warn.len(), 3);
        assert_eq!(warn[1]["span"]["uuid"], "bbbb-warn");
        assert_eq!(warn[1]["level"], "WARN");
        assert_eq!(warn[1]["fields"]["error_code"], "SOMETHING");
        let debug: Vec<&serde_json::Value> = parsed
            .iter()
            .filter(|v| v["fields"]["message"] == "debug line")
            .collect();
        assert_eq!(debug.len(), 1, "only the DEBUG mapping goes below the process's WARN");
        assert_eq!(debug[0]["span"]["uuid"], "aaaa-debug");
    }
}
