//! Runs the built `surety serve` binary: waits for its ready line, talks HTTP to it,
//! stops it with SIGTERM and expects exit 0; checks where its settings come from.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

struct Serve {
    child: Child,
    base: String,
    ready_line: String,
}

/// Starts `surety serve ARGS` in `cwd` with a clean SURETY_* environment plus `env`.
fn serve(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surety"));
    cmd.arg("serve")
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("SURETY_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let Some(ready_line) = common::ready_line(&mut child, Duration::from_secs(30)) else {
        let _ = child.kill();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("no ready line; stderr:\n{err}");
    };
    Serve {
        base: format!("http://{}", common::listen_addr(&ready_line)),
        child,
        ready_line,
    }
}

impl Serve {
    /// SIGTERM, then the exit status must be 0; returns stderr.
    fn terminate(self) -> String {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let out = self.child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "exit {:?}; stderr:\n{stderr}",
            out.status
        );
        stderr
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut rb = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let res = rb.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_then_stops_cleanly_and_keeps_data() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path(), &["--listen", "127.0.0.1:0", "--data", "d"], &[]);
    assert!(s.ready_line.ends_with("(data d)"), "{}", s.ready_line);
    let health = reqwest::get(format!("{}/healthz", s.base)).await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    let (status, _) = call(
        Method::PUT,
        format!("{}/v1/topics/t", s.base),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, v) = call(
        Method::POST,
        format!("{}/v1/topics/t/messages", s.base),
        Some(json!({"messages": [{"payload": "kept"}]})),
    )
    .await;
    assert_eq!((status, &v["results"][0]["offset"]), (200, &json!(0)));
    let (status, v) = call(Method::GET, format!("{}/nope", s.base), None).await;
    assert_eq!((status, &v["error"]["code"]), (404, &json!("not_found")));
    let stderr = s.terminate();
    assert!(stderr.contains("broker closed"), "{stderr}");
    assert!(
        !stderr.contains("WARNING"),
        "loopback needs no warning: {stderr}"
    );

    // Same data directory: the acknowledged message is still there.
    let s = serve(dir.path(), &["--listen", "127.0.0.1:0", "--data", "d"], &[]);
    let (_, v) = call(
        Method::POST,
        format!("{}/v1/topics/t/groups/g/fetch", s.base),
        Some(json!({})),
    )
    .await;
    assert_eq!(v["messages"][0]["payload"], "kept");
    s.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flags_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("surety.toml"),
        "data = \"from-file\"\nlisten = \"127.0.0.1:0\"\nmax_message_bytes = 1000\n",
    )
    .unwrap();
    let s = serve(
        dir.path(),
        &["--config", "surety.toml", "--max-message-bytes", "3000"],
        &[
            ("SURETY_DATA", "from-env"),
            ("SURETY_MAX_MESSAGE_BYTES", "2000"),
        ],
    );
    // The env beats the file for data; the flag beats both for the size limit.
    assert!(
        s.ready_line.ends_with("(data from-env)"),
        "{}",
        s.ready_line
    );
    let put = reqwest::Client::new()
        .put(format!("{}/v1/topics/t", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let publish = |n: usize| {
        call(
            reqwest::Method::POST,
            format!("{}/v1/topics/t/messages", s.base),
            Some(json!({"messages": [{"payload": "x".repeat(n)}]})),
        )
    };
    assert_eq!(publish(2500).await.0, 200);
    let (status, v) = publish(3001).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (413, &json!("message_too_large"))
    );
    s.terminate();
    assert!(dir.path().join("from-env/topics/t").is_dir());
    assert!(!dir.path().join("from-file").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_address_without_auth_warns() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path(), &["--listen", "0.0.0.0:0", "--data", "d"], &[]);
    let stderr = s.terminate();
    assert!(
        stderr.contains("WARNING: surety listens on 0.0.0.0:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("WITHOUT auth"),
        "the log says it too: {stderr}"
    );
}

#[test]
fn bad_config_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "listn = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_surety"))
        .args(["serve", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listn"), "{stderr}");
}

/// A second server on a data directory in use must refuse to start, with a readable
/// error, rather than append to the same logs as the first.
#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path(), &["--listen", "127.0.0.1:0", "--data", "d"], &[]);
    let second = Command::new(env!("CARGO_BIN_EXE_surety"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data", "d"])
        .current_dir(dir.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("is in use by another broker"), "{stderr}");
    first.terminate();
}
