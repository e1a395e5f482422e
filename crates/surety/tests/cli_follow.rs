//! `surety consume --follow` rides out a server restart: the server is killed with
//! SIGKILL and started again on the same port and data, and the follower prints what
//! was published before and after, once each, and ends cleanly on a signal.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cli::{BIN, Server, signal};
use serde_json::Value;

#[test]
fn follow_survives_a_server_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_at(data.path(), "127.0.0.1:0", &[]);
    server.ok(&["topics", "create", "f"]);
    let mut follower = Command::new(BIN)
        .args(["consume", "f", "-g", "g", "--follow", "--json"])
        .args(["--wait-ms", "200", "--server", &server.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = spawn_reader(follower.stdout.take().unwrap());
    let errors = spawn_reader(follower.stderr.take().unwrap());
    let next_payload = |what: &str| -> String {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the follower printed no {what}"));
        let m: Value = serde_json::from_str(&line).unwrap();
        m["payload"].as_str().unwrap().to_string()
    };

    server.ok(&["publish", "f", "before"]);
    assert_eq!(next_payload("first message"), "before");
    // Acked before the kill, so that it is not redelivered after the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.json(&["groups", "f"])[0]["acked"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the printed message was not acked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    server.kill();
    // Let the follower find the server gone (a refused connection, or its poll cut).
    let down = errors
        .recv_timeout(Duration::from_secs(10))
        .expect("a line saying the server is unreachable");
    assert!(
        down.contains("unreachable") && down.contains("retrying"),
        "{down}"
    );
    let addr = server.addr.clone();
    drop(server);
    let server = Server::start_at(data.path(), &addr, &[]);
    server.ok(&["publish", "f", "after"]);
    assert_eq!(next_payload("message after the restart"), "after");
    let back = errors
        .recv_timeout(Duration::from_secs(10))
        .expect("a line saying the server is back");
    assert!(back.contains("reachable again"), "{back}");

    signal(&follower, libc::SIGTERM);
    let status = follower.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a normal end of --follow"
    );
    assert!(
        lines.recv_timeout(Duration::from_secs(1)).is_err(),
        "nothing printed twice"
    );
    let rest: Vec<String> = errors.try_iter().collect();
    assert!(rest.is_empty(), "no more stderr lines: {rest:?}");
    let g = &server.json(&["groups", "f"])[0];
    assert_eq!(g["lag"], 0, "both acked: {g}");
}

/// The server goes away between printing a message and acking it: the follower keeps
/// the ack and sends it after the restart (or, if the server no longer holds that
/// lease, says so and prints the message again when it is redelivered).
#[test]
fn follow_acks_after_the_restart_what_it_printed_before() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_at(data.path(), "127.0.0.1:0", &[]);
    server.ok(&["topics", "create", "big"]);
    let mut follower = Command::new(BIN)
        .args(["consume", "big", "-g", "g", "--follow", "--json"])
        .args(["--wait-ms", "200", "--server", &server.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let errors = spawn_reader(follower.stderr.take().unwrap());
    // Larger than a pipe's buffer: the follower's print blocks until we read, so the
    // server can be killed after the fetch and before the ack.
    let payload = "x".repeat(200_000);
    server
        .run(&["publish", "big"], format!("{payload}\n").as_bytes())
        .success();
    // The first byte of its line: the follower has the whole answer and is printing.
    let mut stdout = follower.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = [0u8; 1];
        stdout.read_exact(&mut first).unwrap();
        let _ = tx.send((first, stdout));
    });
    let (first, stdout) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the follower starts printing");
    server.kill();
    let lines = spawn_reader(std::io::Cursor::new(first).chain(stdout));
    let printed = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the message");
    let m: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(m["payload"].as_str().unwrap().len(), payload.len());
    let down = errors
        .recv_timeout(Duration::from_secs(10))
        .expect("unreachable");
    assert!(down.contains("unreachable"), "{down}");

    let addr = server.addr.clone();
    drop(server);
    let server = Server::start_at(data.path(), &addr, &[]);
    let back = errors.recv_timeout(Duration::from_secs(30)).expect("back");
    assert!(back.contains("reachable again"), "{back}");
    common::cli::eventually(40, "the message settled", || {
        (server.json(&["groups", "big"])[0]["lag"] == 0).then_some(())
    });
    signal(&follower, libc::SIGTERM);
    assert_eq!(follower.wait().unwrap().code(), Some(0));
    let notes: Vec<String> = errors.try_iter().collect();
    let again = lines.try_iter().count();
    if notes.iter().any(|n| n.contains("printed but not acked")) {
        assert_eq!(
            again, 1,
            "refused ack: printed again on redelivery; {notes:?}"
        );
    } else {
        assert_eq!(
            again, 0,
            "ack retried after the restart: printed once; {notes:?}"
        );
        assert_eq!(server.json(&["groups", "big"])[0]["redeliveries"], 0);
    }
}

/// Lines of `r` as they come, on a channel (closed at EOF).
fn spawn_reader(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
