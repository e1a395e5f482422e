//! The admin commands of issue 9 against a real `surety serve`: `groups list|delete|
//! seek`, `topics delete`, `peek`, and `dlq list` paging through a long queue.

mod common;

use common::cli::{Server, eventually};
use serde_json::Value;

fn group<'a>(groups: &'a Value, name: &str) -> &'a Value {
    groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {groups}"))
}

fn publish_lines(s: &Server, topic: &str, n: usize) {
    let lines: String = (0..n).map(|i| format!("m{i}\n")).collect();
    s.run(&["publish", topic], lines.as_bytes()).success();
}

#[test]
fn groups_list_delete_and_seek() {
    let s = Server::start();
    s.ok(&["topics", "create", "s"]);
    publish_lines(&s, "s", 5);
    // g reads and acks all 5; h leaves 2 unsettled (1 in flight, 1 pending).
    assert_eq!(
        s.ok(&["consume", "s", "-g", "g", "--max", "5"])
            .lines()
            .count(),
        5
    );
    s.ok(&["consume", "s", "-g", "h", "--max", "3"]);
    s.ok(&["consume", "s", "-g", "h", "--no-ack", "--max", "1"]);

    let out = s.ok(&["groups", "list", "s"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "group",
            "lag",
            "in",
            "flight",
            "pending",
            "dead",
            "letters",
            "redeliveries"
        ]
    );
    let row = |name: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{out}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(row("g"), ["g", "0", "0", "0", "0", "0"]);
    assert_eq!(row("h"), ["h", "2", "1", "1", "0", "0"]);
    // `groups TOPIC` is `groups list TOPIC`; --json is the groups array.
    assert_eq!(s.ok(&["groups", "s"]), out);
    let v = s.json(&["groups", "list", "s"]);
    assert_eq!(group(&v, "h")["in_flight"], 1);

    // Seek to earliest: g's 5 acked messages come again; nothing unsettled skipped.
    assert_eq!(
        s.ok(&["groups", "seek", "s", "g", "--to", "earliest"])
            .lines()
            .next()
            .unwrap(),
        "moved group g of topic s to earliest: 0 unsettled messages skipped, \
         5 settled messages replayed"
    );
    assert_eq!(
        s.ok(&["consume", "s", "-g", "g", "--max", "10"])
            .lines()
            .count(),
        5
    );
    // Seek to latest over 3 new messages: skipped, counted, never delivered.
    publish_lines(&s, "s", 3);
    let v = s.json(&["groups", "seek", "s", "g", "--to", "latest"]);
    assert_eq!(v["skipped"], 3, "{v}");
    assert_eq!(v["replayed"], 0, "{v}");
    assert_eq!(v["partitions"][0]["partition"], 0);
    assert_eq!(v["partitions"][0]["to"], 8);
    assert_eq!(s.ok(&["consume", "s", "-g", "g"]), "");
    assert_eq!(
        group(&s.json(&["groups", "list", "s"]), "g")["skipped_by_seek"],
        3
    );
    // To an offset, and to a time (before everything: replays the settled ones).
    let out = s.ok(&["groups", "seek", "s", "g", "--to", "0:6"]);
    assert!(
        out.starts_with("moved group g of topic s to 0:6: "),
        "{out}"
    );
    assert!(
        out.contains("\npartition  from  to  skipped  replayed\n"),
        "{out}"
    );
    let out = s.ok(&["groups", "seek", "s", "g", "--to", "@1970-01-01T00:00:00Z"]);
    assert!(out.starts_with("moved group g of topic s to @0: "), "{out}");
    // Seek does not create groups; a bad target never reaches the server.
    let err = s
        .run(&["groups", "seek", "s", "nope", "--to", "latest"], b"")
        .fails_alone(1);
    assert!(err.ends_with("(group_not_found)"), "{err}");
    assert_eq!(
        s.run(&["groups", "seek", "s", "g", "--to", "soon"], b"")
            .code(),
        2
    );

    // Delete h: its unsettled messages (2 of the first 5, all 3 later ones) are
    // dropped and counted; g is untouched.
    assert_eq!(
        s.ok(&["groups", "delete", "s", "h"]).trim(),
        "deleted group h of topic s: dropped 5 unsettled messages and 0 dead letters"
    );
    let v = s.json(&["groups", "list", "s"]);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["name"], "g");
    let err = s.run(&["groups", "delete", "s", "h"], b"").fails_alone(1);
    assert!(err.ends_with("(group_not_found)"), "{err}");
    let v = s.json(&["groups", "delete", "s", "g"]);
    assert_eq!(v["group"], "g");
    assert!(
        s.ok(&["groups", "list", "s"])
            .starts_with("topic s has no consumer groups yet")
    );
}

