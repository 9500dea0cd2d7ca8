//! Progress of long operations (image import and pull, `skiff up` waiting for its node): one
//! line on stderr redrawn at most ten times a second while stderr is a terminal; nothing when
//! it is not (logs and pipes stay clean; the command's own result lines say what was done).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sizes as the image commands print them.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// The progress line of `label` having done `done` bytes of `total` in `elapsed`.
pub fn line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let rate = match elapsed.as_secs_f64() {
        s if s > 0.0 => format!(", {}/s", human_size((done as f64 / s) as u64)),
        _ => String::new(),
    };
    match total.filter(|t| *t > 0) {
        Some(total) => format!(
            "{label}: {} of {} ({}%{rate})",
            human_size(done),
            human_size(total),
            (done.min(total) * 100 / total)
        ),
        None => format!("{label}: {}{rate}", human_size(done)),
    }
}

/// The line of a wait for `what`, `elapsed` so far.
pub fn waiting(what: &str, elapsed: Duration) -> String {
    format!("waiting for {what} ({}s)", elapsed.as_secs())
}

/// One operation's line on the terminal.
pub struct Progress {
    label: String,
    started: Instant,
    drawn: Mutex<Option<Instant>>,
    terminal: bool,
}

const EVERY: Duration = Duration::from_millis(100);

impl Progress {
    pub fn new(label: impl Into<String>) -> Progress {
        Progress {
            label: label.into(),
            started: Instant::now(),
            drawn: Mutex::new(None),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `done` bytes of `total` (the first report at once, then at most every 100 ms;
    /// `last` draws regardless).
    pub fn bytes(&self, done: u64, total: Option<u64>, last: bool) {
        self.draw(last, || {
            line(&self.label, done, total, self.started.elapsed())
        });
    }

    /// Shows that the operation still waits for `what`.
    pub fn waiting(&self, what: &str) {
        self.draw(false, || waiting(what, self.started.elapsed()));
    }

    fn draw(&self, force: bool, text: impl FnOnce() -> String) {
        if !self.terminal {
            return;
        }
        let mut drawn = self.drawn.lock().expect("progress lock");
        if !force && drawn.is_some_and(|at| at.elapsed() < EVERY) {
            return;
        }
        *drawn = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", text());
        let _ = err.flush();
    }

    /// Clears the line, for the result to be printed in its place.
    pub fn finish(&self) {
        if self.terminal && self.drawn.lock().expect("progress lock").is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_how_far_and_how_fast() {
        let s = Duration::from_secs;
        assert_eq!(
            line("importing app.tar", 3 << 20, Some(12 << 20), s(2)),
            "importing app.tar: 3.0MiB of 12.0MiB (25%, 1.5MiB/s)"
        );
        assert_eq!(
            line("pulling app:v1", 512, None, Duration::ZERO),
            "pulling app:v1: 512B"
        );
        assert_eq!(
            line("x", 20, Some(10), s(1)),
            "x: 20B of 10B (100%, 20B/s)",
            "never over 100 %"
        );
        assert_eq!(
            waiting("node demo to be Ready", Duration::from_millis(2500)),
            "waiting for node demo to be Ready (2s)"
        );
    }
}
