//! The client commands (`publish`, `consume`, `topics`, `groups`, `dlq`) run as the
//! built binary against a real `surety serve` on a free port: output in both formats,
//! exit codes, and the one-line errors for bad input and a server that is down.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{BIN, Server, eventually, run, run_at, signal};
use serde_json::{Value, json};

#[test]
fn publish_consume_and_describe() {
    let s = Server::start();
    assert_eq!(
        s.ok(&["topics", "create", "orders", "--partitions", "2"])
            .trim(),
        "created topic orders (2 partitions, max deliveries 5, ack wait 30000 ms)"
    );
    assert!(
        s.ok(&["topics", "create", "orders"])
            .starts_with("topic already exists:")
    );

    // One message: key, headers, human output.
    let out = s.ok(&[
        "publish", "orders", "first", "--key", "k1", "--header", "a=b", "--header", "c=",
    ]);
    assert!(
        out.starts_with("published 1 message to orders (") && out.trim().ends_with(')'),
        "{out}"
    );
    // A file with bytes that are not UTF-8 goes as base64 and comes back so.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, [0xff, 0x00, 0x01]).unwrap();
    let v = s.json(&[
        "publish",
        "orders",
        "--file",
        file.to_str().unwrap(),
        "--key",
        "k1",
    ]);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    // Stdin in several batches: every line stored once, in order per partition.
    let lines: String = (1..=1200).map(|i| format!("line {i}\n")).collect();
    let out = s
        .run(
            &["publish", "orders", "--batch", "500", "--json"],
            lines.as_bytes(),
        )
        .success();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1200);

    // Consume: human lines, then JSON lines; each printed message is acked.
    let out = s.ok(&["consume", "orders", "--group", "g", "--max", "2"]);
    let human: Vec<&str> = out.lines().collect();
    assert_eq!(human.len(), 2, "{out}");
    for l in &human {
        let (at, rest) = l.split_once(' ').unwrap();
        assert!(at.split_once(':').is_some(), "partition:offset first: {l}");
        assert!(rest.starts_with("[delivery 1] "), "{l}");
    }
    let out = s.ok(&[
        "consume", "orders", "--group", "g", "--max", "2000", "--json",
    ]);
    let msgs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        msgs.len(),
        1202 - 2,
        "everything but the 2 already consumed"
    );
    assert!(
        msgs.iter().any(|m| m["payload_base64"] == "/wAB"),
        "binary payload comes back as base64"
    );
    // The first message of partition 1 may have been among the 2 consumed above.
    if let Some(m) = msgs.iter().find(|m| m["payload"] == "first") {
        assert_eq!(m["key"], "k1");
        assert_eq!(m["headers"], json!({"a": "b", "c": ""}));
    }
    let nothing = s.run(&["consume", "orders", "--group", "g"], b"");
    assert_eq!(nothing.success(), "");
    assert!(
        nothing.stderr().contains("no messages ready"),
        "{}",
        nothing.stderr()
    );

    // Describe: the group acked everything, and the counters add up.
    let out = s.ok(&["topics", "describe", "orders"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("g "))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "g", "0", "0", "0", "1202", "1202", "0", "0", "0", "0", "yes"
        ]
    );
    let v = s.json(&["topics", "describe", "orders"]);
    assert_eq!(v["groups"][0]["acked"], 1202);
    let v = s.json(&["topics", "list"]);
    assert_eq!(v[0]["name"], "orders");
    assert!(
        s.ok(&["topics", "list"])
            .contains("orders           2      1202")
    );
    let v = s.json(&["groups", "orders"]);
    assert_eq!(v[0]["name"], "g");
    assert!(
        s.ok(&["groups", "orders"])
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("g ")
    );
}

