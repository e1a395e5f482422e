//! An in-process Surety server on a real socket: broker in a temp dir, the gRPC routes
//! served by axum on 127.0.0.1:0.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use surety_broker::{Broker, BrokerOptions};
use surety_client::Client;
use surety_server::AppState;

pub struct TestServer {
    pub broker: Broker,
    pub url: String,
    _dir: tempfile::TempDir,
    serve: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(None, |r| r).await
    }

    /// `wrap` may add layers around the gRPC routes (test hooks).
    pub async fn start_with(
        tokens: Option<Vec<String>>,
        wrap: impl FnOnce(axum::Router) -> axum::Router,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
        let state = AppState {
            tokens: tokens.map(Arc::new),
            ..AppState::new(broker.clone())
        };
        let app = wrap(surety_server::grpc::routes(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let serve = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestServer {
            broker,
            url,
            _dir: dir,
            serve,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url, None).await.unwrap()
    }

    /// A topic for tests: redeliveries come back at once, leases are short.
    pub async fn topic(&self, name: &str, max_deliveries: u32) {
        let config = format!(
            r#"{{"max_deliveries":{max_deliveries},"ack_wait_ms":5000,"retry_backoff":{{"initial_ms":0,"max_ms":0}}}}"#
        );
        self.client()
            .await
            .create_topic(name, &config)
            .await
            .unwrap();
    }
}

/// Polls `check` every 20 ms until it holds, failing after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of a server whose connections a test can cut, as a network
/// failure would.
pub struct CutProxy {
    pub url: String,
    links: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl CutProxy {
    pub async fn start(upstream: &str) -> CutProxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let links = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let l = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let upstream = upstream.clone();
                l.lock().unwrap().spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        CutProxy { url, links, accept }
    }

    /// Drops every open connection; new ones are accepted again.
    pub fn cut(&self) {
        self.links.lock().unwrap().abort_all();
    }
}
