//! Diagnostic logs (tracing) on stderr: their format (plain or coloured text, or one JSON object per
//! line), their default level per command, and the choice of colour. Owns the subscriber's
//! construction only; it reads no configuration file (`log_format` is resolved by [`crate::config`])
//! and must never be handed request content: keys, prompts and completions are not logged at any
//! level (`tests/logs.rs` runs the proxy at `RUST_LOG=trace` and scans its stderr for them).
//!
//! Stdout stays free for what commands print for people and scripts (`listening proxy=...`, the
//! demo's table, `log-power`'s CSV).

use std::ffi::OsStr;
use std::fmt;

use tracing::level_filters::LevelFilter;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
use tracing_subscriber::EnvFilter;

/// How log events are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; coloured only on a terminal without `NO_COLOR`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

impl LogFormat {
    /// The configuration text.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// Parses the configuration text (`text` or `json`).
    pub fn parse(text: &str) -> Option<LogFormat> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The level a command logs at when neither `-v` nor `RUST_LOG` says otherwise: `warn` for commands
/// whose own output is a table or progress on the terminal (`quiet`), `info` for servers.
pub fn default_level(quiet: bool, verbose: u8) -> LevelFilter {
    let base = if quiet {
        LevelFilter::WARN
    } else {
        LevelFilter::INFO
    };
    // `-v` means info, `-vv` debug, `-vvv` trace whatever the command; it never lowers the level.
    let asked = match verbose {
        0 => LevelFilter::OFF,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    base.max(asked)
}

/// Whether text logs are coloured: only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>: any non-empty value disables colour).
pub fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.map_or(true, OsStr::is_empty)
}

/// The event filter: `RUST_LOG` when it is set and valid (as before), otherwise `default`. An
/// invalid `RUST_LOG` is returned as the error's text so that it can be logged once logs work.
pub fn filter(default: LevelFilter, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(default.to_string()),
                Some(format!("RUST_LOG={spec:?} ignored: {e}")),
            ),
        },
        None => (EnvFilter::new(default.to_string()), None),
    }
}

/// Everything the subscriber needs, resolved by the binary.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// Colour escapes in text logs (ignored for JSON).
    pub colour: bool,
}

/// A subscriber writing events that pass `filter` to `writer` in `options.format`.
pub fn subscriber<W>(
    options: &LogOptions,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter);
    match options.format {
        LogFormat::Text => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(options.colour)
                    .with_writer(writer),
            ),
        ),
        // Flattened: the message and the event's fields sit beside timestamp, level and target,
        // which is what Loki, Elasticsearch and journald's JSON readers index without a pipeline.
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_ansi(false)
                    .with_writer(writer),
            ),
        ),
    }
}

/// Installs the subscriber for the process, writing to stderr (and forwarding `log` records).
pub fn init(options: &LogOptions, filter: EnvFilter) -> Result<(), TryInitError> {
    subscriber(options, filter, std::io::stderr).try_init()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer, for reading back what the subscriber wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
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

    fn written(options: LogOptions, level: LevelFilter) -> String {
        let buffer = Buffer::default();
        let (filter, _) = filter(level, None);
        let sub = subscriber(&options, filter, buffer.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                upstream = "http://127.0.0.1:8000",
                port = 9000u16,
                "joulegate serving"
            );
            tracing::debug!("hidden below info");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_carry_timestamp_level_target_message_and_fields() {
        let out = written(
            LogOptions {
                format: LogFormat::Json,
                colour: true,
            },
            LevelFilter::INFO,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(
            v["timestamp"].as_str().is_some_and(|t| !t.is_empty()),
            "{v}"
        );
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "joulegate::logging::tests");
        assert_eq!(v["message"], "joulegate serving");
        assert_eq!(v["upstream"], "http://127.0.0.1:8000");
        assert_eq!(v["port"], 9000);
        assert!(!out.contains('\x1b'), "JSON never carries colour: {out}");
    }

    #[test]
    fn text_without_colour_has_no_escapes_and_colour_has_them() {
        let plain = written(
            LogOptions {
                format: LogFormat::Text,
                colour: false,
            },
            LevelFilter::INFO,
        );
        assert_eq!(plain.lines().count(), 1, "{plain}");
        assert!(!plain.contains("\x1b["), "{plain:?}");
        assert!(plain.contains(" INFO "), "{plain}");
        assert!(plain.contains("joulegate serving"), "{plain}");
        assert!(
            plain.contains("upstream=\"http://127.0.0.1:8000\""),
            "{plain}"
        );
        let coloured = written(
            LogOptions {
                format: LogFormat::Text,
                colour: true,
            },
            LevelFilter::INFO,
        );
        assert!(coloured.contains("\x1b["), "{coloured:?}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(true, Some(OsStr::new("false"))));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn quiet_commands_warn_by_default_and_verbosity_raises_the_level() {
        assert_eq!(default_level(false, 0), LevelFilter::INFO);
        assert_eq!(default_level(true, 0), LevelFilter::WARN);
        assert_eq!(default_level(true, 1), LevelFilter::INFO);
        assert_eq!(default_level(true, 2), LevelFilter::DEBUG);
        assert_eq!(default_level(true, 3), LevelFilter::TRACE);
        assert_eq!(default_level(false, 1), LevelFilter::INFO);
        assert_eq!(default_level(false, 2), LevelFilter::DEBUG);
        assert_eq!(default_level(false, 9), LevelFilter::TRACE);
    }

    #[test]
    fn rust_log_overrides_the_default_and_a_bad_one_is_reported() {
        let (f, err) = filter(LevelFilter::WARN, Some("joulegate=debug"));
        assert!(err.is_none());
        assert_eq!(f.max_level_hint(), Some(LevelFilter::DEBUG));
        let (f, err) = filter(LevelFilter::WARN, Some(""));
        assert!(err.is_none());
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        let (f, err) = filter(LevelFilter::INFO, Some("joulegate=loud"));
        assert!(err.is_some_and(|e| e.contains("joulegate=loud")));
        assert_eq!(f.max_level_hint(), Some(LevelFilter::INFO));
    }

    #[test]
    fn formats_parse_and_print() {
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::parse(f.as_str()), Some(f));
        }
        assert_eq!(LogFormat::parse("JSON"), None);
        assert_eq!(LogFormat::parse("logfmt"), None);
    }
}
