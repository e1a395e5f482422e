//! The `grpc` fixture: a `surety serve` child on a temp data dir and a port of its own,
//! reached with `surety_client::Client`.

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surety_client::Client;
use surety_conformance::{
    BoxFuture, ChildConsumer, ChildRelay, KillMode, TransportFixture, Unsupported,
};
use surety_core::Transport;

use crate::common::cli::Server;

pub struct Grpc {
    /// `http://127.0.0.1:PORT`, the same across restarts.
    url: String,
    listen: String,
    data: PathBuf,
    server: Mutex<Option<Server>>,
    _dir: tempfile::TempDir,
}

/// Starts `surety serve` on a fresh data dir.
pub fn start() -> BoxFuture<'static, Arc<dyn TransportFixture>> {
    Box::pin(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let listen = format!("127.0.0.1:{}", free_port());
        let server = serve(data.clone(), listen.clone()).await;
        Arc::new(Grpc {
            url: server.url.clone(),
            listen,
            data,
            server: Mutex::new(Some(server)),
            _dir: dir,
        }) as Arc<dyn TransportFixture>
    })
}

/// What a child consumer connects with.
pub fn connect_endpoint(url: String) -> BoxFuture<'static, Arc<dyn Transport>> {
    Box::pin(async move { connect(&url).await })
}

async fn connect(url: &str) -> Arc<dyn Transport> {
    let mut attempts = 0;
    loop {
        match Client::connect(url, None).await {
            Ok(c) => return Arc::new(c),
            Err(e) if attempts < 100 => {
                attempts += 1;
                eprintln!("connect {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect {url}: {e}"),
        }
    }
}

async fn serve(data: PathBuf, listen: String) -> Server {
    tokio::task::spawn_blocking(move || Server::start_at(&data, &listen, &[]))
        .await
        .expect("surety serve started")
}

/// A port below the ephemeral range (so that no outgoing connection takes it while the
/// server is down for a restart), free right now.
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

impl TransportFixture for Grpc {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn connect(&self) -> BoxFuture<'_, Arc<dyn Transport>> {
        Box::pin(connect(&self.url))
    }

    fn restart_server(&self) -> BoxFuture<'_, Result<(), Unsupported>> {
        Box::pin(async move {
            let old = self.server.lock().unwrap().take();
            if let Some(mut old) = old {
                old.kill(); // SIGKILL, and reaped: port and data lock are free
            }
            let server = serve(self.data.clone(), self.listen.clone()).await;
            assert_eq!(server.url, self.url, "restarted on the same address");
            *self.server.lock().unwrap() = Some(server);
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
