//! What the end-to-end tests share: a `skiff server` of this build and the real kubectl.

#![allow(dead_code)] // each test binary uses its own part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use skiff_testkit::SkiffServer;

pub mod cluster;

/// A server of this build on loopback.
pub fn server() -> SkiffServer {
    SkiffServer::start(Path::new(env!("CARGO_BIN_EXE_skiff")), &[])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The article's manifests, kept in the repository.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/article")
        .join(name)
}

/// Fails, naming the tool, when kubectl is missing.
fn kubectl_binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("this test needs {name} on the PATH (the machine's kubectl)"))
}

/// The directory holding `kubectl.1.<minor>` next to the dispatcher.
pub fn versioned_kubectl(minor: u32) -> PathBuf {
    let dispatcher = std::fs::canonicalize(kubectl_binary("kubectl")).expect("kubectl resolves");
    let path = dispatcher.with_file_name(format!("kubectl.1.{minor}"));
    assert!(
        path.is_file(),
        "this test needs {} (installed beside kubectl)",
        path.display()
    );
    path
}

/// The output of a finished kubectl run.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stdout of a run that must succeed.
    pub fn out(self) -> String {
        assert!(self.ok, "kubectl failed: {}{}", self.stdout, self.stderr);
        self.stdout
    }

    /// Stderr of a run that must fail.
    pub fn err(self) -> String {
        assert!(
            !self.ok,
            "kubectl should have failed but printed: {}",
            self.stdout
        );
        self.stderr
    }
}

/// Runs a kubectl binary against `server` with `args`, feeding `stdin` when given.
pub fn kubectl_with(bin: &Path, server: &SkiffServer, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(bin)
        .env("KUBECONFIG", server.kubeconfig())
        .env("HOME", server.data_dir()) // no user cache or config leaks in
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    Run::from(child.wait_with_output().expect("kubectl runs"))
}

/// The machine's kubectl (the dispatcher picks kubectl 1.33 for Skiff's reported version).
pub fn kubectl(server: &SkiffServer, args: &[&str]) -> Run {
    kubectl_with(&kubectl_binary("kubectl"), server, args, None)
}

pub fn kubectl_stdin(server: &SkiffServer, args: &[&str], stdin: &str) -> Run {
    kubectl_with(&kubectl_binary("kubectl"), server, args, Some(stdin))
}

/// A JSON document printed by kubectl.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A running `kubectl ... -w` whose output lines arrive on a channel; killed when dropped.
pub struct Watching {
    child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

/// Starts kubectl with `args` (a watch) against `server`.
pub fn watch(server: &SkiffServer, args: &[&str]) -> Watching {
    use std::io::BufRead;
    let mut child = Command::new(kubectl_binary("kubectl"))
        .env("KUBECONFIG", server.kubeconfig())
        .env("HOME", server.data_dir())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl runs");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    Watching { child, lines }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl apply -f -` of a manifest; its output.
pub fn apply(server: &SkiffServer, manifest: &str) -> String {
    kubectl_stdin(server, &["apply", "-f", "-"], manifest).out()
}

/// Runs `check` until it holds (returns `None`), for up to 20 s; otherwise fails with the last
/// state it described.
pub fn eventually(what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match check() {
            None => return,
            Some(state) => last = state,
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{what} did not happen; last seen: {last}");
}
