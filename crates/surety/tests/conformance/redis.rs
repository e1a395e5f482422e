//! The `redis` fixture: a `redis-server` of its own per trial, started by
//! `scripts/redis-durable` (AOF on, `appendfsync always`) on a temp dir and a free port,
//! reached with `surety_redis::RedisTransport`. Restarts are SIGKILL + restart on the
//! same dir (every confirmed write is in the AOF); consumers die as SIGKILLed child
//! processes, and outbox relays are `surety outbox relay --backend redis://...` processes.
//! Without `redis-server` on the machine every trial is skipped with the
//! reason, except under `CI=true`, where that fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surety_conformance::{
    BoxFuture, ChildConsumer, ChildRelay, KillMode, TransportFixture, Unsupported,
};
use surety_core::Transport;
use surety_redis::{RedisOptions, RedisTransport};

pub struct Redis {
    url: String,
    port: u16,
    dir: PathBuf,
    server: Mutex<Option<Child>>,
    _tmp: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis-durable")
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    let log = std::fs::File::create(dir.join("redis.log")).unwrap();
    Command::new(script())
        .arg(port.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start scripts/redis-durable: {e}"))
}

async fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 64];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut buf)
                    .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether this machine has a `redis-server` (else every trial says why it was skipped).
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn start() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    Box::pin(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("aof");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = spawn(port, &dir);
        wait_ready(port).await;
        Arc::new(Redis {
            url: format!("redis://127.0.0.1:{port}?reclaim_interval=50ms"),
            port,
            dir,
            server: Mutex::new(Some(child)),
            _tmp: tmp,
        }) as Arc<dyn TransportFixture>
    })
}

/// What a child consumer connects with.
pub fn connect_endpoint(url: String) -> BoxFuture<'static, Arc<dyn Transport>> {
    Box::pin(async move { connect(&url).await })
}

pub async fn connect(url: &str) -> Arc<dyn Transport> {
    let parsed = reqwest::Url::parse(url).unwrap();
    let options = RedisOptions::from_url_query(&parsed).unwrap();
    let mut attempts = 0;
    loop {
        match RedisTransport::connect(url, options.clone()).await {
            Ok(t) => return Arc::new(t),
            Err(e) if attempts < 100 => {
                attempts += 1;
                eprintln!("connect {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let mut x = RandomState::new().hash_one(std::process::id());
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 20_000 + (x >> 33) as u16 % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

impl TransportFixture for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(connect(&self.url))
    }

    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>> {
        Box::pin(async move {
            let old = self.server.lock().unwrap().take();
            if let Some(mut old) = old {
                let _ = old.kill(); // SIGKILL
                let _ = old.wait();
            }
            let child = spawn(self.port, &self.dir);
            *self.server.lock().unwrap() = Some(child);
            wait_ready(self.port).await;
            Ok(())
        })
    }

    fn consumer_kill(&self) -> KillMode {
        KillMode::Process
    }

    fn spawn_consumer(&self, spec: &ChildConsumer) -> Result<Child, Unsupported> {
        crate::spawn_consumer(spec, &self.url)
    }

    fn spawn_relay(&self, relay: &ChildRelay) -> Result<Child, Unsupported> {
        crate::spawn_cli_relay(relay, &self.url)
    }
}