#[test]
fn topics_delete_needs_force_when_busy() {
    let s = Server::start();
    s.ok(&["topics", "create", "idle"]);
    publish_lines(&s, "idle", 2);
    s.ok(&["consume", "idle", "-g", "g", "--max", "2"]);
    assert_eq!(
        s.ok(&["topics", "delete", "idle"]).trim(),
        "deleted topic idle: dropped 2 messages, 1 group, 0 unsettled messages and 0 dead letters"
    );
    assert!(
        s.run(&["topics", "describe", "idle"], b"")
            .fails_alone(1)
            .ends_with("(topic_not_found)")
    );

    s.ok(&["topics", "create", "busy", "--partitions", "2"]);
    publish_lines(&s, "busy", 4);
    s.ok(&["consume", "busy", "-g", "g", "--no-ack", "--max", "1"]);
    let err = s.run(&["topics", "delete", "busy"], b"").fails_alone(1);
    assert!(
        err.ends_with(
            "(topic_busy); `surety topics delete busy --force` drops 4 messages, 1 group, \
             4 unsettled messages and 0 dead letters"
        ),
        "{err}"
    );
    assert_eq!(
        s.json(&["topics", "describe", "busy"])["name"],
        "busy",
        "nothing dropped"
    );
    let v = s.json(&["topics", "delete", "busy", "--force"]);
    assert_eq!(v["topic"], "busy");
    assert_eq!(v["messages_dropped"], 4);
    assert_eq!(v["groups_dropped"], 1);
    assert_eq!(v["unsettled_dropped"], 4);
    assert_eq!(v["dead_letters_dropped"], 0);
    assert!(s.ok(&["topics", "list"]).starts_with("no topics yet"));
}

#[test]
fn peek_leaves_delivery_counts_alone() {
    let s = Server::start();
    // No retry backoff: an expired lease is delivered again at once.
    let no_backoff = r#"{"retry_backoff":{"initial_ms":0,"max_ms":0}}"#;
    s.ok(&["topics", "create", "p", "--config-json", no_backoff]);
    s.run(&["publish", "p", "--key", "k"], b"a\nb\nc\n")
        .success();
    assert_eq!(
        s.ok(&["peek", "p"]),
        "0:0 key=k a\n0:1 key=k b\n0:2 key=k c\n"
    );
    let r = s.run(&["peek", "p", "--offset", "1", "--limit", "1"], b"");
    assert_eq!(r.success(), "0:1 key=k b\n");
    assert_eq!(
        r.stderr().trim(),
        "more: surety peek p --partition 0 --offset 2 (partition 0 holds 0..3)"
    );
    let v = s.json_lines(&["peek", "p", "--offset", "2"]);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["offset"], 2);
    assert_eq!(v[0]["payload"], "c");
    assert!(v[0].get("receipt").is_none() && v[0].get("delivery_count").is_none());
    // A delivery in between: peeking neither leases nor counts.
    s.ok(&[
        "consume",
        "p",
        "-g",
        "g",
        "--no-ack",
        "--max",
        "1",
        "--lease-ms",
        "100",
    ]);
    for _ in 0..3 {
        s.ok(&["peek", "p"]);
    }
    let mut seen: Vec<String> = Vec::new();
    eventually(20, "all three delivered", || {
        let out = s.ok(&["consume", "p", "-g", "g", "--max", "3"]);
        seen.extend(out.lines().map(str::to_string));
        (seen.len() == 3).then_some(())
    });
    seen.sort();
    assert_eq!(
        seen,
        [
            "0:0 [delivery 2] key=k a",
            "0:1 [delivery 1] key=k b",
            "0:2 [delivery 1] key=k c"
        ]
    );
    let r = s.run(&["peek", "p", "--offset", "3"], b"");
    assert_eq!(r.success(), "");
    assert!(
        r.stderr()
            .starts_with("no messages in partition 0 of topic p from offset 3")
    );
    assert!(
        s.run(&["peek", "nope"], b"")
            .fails_alone(1)
            .ends_with("(topic_not_found)")
    );
}

#[test]
fn dlq_list_pages_through_every_dead_letter_once() {
    let s = Server::start();
    s.ok(&["topics", "create", "d", "--max-deliveries", "1"]);
    publish_lines(&s, "d", 25);
    s.ok(&[
        "consume",
        "d",
        "-g",
        "g",
        "--no-ack",
        "--max",
        "25",
        "--lease-ms",
        "50",
    ]);
    eventually(20, "25 dead letters", || {
        s.ok(&["consume", "d", "-g", "g"]);
        (group(&s.json(&["groups", "list", "d"]), "g")["dead_letters"] == 25).then_some(())
    });

    let letters = s.json_lines(&["dlq", "list", "d", "-g", "g", "--page-size", "10"]);
    let offsets: Vec<u64> = letters
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..25).collect::<Vec<_>>(), "each once, in order");
    let ids: Vec<u64> = letters.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(letters[24]["payload"], "m24");

    // Human: one header, 25 rows, whatever the page size.
    let out = s.ok(&["dlq", "list", "d", "-g", "g", "--page-size", "10"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 + 25, "{out}");
    assert!(lines[0].starts_with("id  message"), "{out}");
    assert_eq!(out.matches("attempts").count(), 1, "{out}");
    assert!(
        lines[26].contains("0:24") && lines[26].ends_with("m24"),
        "{out}"
    );
    // --limit caps the total, across pages.
    let some = s.json_lines(&[
        "dlq",
        "list",
        "d",
        "-g",
        "g",
        "--page-size",
        "10",
        "--limit",
        "12",
    ]);
    assert_eq!(some.len(), 12);
    assert_eq!(some[11]["offset"], 11);
    assert_eq!(
        s.ok(&["dlq", "list", "d", "-g", "g", "-n", "3"])
            .lines()
            .count(),
        2 + 3
    );
}
