//! Server settings. Each comes from, in order of precedence: a command-line flag, an
//! environment variable (both handled by the CLI, which passes them in as one
//! [`Settings`]), the TOML config file, the default. Every key is documented in
//! docs/config.md.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use surety_broker::scrub::{
    DEFAULT_SCRUB_BYTES_PER_SEC, MAX_SCRUB_BYTES_PER_SEC, MIN_SCRUB_BYTES_PER_SEC,
};
use surety_broker::topic::MAX_MESSAGE_BYTES_LIMIT;

use crate::state::DEFAULT_MAX_MESSAGE_BYTES;

pub const DEFAULT_DATA: &str = "./surety-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7333";
/// Room for a batch of messages, base64 and JSON around them.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Settings of one source; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    pub max_message_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub scrub_bytes_per_sec: Option<u64>,
}

impl Settings {
    /// Each setting from `self` if set there, else from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            data: self.data.or(lower.data),
            listen: self.listen.or(lower.listen),
            auth_token_file: self.auth_token_file.or(lower.auth_token_file),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            max_request_bytes: self.max_request_bytes.or(lower.max_request_bytes),
            scrub_bytes_per_sec: self.scrub_bytes_per_sec.or(lower.scrub_bytes_per_sec),
        }
    }

    /// Reads a config file. Relative paths in it are relative to the file's directory,
    /// so the file means the same wherever the server is started from.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut s: Settings = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [&mut s.data, &mut s.auth_token_file].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(s)
    }
}

/// The settings the server runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data: PathBuf,
    pub listen: String,
    /// `None`: no auth.
    pub auth_token_file: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub max_request_bytes: usize,
    /// How fast the background scrub reads sealed segments to CRC-check them; 0: off.
    pub scrub_bytes_per_sec: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES_LIMIT}, got {0}")]
    MaxMessageBytes(usize),
    #[error(
        "max_request_bytes ({request}) must be at least twice max_message_bytes ({message}), \
         so one message fits even base64-encoded"
    )]
    MaxRequestBytes { request: usize, message: usize },
    #[error(
        "scrub_bytes_per_sec must be 0 (off) or between {MIN_SCRUB_BYTES_PER_SEC} and \
         {MAX_SCRUB_BYTES_PER_SEC}, got {0}"
    )]
    ScrubBytesPerSec(u64),
}

impl Config {
    /// `overrides` (flags, then environment) over the config file, if any, over defaults.
    pub fn resolve(overrides: Settings, file: Option<&Path>) -> Result<Config, ConfigError> {
        let from_file = match file {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Config::from_settings(overrides.or(from_file))
    }

    /// Fills unset settings with defaults and checks the limits.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let c = Config {
            data: s.data.unwrap_or_else(|| DEFAULT_DATA.into()),
            listen: s.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            auth_token_file: s.auth_token_file,
            max_message_bytes: s.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            max_request_bytes: s.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            scrub_bytes_per_sec: s.scrub_bytes_per_sec.unwrap_or(DEFAULT_SCRUB_BYTES_PER_SEC),
        };
        if !(1..=MAX_MESSAGE_BYTES_LIMIT as usize).contains(&c.max_message_bytes) {
            return Err(ConfigError::MaxMessageBytes(c.max_message_bytes));
        }
        let scrub = c.scrub_bytes_per_sec;
        if scrub != 0 && !(MIN_SCRUB_BYTES_PER_SEC..=MAX_SCRUB_BYTES_PER_SEC).contains(&scrub) {
            return Err(ConfigError::ScrubBytesPerSec(scrub));
        }
        if c.max_request_bytes < 2 * c.max_message_bytes {
            return Err(ConfigError::MaxRequestBytes {
                request: c.max_request_bytes,
                message: c.max_message_bytes,
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::resolve(Settings::default(), None).unwrap();
        assert_eq!(c.data, PathBuf::from("./surety-data"));
        assert_eq!(c.listen, "127.0.0.1:7333");
        assert_eq!(c.auth_token_file, None);
        assert_eq!(c.max_message_bytes, 1024 * 1024);
        assert_eq!(c.max_request_bytes, 16 * 1024 * 1024);
        assert_eq!(c.scrub_bytes_per_sec, 32 * 1024 * 1024);
    }

    #[test]
    fn overrides_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("surety.toml");
        std::fs::write(
            &file,
            "data = \"d\"\nlisten = \"0.0.0.0:1\"\nmax_message_bytes = 1000\n",
        )
        .unwrap();
        let overrides = Settings {
            listen: Some("127.0.0.1:2".into()),
            ..Settings::default()
        };
        let c = Config::resolve(overrides, Some(&file)).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.data, dir.path().join("d"), "relative to the file");
        assert_eq!(c.max_message_bytes, 1000);
        assert_eq!(c.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("surety.toml");
        std::fs::write(&file, "listn = \"x\"\n").unwrap();
        let e = Config::resolve(Settings::default(), Some(&file)).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let too_big = Settings {
            max_message_bytes: Some(64 << 20),
            ..Settings::default()
        };
        assert!(matches!(
            Config::from_settings(too_big),
            Err(ConfigError::MaxMessageBytes(_))
        ));
        let tight = Settings {
            max_request_bytes: Some(1024),
            ..Settings::default()
        };
        assert!(matches!(
            Config::from_settings(tight),
            Err(ConfigError::MaxRequestBytes { .. })
        ));
        let scrub = |n| {
            Config::from_settings(Settings {
                scrub_bytes_per_sec: Some(n),
                ..Settings::default()
            })
        };
        assert_eq!(scrub(0).unwrap().scrub_bytes_per_sec, 0, "0 turns it off");
        assert!(scrub(MIN_SCRUB_BYTES_PER_SEC).is_ok() && scrub(MAX_SCRUB_BYTES_PER_SEC).is_ok());
        for bad in [1, MIN_SCRUB_BYTES_PER_SEC - 1, MAX_SCRUB_BYTES_PER_SEC + 1] {
            assert!(matches!(scrub(bad), Err(ConfigError::ScrubBytesPerSec(n)) if n == bad));
        }
    }
}
