//! A throw-away etcd on loopback: Debian's `etcd` binary with its own data directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// An etcd process; killed (by its PID) and reaped when dropped, its data directory removed.
pub struct EtcdServer {
    child: Child,
    client_port: u16,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it reports itself healthy. Fails with a message naming the
    /// missing package when etcd is not installed. A port taken between choosing and binding
    /// (tests run in parallel) costs a retry on other ports.
    pub fn start() -> Result<EtcdServer, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once() {
                Ok(server) => return Ok(server),
                Err(e) if e.contains("install Debian's") => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once() -> Result<EtcdServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name=skiff-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=skiff-test={peer}"))
            .arg("--log-level=error")
            // etcd before 3.4.31 cannot be asked for watch progress; it must send it by itself.
            .arg("--experimental-watch-progress-notify-interval=200ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start etcd ({e}): install Debian's etcd-server package")
            })?;
        let mut server = EtcdServer {
            child,
            client_port,
            _dir: dir,
        };
        server.wait_healthy(Duration::from_secs(30))?;
        Ok(server)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.healthy() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd at {} exited: {status}", self.endpoint()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd at {} did not become healthy",
                    self.endpoint()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let mut answer = String::new();
        conn.write_all(request.as_bytes()).is_ok()
            && conn.read_to_string(&mut answer).is_ok()
            && answer.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
