//! Running the `surety` binary's client commands against a real `surety serve`: the
//! server child (on a free port, or a given address and data directory for restarts)
//! and the outcome of one CLI run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_surety");

/// A `surety serve` child; killed on drop. Its data directory is its own temporary
/// one ([`Server::start`]) or the caller's ([`Server::start_at`]), so that a restart
/// can open the same data.
pub struct Server {
    child: Child,
    /// `http://ADDR`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub data: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut s = Self::start_at(temp.path(), "127.0.0.1:0", extra);
        s._temp = Some(temp);
        s
    }

    /// On `listen` with data in `data` (which the caller keeps).
    pub fn start_at(data: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = super::ready_line(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no ready line from surety serve on {listen}"));
        let addr = super::listen_addr(&line).to_string();
        Server {
            child,
            url: format!("http://{addr}"),
            addr,
            data: data.to_path_buf(),
            _temp: None,
        }
    }

    /// SIGKILL, and wait for the process to be gone (its port and data lock free).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `surety ARGS --server URL`, with `stdin` piped in.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Run {
        run_at(&self.url, args, stdin)
    }

    /// Runs and expects exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args, b"").success()
    }

    /// With `--json`: stdout as one JSON document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: not one JSON document: {out}"))
    }

    /// With `--json`: stdout as JSON lines.
    pub fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        self.ok(&args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().expect("exited, not signalled")
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn success(&self) -> String {
        assert_eq!(self.code(), 0, "stderr: {}", self.stderr());
        self.stdout()
    }
    /// Asserts the exit code and that stderr starts with an `error:` line; returns that
    /// line (clap's usage errors add a hint after it).
    pub fn fails(&self, code: i32) -> String {
        assert_eq!(
            self.code(),
            code,
            "stdout: {} stderr: {}",
            self.stdout(),
            self.stderr()
        );
        let err = self.stderr();
        assert!(err.starts_with("error: "), "{err}");
        err.lines().next().unwrap().to_string()
    }

    /// [`Run::fails`], and the `error:` line is all of stderr.
    pub fn fails_alone(&self, code: i32) -> String {
        let line = self.fails(code);
        assert_eq!(
            self.stderr().lines().count(),
            1,
            "one line: {}",
            self.stderr()
        );
        line
    }
}

/// Runs `surety ARGS --server URL` (no token from the environment).
pub fn run_at(url: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut full = args.to_vec();
    full.extend(["--server", url]);
    run(&full, stdin)
}

/// Runs `surety ARGS` as given.
pub fn run(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SURETY_TOKEN")
        .env_remove("SURETY_SERVER")
        .env_remove("SURETY_BACKEND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    Run(child.wait_with_output().unwrap())
}

/// Sends `sig` to a child.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
