//! An in-process server on an ephemeral port with its own data directory, and a small
//! JSON client for it.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use surety_server::{Config, Server, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    /// Sent as `Authorization: Bearer` when set.
    pub token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), surety_server::ServerError>>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_, _| {}).await
    }

    /// `tweak` may change the settings; it gets the data directory's parent to put files in.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings, &Path)) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), tweak).await
    }

    /// Stops the server gracefully and starts a new one on the same data directory.
    pub async fn restart(self) -> TestServer {
        self.restart_with(|_| {}).await
    }

    /// [`Self::restart`], calling `between` with the data directory while no server runs.
    pub async fn restart_with(mut self, between: impl FnOnce(&Path)) -> TestServer {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        between(&self.dir.path().join("data"));
        Self::start_in(self.dir, |_, _| {}).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Settings, &Path),
    ) -> TestServer {
        let mut settings = Settings {
            data: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".into()),
            ..Settings::default()
        };
        tweak(&mut settings, dir.path());
        let server = Server::bind(Config::from_settings(settings).unwrap())
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            base,
            client: reqwest::Client::new(),
            token: None,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    /// Graceful shutdown; the server must finish cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends `body` as JSON (none: no body) and returns the status and the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        answer(rb.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// One group of a topic, as `GET /v1/topics/{topic}` shows it.
    pub async fn group(&self, topic: &str, group: &str) -> Value {
        let (s, t) = self.get(&format!("/v1/topics/{topic}")).await;
        assert_eq!(s, StatusCode::OK, "{t}");
        t["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == group)
            .unwrap_or_else(|| panic!("no group {group} in {t}"))
            .clone()
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let res = self.request(Method::GET, "/metrics").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.text().await.unwrap()
    }

    /// Creates a topic with these settings (`{}` for defaults).
    pub async fn topic(&self, name: &str, config: Value) {
        let (s, v) = self.put(&format!("/v1/topics/{name}"), config).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    pub async fn publish_texts(&self, topic: &str, texts: &[&str]) -> Value {
        let messages: Vec<Value> = texts
            .iter()
            .map(|t| serde_json::json!({"payload": t}))
            .collect();
        let (s, v) = self
            .post(
                &format!("/v1/topics/{topic}/messages"),
                serde_json::json!({"messages": messages}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn fetch(&self, topic: &str, group: &str, body: Value) -> Vec<Value> {
        let (s, v) = self
            .post(&format!("/v1/topics/{topic}/groups/{group}/fetch"), body)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["messages"].as_array().unwrap().clone()
    }

    /// The topic's end offsets (what is stored).
    pub async fn end_offsets(&self, topic: &str) -> Value {
        let (s, v) = self.get(&format!("/v1/topics/{topic}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["end_offsets"].clone()
    }
}

/// Status and JSON body; a non-JSON body fails the test (every answer but /healthz and
/// /metrics is JSON).
pub async fn answer(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "{status} {ct:?}: {text}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

/// The value of one series (`name{labels}`) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls `check` every 50 ms until it holds, failing after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Asserts an error answer: status, code, and a non-empty message.
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    let (s, v) = got;
    assert_eq!(
        (*s, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}