#[test]
fn idempotent_publish_is_reported_as_duplicate() {
    let s = Server::start();
    s.ok(&["topics", "create", "t"]);
    let args = [
        "publish",
        "t",
        "x",
        "--producer-id",
        "p1",
        "--sequence",
        "7",
    ];
    let first = s.ok(&args);
    let again = s.ok(&args);
    assert!(
        again.contains("1 of them was already stored (duplicate)"),
        "{again}"
    );
    assert_eq!(first.lines().next(), again.split(';').next());
    // Stdin lines take consecutive sequences: 7 is a duplicate, 8 and 9 are new.
    let out = s
        .run(
            &[
                "publish",
                "t",
                "--producer-id",
                "p1",
                "--sequence",
                "7",
                "--json",
            ],
            b"x\ny\nz\n",
        )
        .success();
    let v: Value = serde_json::from_str(&out).unwrap();
    let dups: Vec<bool> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["duplicate"].as_bool().unwrap())
        .collect();
    assert_eq!(dups, [true, false, false]);
}

#[test]
fn dead_letters_list_show_resend_purge() {
    let s = Server::start();
    s.ok(&["topics", "create", "d", "--max-deliveries", "1"]);
    s.ok(&["publish", "d", "poison", "--header", "h=v", "--key", "kk"]);
    // Not acked, the lease runs out; the next fetch dead-letters it (1 delivery max).
    let out = s.ok(&["consume", "d", "-g", "g", "--no-ack", "--lease-ms", "50"]);
    assert_eq!(out.trim(), "0:0 [delivery 1] key=kk poison");
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(s.ok(&["consume", "d", "-g", "g"]), "");

    // JSON lines: one object per dead letter.
    let v = s.json(&["dlq", "list", "d", "-g", "g"]);
    assert!(v.is_object(), "{v}");
    let id = v["id"].as_u64().unwrap().to_string();
    let out = s.ok(&["dlq", "list", "d", "-g", "g"]);
    assert!(out.lines().nth(2).unwrap().contains("0:0"), "{out}");
    assert!(out.contains("poison"), "{out}");
    let out = s.ok(&["dlq", "show", "d", "-g", "g", &id]);
    assert!(
        out.contains("headers") && out.contains(r#"{"h":"v"}"#),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("payload                poison"),
        "{out}"
    );
    assert_eq!(
        s.json(&["dlq", "show", "d", "-g", "g", &id])["payload"],
        "poison"
    );
    let missing = s.run(&["dlq", "show", "d", "-g", "g", "999"], b"");
    assert!(missing.fails(1).ends_with("(dead_letter_not_found)"));
    assert_eq!(
        s.json(&["groups", "d"])[0]["dead_letters"],
        1,
        "the group counts its dead letter"
    );

    // Purge and resend need an explicit selection.
    let err = s.run(&["dlq", "purge", "d", "-g", "g"], b"");
    assert_eq!(err.code(), 2);
    assert!(err.stderr().contains("--id <ID>|--all"), "{}", err.stderr());
    assert_eq!(s.run(&["dlq", "resend", "d", "-g", "g"], b"").code(), 2);

    assert_eq!(
        s.ok(&["dlq", "resend", "d", "-g", "g", "--id", &id]).trim(),
        "resent 1 dead letter of group g on topic d"
    );
    let out = s.ok(&["consume", "d", "-g", "g", "--no-ack", "--lease-ms", "50"]);
    assert!(out.ends_with("[delivery 1] key=kk poison\n"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(150));
    s.ok(&["consume", "d", "-g", "g"]);
    assert_eq!(
        s.json(&["dlq", "purge", "d", "-g", "g", "--all"])["purged"],
        1
    );
    assert_eq!(
        s.ok(&["dlq", "list", "d", "-g", "g"]).trim(),
        "no dead letters for group g on topic d"
    );
}

#[test]
fn errors_are_one_line_with_exit_codes() {
    let s = Server::start();
    // Server-side errors: exit 1 with the server's code.
    assert_eq!(
        s.run(&["publish", "nope", "x"], b"").fails(1),
        r#"error: topic "nope" does not exist (topic_not_found)"#
    );
    assert!(
        s.run(&["topics", "describe", "nope"], b"")
            .fails(1)
            .ends_with("(topic_not_found)")
    );
    assert!(
        s.run(&["topics", "create", "bad!name"], b"")
            .fails(1)
            .ends_with("(invalid_name)")
    );
    assert!(
        s.run(&["topics", "create", "t", "--partitions", "0"], b"")
            .fails(1)
            .ends_with("(invalid_config)")
    );
    s.ok(&["topics", "create", "t"]);
    assert!(
        s.run(&["publish", "t", "x", "--header", "surety.x=1"], b"")
            .fails(1)
            .ends_with("(invalid_message)")
    );
    // Usage errors: exit 2, nothing sent.
    let bad_header = s
        .run(&["publish", "t", "x", "--header", "nope"], b"")
        .fails(2);
    assert!(bad_header.contains("expected NAME=VALUE"), "{bad_header}");
    assert_eq!(
        s.run(&["publish", "t", "--id", "i"], b"a\nb\n").fails(2),
        "error: --id names a single message, but stdin has more than one line"
    );
    assert!(
        s.run(&["publish", "t"], b"\n\n")
            .fails(2)
            .contains("nothing to publish")
    );
    assert_eq!(
        s.run(&["publish", "t", "x", "--producer-id", "p"], b"")
            .code(),
        2
    );
    assert!(
        s.run(&["topics", "create", "t", "--config-json", "[1]"], b"")
            .fails(2)
            .contains("JSON object")
    );
    assert!(
        run_at("ftp://localhost:7333", &["topics", "list"], b"")
            .fails(2)
            .contains("--backend \"ftp://localhost:7333\": unknown scheme")
    );
    assert_eq!(
        s.json(&["topics", "describe", "t"])["groups"],
        Value::Array(vec![])
    );
    assert!(
        s.ok(&["consume", "t", "-g", "g"]).is_empty(),
        "nothing was published by the refused commands"
    );
}

#[test]
fn server_down_is_explained() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        &["topics", "list"][..],
        &["publish", "t", "x"],
        &["consume", "t", "-g", "g"],
        &["groups", "list", "t"],
        &["peek", "t"],
        &["dlq", "list", "t", "-g", "g"],
    ] {
        assert_eq!(
            run_at(&url, args, b"").fails_alone(1),
            format!(
                "error: cannot reach the Surety server at {url}: is it running? \
                 (start it with: surety serve)"
            )
        );
    }
}

