//! Logging: journald under systemd (structured fields, levels mapped to
//! syslog priorities), readable text or JSON on stderr otherwise. The level
//! filter can be swapped at run time by a reload.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// Changes the running log filter.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// The output actually chosen (`auto` resolved).
    pub format: LogFormat,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("format", &self.format)
            .finish()
    }
}

impl LogHandle {
    /// Replace the level filter (already validated by config loading).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// `auto` means journald when systemd connected our output to the journal.
pub fn resolve_format(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    }
}

/// Install the global subscriber. Call once, early in `main`.
pub fn init(cfg: &LogConfig) -> Result<LogHandle, String> {
    let filter = EnvFilter::try_new(&cfg.level).map_err(|e| format!("log.level: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let mut format = resolve_format(cfg.format);
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Journald => match tracing_journald::layer() {
            // No field prefix: `journalctl ENDPOINT=… OPERATION=…` filters directly.
            Ok(layer) => layer
                .with_syslog_identifier("chromaprod".into())
                .with_field_prefix(None)
                .boxed(),
            Err(e) => {
                eprintln!("chromaprod: journald unavailable ({e}); logging to stderr");
                format = LogFormat::Text;
                text_layer()
            }
        },
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text | LogFormat::Auto => text_layer(),
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(LogHandle {
        filter: handle,
        format,
    })
}

/// The environment variable that sets what a command run in the CLI (no
/// daemon) logs: an `EnvFilter` such as `info` or `chromaprod=debug`.
pub const CLI_LOG_ENV: &str = "CHROMAPROD_LOG";

/// Logging for a command the CLI runs itself: text on stderr, warnings and
/// errors only (the command's own output says what it did) unless
/// [`CLI_LOG_ENV`] asks for more. A second call does nothing.
pub fn init_cli() {
    let filter = std::env::var(CLI_LOG_ENV)
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(text_layer().with_filter(filter))
        .try_init();
}

fn text_layer() -> Box<dyn Layer<Registry> + Send + Sync> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .boxed()
}
