//! `skiff monitor zygote ROOT` (the node's process per-container monitors are forked from) and
//! `skiff monitor exec DIR COMMAND...`, entered before anything starts a thread (no tokio, no
//! logging set-up), as forking needs.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

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
/// stderr is already the container's. The fmt subscriber starts no thread.
fn log_to_file(path: &Path) {
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_MONITOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .init();
}
