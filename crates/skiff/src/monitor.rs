//! `skiff monitor zygote ROOT` (the node's process per-container monitors are forked from) and
//! `skiff monitor exec DIR COMMAND...`, entered before anything starts a thread (no tokio, no
//! logging set-up), as forking needs.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span;

pub fn main(args: &[OsString]) -> ExitCode {
    let usage = || {
        eprintln!("usage: skiff monitor zygote ROOT | exec DIR COMMAND...");
        ExitCode::from(2)
    };
    match (args.first().and_then(|a| a.to_str()), args.get(1)) {
        (Some("zygote"), Some(root)) if args.len() == 2 => {
            skiff_runtime::monitor::zygote(Path::new(root), |dir| {
                log_to_file(&dir.join("monitor.log"))
            })
        }
        // No logging: the command's stderr is the exec's.
        (Some("exec"), Some(dir)) if args.len() > 2 => {
            let command: Vec<String> = args[2..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            match skiff_runtime::monitor::exec(Path::new(dir), &command) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(message) => {
                    eprintln!("skiff monitor exec: {message}");
                    // What container runtimes answer when a command cannot be invoked.
                    ExitCode::from(126)
                }
            }
        }
        _ => usage(),
    }
}

/// The OCI runtime's complaints land in the container's `monitor.log`. Not on stderr: the
/// container's init process is forked from the monitor and logs before it execs, when its
/// stderr is already the container's. Events at `SKIFF_MONITOR_LOG`'s level (a level name;
/// `warn` by default) and above, a line each.
fn log_to_file(path: &Path) {
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let level = std::env::var("SKIFF_MONITOR_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::WARN);
    let _ = tracing::subscriber::set_global_default(FileLog {
        file: Mutex::new(file),
        level,
    });
}

/// A monitor's logger. Not tracing-subscriber's: its span registry allocates tables that a
/// monitor, which has no spans, would keep for its container's whole life (about 40 KiB of
/// private heap in every monitor, a third of one).
struct FileLog {
    file: Mutex<std::fs::File>,
    level: LevelFilter,
}

impl tracing::Subscriber for FileLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= self.level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.level)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let metadata = event.metadata();
        let mut line = format!(
            "{} {} {}:",
            jiff::Timestamp::now(),
            metadata.level(),
            metadata.target()
        );
        event.record(&mut Line(&mut line));
        line.push('\n');
        if let Ok(mut file) = self.file.lock() {
            let _ = file.write_all(line.as_bytes());
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// An event's fields written out: the message as it is, the others as `name=value`.
struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_log_keeps_events_at_its_level_a_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.log");
        let log = FileLog {
            file: Mutex::new(std::fs::File::create(&path).unwrap()),
            level: LevelFilter::WARN,
        };
        tracing::subscriber::with_default(log, || {
            tracing::info!("not kept");
            tracing::warn!(path = "/run/x", code = 3, "cannot write {}", "state");
            tracing::error!("failed");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(
                r#" WARN skiff::monitor::tests: cannot write state path="/run/x" code=3"#
            ),
            "{text}"
        );
        assert!(
            lines[1].ends_with(" ERROR skiff::monitor::tests: failed"),
            "{text}"
        );
    }
}
