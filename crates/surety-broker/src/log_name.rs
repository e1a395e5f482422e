//! What each log a broker owns is called in reports, metric labels and `surety verify`:
//! its directory relative to its topic's (`p0`, `journal`, `dlq/billing`; the layout is
//! in the `broker` module docs).

use std::fmt;
use std::path::{Path, PathBuf};

/// One log of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogName {
    Partition(u32),
    /// The topic's group journal.
    Journal,
    /// The dead letters of one group.
    DeadLetters(String),
}

impl LogName {
    /// The log's directory inside its topic's directory.
    pub fn dir(&self, topic_dir: &Path) -> PathBuf {
        match self {
            LogName::Partition(p) => topic_dir.join(format!("p{p}")),
            LogName::Journal => topic_dir.join("journal"),
            LogName::DeadLetters(g) => topic_dir.join("dlq").join(g),
        }
    }

    /// The logs a topic directory holds on disk, in order: partitions, journal, dead
    /// letters. Other entries are not logs and are left out.
    pub fn in_topic_dir(topic_dir: &Path) -> std::io::Result<Vec<LogName>> {
        let mut out = Vec::new();
        for name in subdirs(topic_dir)? {
            if name == "journal" {
                out.push(LogName::Journal);
            } else if let Some(p) = name
                .strip_prefix('p')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
            {
                out.push(LogName::Partition(p));
            }
        }
        let dlq = topic_dir.join("dlq");
        if dlq.is_dir() {
            out.extend(subdirs(&dlq)?.into_iter().map(LogName::DeadLetters));
        }
        out.sort();
        Ok(out)
    }
}

fn subdirs(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir()
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    Ok(names)
}

impl fmt::Display for LogName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogName::Partition(p) => write!(f, "p{p}"),
            LogName::Journal => f.write_str("journal"),
            LogName::DeadLetters(g) => write!(f, "dlq/{g}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_directories_and_are_found_back() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            LogName::Partition(0),
            LogName::Partition(10),
            LogName::Journal,
            LogName::DeadLetters("billing".into()),
        ];
        for n in &names {
            std::fs::create_dir_all(n.dir(dir.path())).unwrap();
            assert_eq!(
                n.dir(dir.path()),
                dir.path().join(n.to_string()),
                "{n:?} displays as its relative directory"
            );
        }
        // Not logs: a file, and directories that only look alike.
        std::fs::write(dir.path().join("topic.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("px")).unwrap();
        std::fs::create_dir(dir.path().join("p")).unwrap();
        assert_eq!(LogName::in_topic_dir(dir.path()).unwrap(), names);
    }
}
