//! What every benchmark report shares: the machine it ran on, when and how it was run,
//! and writing one marked section of BENCHMARKS.md without touching the others (so the
//! log, broker and server benchmarks can each refresh their own section).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The facts that decide whether two benchmark runs are comparable.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub cpu_model: String,
    pub logical_cores: usize,
    pub memory_gib: f64,
    /// `sysname release machine` from uname(2).
    pub kernel: String,
    /// File system type of the benchmark directory, e.g. `ext4`.
    pub filesystem: String,
    /// Device and mount point the benchmark directory lives on.
    pub mount: String,
    pub rustc: String,
}

impl MachineInfo {
    /// Gathers what can be found; anything unreadable is reported as `unknown` rather
    /// than failing the benchmark.
    pub fn collect(bench_dir: &Path) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let (filesystem, mount) = mount_of(bench_dir).unwrap_or_else(unknown_pair);
        Self {
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(unknown),
            logical_cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: mem_total_kib(&meminfo).map_or(0.0, |k| k as f64 / (1024.0 * 1024.0)),
            kernel: kernel().unwrap_or_else(unknown),
            filesystem,
            mount,
            rustc: rustc_version().unwrap_or_else(unknown),
        }
    }

    /// True where fdatasync costs nothing, so durability figures would be meaningless.
    pub fn is_memory_fs(&self) -> bool {
        matches!(self.filesystem.as_str(), "tmpfs" | "ramfs")
    }

    pub fn to_markdown(&self) -> String {
        format!(
            "- CPU: {} ({} logical cores)\n- Memory: {:.1} GiB\n- Kernel: {}\n\
             - File system of the benchmark directory: {} ({})\n- Compiler: {}\n",
            self.cpu_model,
            self.logical_cores,
            self.memory_gib,
            self.kernel,
            self.filesystem,
            self.mount,
            self.rustc
        )
    }
}

/// How a report was produced: the command line and the time (UTC).
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub command: String,
    pub date_utc: String,
}

impl Provenance {
    /// The running process's own command line, as `surety ...`.
    pub fn current() -> Self {
        let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
        let mut command = "surety".to_string();
        for a in args {
            command.push(' ');
            command.push_str(&a);
        }
        Self {
            command,
            date_utc: utc_timestamp(SystemTime::now()),
        }
    }

    pub fn to_markdown(&self) -> String {
        format!("Produced by `{}` on {}.\n", self.command, self.date_utc)
    }
}

fn unknown() -> String {
    "unknown".to_string()
}

fn unknown_pair() -> (String, String) {
    (unknown(), unknown())
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    // x86 says "model name"; some ARM kernels only give "Hardware" or "Processor".
    ["model name", "Hardware", "Processor"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
            })
        })
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn kernel() -> Option<String> {
    // SAFETY: utsname is plain old data; uname fills it and we only read it after
    // success, through NUL-terminated fields the kernel guarantees.
    let uts = unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return None;
        }
        uts
    };
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates each field within its array.
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Some(format!(
        "{} {} {}",
        field(&uts.sysname),
        field(&uts.release),
        field(&uts.machine)
    ))
}

fn rustc_version() -> Option<String> {
    let out = Command::new("rustc").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// File system type and "device on mount point" of the mount holding `dir`: the
/// longest mount point that is a prefix of the canonical path (the last one listed
/// wins a tie, as later mounts hide earlier ones).
fn mount_of(dir: &Path) -> Option<(String, String)> {
    let dir = fs::canonicalize(dir).ok()?;
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount(point));
        if !dir.starts_with(&point) {
            continue;
        }
        let depth = point.components().count();
        if best.as_ref().is_none_or(|(d, _, _)| depth >= *d) {
            let where_ = format!("{} on {}", unescape_mount(dev), point.display());
            best = Some((depth, fstype.to_string(), where_));
        }
    }
    best.map(|(_, fstype, where_)| (fstype, where_))
}

/// /proc/mounts escapes space, tab, newline and backslash as three octal digits.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\'
            && let Some(digits) = octal
            && digits.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(digits.iter().fold(0u8, |v, d| (v << 3) | (d - b'0')));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`, without pulling in a date crate.
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- bench:{name}:start -->"),
        format!("<!-- bench:{name}:end -->"),
    )
}

/// The new file text: `existing` with the section `name` replaced by `body` (or added
/// at the end), or a fresh file holding only that section when there is none.
pub fn replace_section(existing: Option<&str>, name: &str, body: &str) -> String {
    let (start, end) = markers(name);
    let mut section = String::new();
    let _ = write!(section, "{start}\n{}\n{end}", body.trim_end());
    let existing = existing.unwrap_or("");
    if let Some(s) = existing.find(&start)
        && let Some(e) = existing[s..].find(&end)
    {
        let after = s + e + end.len();
        return format!("{}{section}{}", &existing[..s], &existing[after..]);
    }
    let mut out = if existing.trim().is_empty() {
        "# Benchmarks\n\nMeasured by `surety bench`; re-run one with \
         `cargo run --release -p surety -- bench <name>` (for example `bench log`), \
         which replaces only its own section below.\n"
            .to_string()
    } else {
        existing.trim_end().to_string() + "\n"
    };
    out.push('\n');
    out.push_str(&section);
    out.push('\n');
    out
}

/// Replaces (or adds) the section `name` of the Markdown file at `path`. Written to a
/// temporary file and renamed, so an interrupted run never leaves half a file.
pub fn write_section(path: &Path, name: &str, body: &str) -> io::Result<()> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let text = replace_section(existing.as_deref(), name, body);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_file_with_title_and_section() {
        let text = replace_section(None, "log", "hello\n");
        assert!(text.starts_with("# Benchmarks\n"));
        assert!(text.ends_with("<!-- bench:log:start -->\nhello\n<!-- bench:log:end -->\n"));
    }

    #[test]
    fn replaces_only_its_own_section() {
        let first = replace_section(None, "log", "old");
        let both = replace_section(Some(&first), "broker", "b");
        let again = replace_section(Some(&both), "log", "new");
        assert!(again.contains("<!-- bench:log:start -->\nnew\n<!-- bench:log:end -->"));
        assert!(!again.contains("old"));
        assert!(again.contains("<!-- bench:broker:start -->\nb\n<!-- bench:broker:end -->"));
        assert_eq!(again.matches("# Benchmarks").count(), 1);
        // Replacing with the same body is a fixed point.
        assert_eq!(replace_section(Some(&again), "log", "new"), again);
    }

    #[test]
    fn appends_to_a_file_without_markers() {
        let text = replace_section(Some("# Mine\n\nnotes\n"), "log", "x");
        assert_eq!(
            text,
            "# Mine\n\nnotes\n\n<!-- bench:log:start -->\nx\n<!-- bench:log:end -->\n"
        );
    }

    #[test]
    fn dates_and_mount_escapes() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(utc_timestamp(t), "2024-02-29 12:34:56 UTC");
        assert_eq!(unescape_mount(r"/mnt/my\040disk"), "/mnt/my disk");
    }

    #[test]
    fn parses_proc_files() {
        let cpu = "processor\t: 0\nmodel name\t: Example CPU @ 3GHz\n";
        assert_eq!(cpu_model(cpu).as_deref(), Some("Example CPU @ 3GHz"));
        assert_eq!(
            mem_total_kib("MemTotal:       24684544 kB\n"),
            Some(24_684_544)
        );
    }
}
