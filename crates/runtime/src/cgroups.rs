//! Where a node's cgroups live and how they are torn down, on cgroup v1 (one hierarchy per
//! controller, as here) and v2. Creating them and applying limits is the OCI runtime's work.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;

const ROOT: &str = "/sys/fs/cgroup";

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The hierarchies a runtime may create cgroups in: the one of v2, or each v1 controller's and,
/// in the hybrid layout, the `unified` one (where runc places its containers too).
pub fn hierarchies() -> Vec<PathBuf> {
    if unified() {
        return vec![PathBuf::from(ROOT)];
    }
    let Ok(entries) = fs::read_dir(ROOT) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.is_symlink() && p.join("cgroup.procs").exists())
        .collect();
    found.sort();
    found
}

/// The file whose `oom_kill` line counts the OOM kills in a cgroup (`relative` to the root of
/// the hierarchies, as OCI `cgroupsPath`s are).
pub fn oom_file(relative: &str) -> PathBuf {
    let relative = relative.trim_start_matches('/');
    if unified() {
        Path::new(ROOT).join(relative).join("memory.events")
    } else {
        Path::new(ROOT)
            .join("memory")
            .join(relative)
            .join("memory.oom_control")
    }
}

/// The directory of a cgroup in one controller's hierarchy (`memory`, `cpu`, ...), for tests
/// and stats.
pub fn controller_dir(controller: &str, relative: &str) -> PathBuf {
    let relative = relative.trim_start_matches('/');
    if unified() {
        Path::new(ROOT).join(relative)
    } else {
        Path::new(ROOT).join(controller).join(relative)
    }
}

/// Kills every process in the cgroup tree `relative` (thawing it first, since frozen processes
/// cannot die) and removes its directories, deepest first, in every hierarchy.
pub fn remove_tree(relative: &str) -> Result<(), Error> {
    let relative = relative.trim_start_matches('/');
    for hierarchy in hierarchies() {
        let top = hierarchy.join(relative);
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        // Deepest first: children before their parents.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &dirs {
            let freezer = dir.join("freezer.state");
            if freezer.exists() {
                let _ = fs::write(&freezer, "THAWED");
            }
            let _ = fs::write(dir.join("cgroup.freeze"), "0");
            kill_all(dir);
        }
        for dir in &dirs {
            remove_dir_retrying(dir)?;
        }
        // Parents shared with other nodes (`/skiff`) go when the last node's tree has gone.
        let mut parent = top.parent();
        while let Some(dir) = parent.filter(|p| *p != hierarchy) {
            if fs::remove_dir(dir).is_err() {
                break;
            }
            parent = dir.parent();
        }
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

fn kill_all(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A cgroup directory can only go once its processes are gone, which takes a moment after
/// SIGKILL.
fn remove_dir_retrying(dir: &Path) -> Result<(), Error> {
    let mut last = None;
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                kill_all(dir);
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Err(Error::io(
        "remove cgroup",
        dir,
        last.expect("an error was seen"),
    ))
}
