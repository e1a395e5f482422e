//! The offline check of a whole data directory (`surety verify`): every record of every
//! segment of every log of every topic, by the rules `VerifyOnOpen::All` would apply at
//! open (`surety_log::verify_dir`), changing nothing. Opening a broker trusts sealed
//! segments through their checked indexes, and the scrub checks them in the background;
//! this is the full answer, at once, for a stopped broker or a copy of its directory.

use std::path::{Path, PathBuf};

use surety_log::storage::FileStorage;
use surety_log::{LogCheck, LogConfig};

use crate::broker::{lock_dir, stored_topics};
use crate::error::BrokerError;
use crate::log_name::LogName;

/// What [`verify_data_dir`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataCheck {
    /// Every log of every topic, in topic order.
    pub logs: Vec<TopicLogCheck>,
}

/// One log's share of a [`DataCheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLogCheck {
    pub topic: String,
    pub log: LogName,
    pub dir: PathBuf,
    pub check: LogCheck,
}

impl DataCheck {
    /// Segments holding damaged acknowledged data.
    pub fn corrupt_segments(&self) -> usize {
        self.logs
            .iter()
            .map(|l| l.check.corruptions().count())
            .sum()
    }

    pub fn records(&self) -> u64 {
        self.logs.iter().map(|l| l.check.records()).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.logs.iter().map(|l| l.check.bytes()).sum()
    }
}

/// Every log of every topic under `dir`, with the settings it is opened with.
fn logs_in(dir: &Path) -> Result<Vec<(String, LogName, PathBuf, LogConfig)>, BrokerError> {
    if !dir.join("topics").is_dir() {
        return Err(BrokerError::NotADataDirectory(dir.to_owned()));
    }
    let mut out = Vec::new();
    for (topic, tdir, config) in stored_topics(dir)? {
        for log in LogName::in_topic_dir(&tdir)? {
            // The segment size does not matter for reading.
            let cfg = config.log_config(&log, LogConfig::default().segment_bytes);
            out.push((topic.clone(), log.clone(), log.dir(&tdir), cfg));
        }
    }
    Ok(out)
}

/// The bytes [`verify_data_dir`] reads (every segment file), for a progress bar.
pub fn data_dir_bytes(dir: &Path) -> Result<u64, BrokerError> {
    let mut total = 0;
    for (_, _, log_dir, _) in logs_in(dir)? {
        total += surety_log::segment_bytes_in(&FileStorage, &log_dir).map_err(storage)?;
    }
    Ok(total)
}

/// Checks every record of every segment of every log under the data directory `dir`,
/// calling `progress` with the bytes read as they go past. Takes the directory's lock
/// for the duration: refused ([`BrokerError::DirectoryInUse`]) while a broker has it
/// open, since a log being appended to can look torn.
pub fn verify_data_dir(
    dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<DataCheck, BrokerError> {
    let logs = logs_in(dir)?;
    let _lock = lock_dir(dir)?;
    let mut out = DataCheck::default();
    for (topic, log, log_dir, cfg) in logs {
        let check =
            surety_log::verify_dir(&FileStorage, &log_dir, &cfg, progress).map_err(storage)?;
        out.logs.push(TopicLogCheck {
            topic,
            log,
            dir: log_dir,
            check,
        });
    }
    Ok(out)
}

fn storage(e: surety_log::VerifyError) -> BrokerError {
    BrokerError::Storage(e.to_string())
}