#[test]
fn help_teaches_with_examples() {
    for cmd in [
        &["publish"][..],
        &["consume"],
        &["ack"],
        &["nack"],
        &["peek"],
        &["topics"],
        &["topics", "create"],
        &["topics", "describe"],
        &["topics", "delete"],
        &["groups"],
        &["groups", "list"],
        &["groups", "delete"],
        &["groups", "seek"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "purge"],
    ] {
        let out = Command::new(BIN).args(cmd).arg("--help").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "{cmd:?} --help has no example:\n{text}"
        );
        assert!(text.contains("surety "), "{cmd:?}");
        assert!(
            !text.contains("same partition, in order"),
            "{cmd:?} promises per-key order"
        );
    }
}

#[test]
fn follow_prints_and_acks_until_ctrl_c() {
    let s = Server::start();
    s.ok(&["topics", "create", "f"]);
    let mut follower = Command::new(BIN)
        .args([
            "consume",
            "f",
            "-g",
            "g",
            "--follow",
            "--json",
            "--wait-ms",
            "200",
        ])
        .args(["--server", &s.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    s.run(&["publish", "f"], b"a\nb\nc\n").success();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let m: Value = serde_json::from_str(&line).unwrap();
        payloads.push(m["payload"].as_str().unwrap().to_string());
    }
    assert_eq!(payloads, ["a", "b", "c"]);
    signal(&follower, libc::SIGINT);
    let status = follower.wait().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C is a normal end of --follow");
    // What was printed was acked.
    let v = s.json(&["groups", "f"]);
    assert_eq!(v[0]["acked"], 3);
    assert_eq!(v[0]["lag"], 0);
}

#[test]
fn bearer_token_from_flag_or_env() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let s = Server::start_with(&["--auth-token-file", tokens.to_str().unwrap()]);
    let err = s.run(&["topics", "list"], b"").fails(1);
    assert!(err.ends_with("; pass --token or set SURETY_TOKEN"), "{err}");
    assert!(
        s.ok(&["topics", "list", "--token", "s3cret"])
            .starts_with("no topics yet")
    );
    let out = Command::new(BIN)
        .args(["topics", "list", "--server", &s.url])
        .env("SURETY_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One delivery of `topic` to `group`, not acked; its JSON.
fn fetch_one(s: &Server, topic: &str, group: &str) -> Option<Value> {
    s.json_lines(&["consume", topic, "-g", group, "--no-ack", "--max", "1"])
        .pop()
}

#[test]
fn nack_with_delay_and_reason_then_dead_letter() {
    let s = Server::start();
    s.ok(&["topics", "create", "n", "--max-deliveries", "2"]);
    s.ok(&["publish", "n", "flaky"]);
    let first = fetch_one(&s, "n", "g").expect("the message");
    assert_eq!(first["delivery_count"], 1);
    let receipt = first["receipt"].as_str().unwrap();

    let nacked_at = Instant::now();
    assert_eq!(
        s.ok(&[
            "nack",
            "n",
            "-g",
            "g",
            receipt,
            "--delay",
            "1s",
            "--reason",
            "try later"
        ])
        .trim(),
        "nacked 1 delivery of group g on topic n; delivered again in 1s at the earliest"
    );
    assert!(
        fetch_one(&s, "n", "g").is_none() || nacked_at.elapsed() >= Duration::from_secs(1),
        "a nack with --delay 1s is not delivered again at once"
    );
    let second = eventually(20, "the redelivery", || fetch_one(&s, "n", "g"));
    assert!(nacked_at.elapsed() >= Duration::from_secs(1));
    assert_eq!(second["delivery_count"], 2);
    assert_eq!(second["payload"], "flaky");

    // At max_deliveries the nack moves it to the dead letters, with its reason.
    let v = s.json(&[
        "nack",
        "n",
        "-g",
        "g",
        second["receipt"].as_str().unwrap(),
        "--delay-ms",
        "0",
        "--reason",
        "gave up: upstream 503",
    ]);
    assert_eq!(v["nacked"], 1);
    let dead = s.json_lines(&["dlq", "list", "n", "-g", "g"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "gave up: upstream 503");
    assert_eq!(dead[0]["attempts"], 2);

    // A batch whose every receipt is refused: the server's refusal, one line.
    let err = s
        .run(&["ack", "n", "-g", "g", "not-a-receipt"], b"")
        .fails_alone(1);
    assert!(err.ends_with("(receipt_invalid)"), "{err}");
    // Bounds and conflicts are refused before anything is sent.
    let err = s
        .run(&["nack", "n", "-g", "g", receipt, "--delay", "13h"], b"")
        .fails_alone(2);
    assert!(err.contains("12h (43200000 ms)"), "{err}");
    assert_eq!(
        s.run(
            &[
                "nack",
                "n",
                "-g",
                "g",
                receipt,
                "--delay",
                "1s",
                "--delay-ms",
                "5"
            ],
            b""
        )
        .code(),
        2
    );
    assert_eq!(
        s.run(&["nack", "n", "-g", "g"], b"").code(),
        2,
        "receipts required"
    );
}

/// Each receipt stands on its own (CONTRACT.md): the valid one is acked, the refused
/// one is named on stderr, and the exit status says not all went through.
#[test]
fn ack_batch_reports_refused_receipts() {
    let s = Server::start();
    s.ok(&["topics", "create", "a"]);
    s.ok(&["publish", "a", "x"]);
    let m = fetch_one(&s, "a", "g").unwrap();
    let run = s.run(
        &[
            "ack",
            "a",
            "-g",
            "g",
            m["receipt"].as_str().unwrap(),
            "bogus",
        ],
        b"",
    );
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_eq!(
        run.stdout().trim(),
        "acked 1 of 2 deliveries of group g on topic a"
    );
    let err = run.stderr();
    assert!(
        err.starts_with("refused receipt 1 (bogus): ") && err.contains("(receipt_invalid)"),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with("error: 1 of 2 receipts refused"),
        "{err}"
    );
    assert_eq!(s.json(&["groups", "a"])[0]["acked"], 1);
}

#[test]
fn publish_delay_holds_messages_back() {
    let s = Server::start();
    s.ok(&["topics", "create", "later"]);
    let sent = Instant::now();
    let out = s.ok(&["publish", "later", "--delay", "1500ms", "wake up"]);
    assert!(out.trim().ends_with("; delivered from 1500ms on"), "{out}");
    assert!(
        s.ok(&["consume", "later", "-g", "g"]).is_empty()
            || sent.elapsed() >= Duration::from_millis(1500),
        "not delivered before its delay"
    );
    let m = eventually(20, "the delayed message", || fetch_one(&s, "later", "g"));
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    assert_eq!(m["payload"], "wake up");
    assert_eq!(m["delivery_count"], 1);

    let err = s
        .run(&["publish", "later", "--delay", "13h", "x"], b"")
        .fails_alone(2);
    assert_eq!(
        err,
        "error: --delay 13h is longer than the longest delay the server accepts, 12h (43200000 ms)"
    );
    assert!(
        s.run(&["publish", "later", "--delay", "5", "x"], b"")
            .stderr()
            .contains("like 1500ms, 30s")
    );
}

#[test]
fn client_flags_before_or_after_the_command() {
    let s = Server::start();
    s.ok(&["topics", "create", "t"]);
    let before = run(&["--server", &s.url, "--json", "topics", "list"], b"").success();
    let after = run(&["topics", "list", "--server", &s.url, "--json"], b"").success();
    let between = run(&["topics", "--json", "list", "--server", &s.url], b"").success();
    assert_eq!(before, after);
    assert_eq!(before, between);
    let v: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(v[0]["name"], "t");
    // After the command wins over before it.
    let out = run(
        &[
            "--server",
            "127.0.0.1:1",
            "topics",
            "list",
            "--server",
            &s.url,
        ],
        b"",
    )
    .success();
    assert!(out.contains('t'), "{out}");
    // Also from the environment, below both.
    let out = Command::new(BIN)
        .args(["topics", "list", "--json"])
        .env("SURETY_SERVER", &s.url)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Client flags do not go with serve.
    let r = run(&["--json", "serve", "--listen", "127.0.0.1:0"], b"");
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr().contains("not with serve, verify or bench"),
        "{}",
        r.stderr()
    );
}

#[test]
fn server_without_scheme_is_http() {
    let s = Server::start();
    s.ok(&["topics", "create", "t"]);
    let port = s.addr.rsplit(':').next().unwrap();
    for server in [s.addr.clone(), format!("localhost:{port}")] {
        let v: Value = serde_json::from_str(
            &run(&["topics", "list", "--json", "--server", &server], b"").success(),
        )
        .unwrap();
        assert_eq!(v[0]["name"], "t", "{server}");
    }
    let err = run(&["topics", "list", "--server", "localhost:port"], b"").fails_alone(2);
    assert!(
        err.starts_with("error: --backend \"localhost:port\""),
        "{err}"
    );
}

/// A server that accepts and hangs up: a transport error after the connection, whose
/// reqwest/hyper chain repeats itself unless deduplicated.
#[test]
fn transport_errors_are_one_line_without_repeats() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let err = run_at(&format!("http://{addr}"), &["topics", "list"], b"").fails_alone(1);
    let line = err.strip_prefix("error: ").unwrap();
    assert!(line.starts_with("request to http://"), "{err}");
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..]
                .iter()
                .any(|q| q.contains(p) || p.contains(q)),
            "cause repeated in {err:?}"
        );
    }
}
