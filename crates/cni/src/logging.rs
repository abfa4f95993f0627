//! Logging for the plugin: `tracing` to the configured `log_file` (appended), or to stderr.
//! Never to stdout, which carries the result.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (and failures to open the file, which
/// fall back to stderr) are harmless.
pub fn init(level: &str, log_file: Option<&str>) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let file = log_file.and_then(|path| {
        if let Some(dir) = std::path::Path::new(path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("serval-cni: cannot open log file {path}: {e}; logging to stderr");
                None
            }
        }
    });
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(Mutex::new(f))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
