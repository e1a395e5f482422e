//! Shared by the tests that run the `surety` binary: reading `surety serve`'s ready line,
//! a small seeded random generator for the crash tests, and ([`cli`]) a server plus the
//! runs of client commands against it, and ([`postgres`]) the outbox tests' database.
// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod cli;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// The line `surety serve` prints on stdout once it listens, read within `timeout`
/// (trimmed; `None` if none came). The rest of stdout is drained, so the pipe never fills.
pub fn ready_line(child: &mut Child, timeout: Duration) -> Option<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    match rx.recv_timeout(timeout) {
        Ok(line) if !line.is_empty() => Some(line.trim_end().to_owned()),
        _ => None,
    }
}

/// The address in a ready line: `surety listening on http://ADDR (data DIR)`.
pub fn listen_addr(ready_line: &str) -> &str {
    ready_line
        .strip_prefix("surety listening on http://")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected ready line {ready_line:?}"))
}

/// splitmix64: enough randomness for a test, and no extra dependency.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.range(0, 100) < p
    }
}
