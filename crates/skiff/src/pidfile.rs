//! `DIR/skiff.pid`: which process runs a node on a data directory, so that a second `skiff up`
//! on it is refused and `skiff down` finds the one to stop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NAME: &str = "skiff.pid";

/// The process named in `dir`'s pid file, if it still runs and is a `skiff`.
pub fn running(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(NAME))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours =
        pid != std::process::id() as i32 && String::from_utf8_lossy(&cmdline).contains("skiff");
    ours.then_some(pid)
}

/// Held while this process runs the node on `dir`; removed when dropped.
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn claim(dir: &Path) -> anyhow::Result<PidFile> {
        if let Some(pid) = running(dir) {
            bail!(
                "skiff already runs on {} (pid {pid}); stop it first (`skiff down --data-dir {}`)",
                dir.display(),
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(NAME);
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Asks the process running on `dir` to stop (SIGTERM, SIGKILL after `wait`); true if one ran.
pub fn stop(dir: &Path, wait: Duration) -> bool {
    let Some(pid) = running(dir) else {
        return false;
    };
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + wait;
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if kill(pid, None).is_ok() {
        let _ = kill(pid, Signal::SIGKILL);
    }
    true
}
