//! What the client commands print: aligned tables and single lines for people, JSON for
//! scripts (`--json`), and the small renderings both share (payloads, offset lists).
//! Everything goes to stdout; progress and errors go to stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;
pub use surety_bench::table::{Align, Table};
use surety_wire::rest;

use super::error::CliError;

/// Writes one line to stdout and flushes it, so a consumer's line is out before its ack.
pub fn line(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Io {
            what: "cannot write to stdout".into(),
            source,
        })
}

/// A whole JSON document, indented (for `--json` of one-shot commands).
pub fn json<T: Serialize + ?Sized>(v: &T) -> Result<(), CliError> {
    line(&serde_json::to_string_pretty(v).expect("an answer always serializes"))
}

/// One JSON object per line (for streams meant for `jq`).
pub fn json_line<T: Serialize + ?Sized>(v: &T) -> Result<(), CliError> {
    line(&serde_json::to_string(v).expect("an answer always serializes"))
}

/// A table, or `empty` when it has no rows (a header alone tells people nothing).
pub fn table(t: &Table, rows: usize, empty: &str) -> Result<(), CliError> {
    if rows == 0 {
        line(empty)
    } else {
        line(t.to_text().trim_end())
    }
}

/// A table printed page by page as the rows arrive (`dlq list` pages through the
/// server): the header and the column widths come from the first page; a later cell
/// wider than its column pushes the rest of its row right, never re-aligns what is
/// already printed.
pub struct StreamTable {
    headers: Vec<String>,
    aligns: Vec<Align>,
    widths: Option<Vec<usize>>,
}

impl StreamTable {
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            headers: columns.iter().map(|(h, _)| (*h).to_string()).collect(),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            widths: None,
        }
    }

    /// Whether any page was printed (an empty list prints its own line instead).
    pub fn started(&self) -> bool {
        self.widths.is_some()
    }

    /// The lines of one page; the first page also prints the header and its rule.
    pub fn page(&mut self, rows: &[Vec<String>]) -> Vec<String> {
        let mut out = Vec::new();
        if rows.is_empty() {
            return out;
        }
        let widths = match &self.widths {
            Some(w) => w.clone(),
            None => {
                let w: Vec<usize> = (0..self.headers.len())
                    .map(|c| {
                        rows.iter()
                            .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                            .chain([self.headers[c].chars().count()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                out.push(self.render(&self.headers, &w));
                out.push(
                    w.iter()
                        .map(|&n| "-".repeat(n))
                        .collect::<Vec<_>>()
                        .join("  "),
                );
                self.widths = Some(w.clone());
                w
            }
        };
        out.extend(rows.iter().map(|r| self.render(r, &widths)));
        out
    }

    fn render(&self, cells: &[String], widths: &[usize]) -> String {
        let parts: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, &w)| {
                let cell = cells.get(c).map_or("", String::as_str);
                match self.aligns[c] {
                    Align::Left => format!("{cell:<w$}"),
                    Align::Right => format!("{cell:>w$}"),
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    }
}

/// A message's payload (or key) as one printable line: text as is with control
/// characters escaped (a newline must not split a message across lines), bytes the
/// server could only send as base64 prefixed `base64:`.
pub fn bytes_field(msg: &Value, name: &str) -> Option<String> {
    let text = msg.get(name).and_then(Value::as_str);
    let base64 = msg.get(format!("{name}_base64")).and_then(Value::as_str);
    bytes_text(text, base64)
}

/// [`bytes_field`] of a field pair (`payload` / `payload_base64`) already read.
pub fn bytes_text(text: Option<&str>, base64: Option<&str>) -> Option<String> {
    match (text, base64) {
        (Some(s), _) => Some(escape_controls(s)),
        (None, Some(b)) => Some(format!("base64:{b}")),
        (None, None) => None,
    }
}

/// A message's key, printable ([`bytes_text`]).
pub fn key(m: &rest::Message) -> Option<String> {
    bytes_text(m.key.as_deref(), m.key_base64.as_deref())
}

/// A message's payload, printable ([`bytes_text`]).
pub fn payload(m: &rest::Message) -> String {
    bytes_text(m.payload.as_deref(), m.payload_base64.as_deref()).unwrap_or_default()
}

fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `partition:offset` pairs with consecutive offsets folded: `0:17-19 1:4`.
pub fn offset_ranges(offsets: &[(u32, u64)]) -> String {
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &(p, o) in offsets {
        by_partition.entry(p).or_default().push(o);
    }
    let mut out = String::new();
    for (p, mut os) in by_partition {
        os.sort_unstable();
        os.dedup();
        let mut i = 0;
        while i < os.len() {
            let mut j = i;
            while j + 1 < os.len() && os[j + 1] == os[j] + 1 {
                j += 1;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            if i == j {
                let _ = write!(out, "{p}:{}", os[i]);
            } else {
                let _ = write!(out, "{p}:{}-{}", os[i], os[j]);
            }
            i = j + 1;
        }
    }
    out
}

/// The first of several JSON pointers that holds a number (for the dead-letter rows,
/// which stay JSON: see `dlq::Page`).
pub fn number(v: &Value, pointers: &[&str]) -> Option<u64> {
    pointers
        .iter()
        .find_map(|p| v.pointer(p).and_then(Value::as_u64))
}

/// A number cell; `-` when the server did not report it.
pub fn cell(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// "1 message", "3 messages".
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn offsets_fold_into_ranges() {
        assert_eq!(offset_ranges(&[]), "");
        assert_eq!(offset_ranges(&[(0, 17)]), "0:17");
        assert_eq!(
            offset_ranges(&[(0, 17), (1, 4), (0, 18), (0, 19), (0, 21)]),
            "0:17-19 0:21 1:4"
        );
    }

    #[test]
    fn payloads_render_on_one_line() {
        assert_eq!(
            bytes_field(&json!({"payload": "a\nb\tc"}), "payload").unwrap(),
            "a\\nb\\tc"
        );
        assert_eq!(
            bytes_field(&json!({"payload_base64": "AAE="}), "payload").unwrap(),
            "base64:AAE="
        );
        assert_eq!(bytes_field(&json!({"key": null}), "key"), None);
        assert_eq!(bytes_field(&json!({"key": "k"}), "key").unwrap(), "k");
    }

    #[test]
    fn numbers_from_first_matching_pointer() {
        let v = json!({"stats": {"acked": 3}, "lag": 2});
        assert_eq!(number(&v, &["/acked", "/stats/acked"]), Some(3));
        assert_eq!(number(&v, &["/lag"]), Some(2));
        assert_eq!(cell(number(&v, &["/nope"])), "-");
    }

    #[test]
    fn stream_table_keeps_the_first_page_widths() {
        let mut t = StreamTable::new(&[("id", Align::Right), ("reason", Align::Left)]);
        assert!(!t.started());
        assert!(t.page(&[]).is_empty());
        assert_eq!(
            t.page(&[
                vec!["1".into(), "boom".into()],
                vec!["12".into(), "x".into()]
            ]),
            ["id  reason", "--  ------", " 1  boom", "12  x"]
        );
        assert!(t.started());
        assert_eq!(t.page(&[vec!["345".into(), "y".into()]]), ["345  y"]);
    }

    #[test]
    fn small_helpers() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(plural(1, "message"), "1 message");
        assert_eq!(plural(0, "message"), "0 messages");
    }
}
