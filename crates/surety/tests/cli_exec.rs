//! `surety consume --exec CMD` against a real `surety serve`: exit 0 acks, anything else
//! nacks with stderr's last line as the reason (so `max_deliveries` failures end in the
//! dead letters with it), the `SURETY_*` variables, `--concurrency`, and a SIGTERM that
//! lets the running command finish and acks its message.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{BIN, Server, eventually, signal};

/// `surety consume TOPIC -g GROUP --exec SCRIPT EXTRA.. --server URL` as a child.
fn spawn_exec(s: &Server, topic: &str, group: &str, script: &str, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["consume", topic, "-g", group, "--exec", script])
        .args(extra)
        .args(["--backend", &s.url])
        .env_remove("SURETY_TOKEN")
        .env_remove("SURETY_SERVER")
        .env_remove("SURETY_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit on its own within `secs`, else kills it and fails.
fn wait_done(mut child: Child, secs: u64) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "consume --exec did not stop within {secs}s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn exit_status_settles_and_stderr_is_the_dead_letter_reason() {
    let s = Server::start();
    s.ok(&["topics", "create", "jobs", "--max-deliveries", "2"]);
    for (seq, payload) in ["ok-1", "bad", "ok-2"].iter().enumerate() {
        s.ok(&[
            "publish",
            "jobs",
            payload,
            "--key",
            "k1",
            "--producer-id",
            "p1",
            "--sequence",
            &seq.to_string(),
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("seen");
    let script = format!(
        "p=$(cat); echo \"$p|$SURETY_TOPIC|$SURETY_GROUP|$SURETY_KEY|$SURETY_DELIVERY_COUNT|\
         $SURETY_PRODUCER_ID|$SURETY_SEQUENCE|$SURETY_MESSAGE_ID\" >> {log}; \
         if [ \"$p\" = bad ]; then echo 'first line' >&2; echo \"upstream said no to $p\" >&2; exit 3; fi",
        log = log.display()
    );
    // Two good ones, and the bad one twice (max_deliveries 2): four commands.
    let child = spawn_exec(
        &s,
        "jobs",
        "g",
        &script,
        &["--max", "4", "--nack-delay", "0s"],
    );
    let out = wait_done(child, 60);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("nacked: upstream said no to bad"),
        "{stderr}"
    );
    assert!(
        stderr.contains("4 messages handled, 2 acked, 2 nacked"),
        "{stderr}"
    );

    let seen = read(&log);
    let mut lines: Vec<&str> = seen.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "bad|jobs|g|k1|1|p1|1|p1/1",
            "bad|jobs|g|k1|2|p1|1|p1/1",
            "ok-1|jobs|g|k1|1|p1|0|p1/0",
            "ok-2|jobs|g|k1|1|p1|2|p1/2",
        ],
        "{seen}"
    );

    let dead = s.json_lines(&["dlq", "list", "jobs", "-g", "g"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "upstream said no to bad");
    assert_eq!(dead[0]["attempts"], 2);
    let groups = s.json(&["groups", "jobs"]);
    assert_eq!(groups[0]["lag"], 0, "the good ones are acked: {groups}");
}

#[test]
fn sigterm_lets_running_commands_finish_and_acks_them() {
    let s = Server::start();
    s.ok(&["topics", "create", "slow"]);
    s.ok(&["publish", "slow", "a"]);
    s.ok(&["publish", "slow", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let done = dir.path().join("done");
    let script = format!(
        "p=$(cat); echo $p >> {started}; sleep 1; echo $p >> {done}",
        started = started.display(),
        done = done.display()
    );
    let child = spawn_exec(&s, "slow", "g", &script, &["--concurrency", "2"]);
    eventually(20, "both commands running", || {
        (read(&started).lines().count() == 2).then_some(())
    });
    signal(&child, libc::SIGTERM);
    let out = wait_done(child, 20);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(read(&done).lines().count(), 2, "both finished: {stderr}");
    assert!(stderr.contains("2 acked"), "{stderr}");
    // Acked: nothing is delivered again, even after the lease.
    let groups = s.json(&["groups", "slow"]);
    assert_eq!(groups[0]["lag"], 0, "{groups}");
    assert_eq!(groups[0]["in_flight"], 0, "{groups}");
}

#[test]
fn exec_refuses_what_it_cannot_do() {
    let s = Server::start();
    let run = s.run(
        &["consume", "nope", "-g", "g", "--exec", "true", "--max", "1"],
        b"",
    );
    let err = run.fails(1);
    assert!(err.contains("topic_not_found"), "{err}");
    let run = s.run(
        &["consume", "t", "-g", "g", "--exec", "true", "--no-ack"],
        b"",
    );
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let run = s.run(&["consume", "t", "-g", "g", "--concurrency", "2"], b"");
    assert_eq!(
        run.code(),
        2,
        "--concurrency needs --exec: {}",
        run.stderr()
    );
}
