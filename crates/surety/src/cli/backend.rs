//! Which broker a client command talks to: `--backend URL` (docs/design.md, "Backends").
//!
//! A `surety serve` is reached over its REST API by every command, and over gRPC through
//! the transport seam by `consume --exec`; the other brokers only through the seam, so
//! the commands of the CLI contract (`topics create|describe|list`, `publish`, `consume`,
//! `dlq`) work on each, and the rest say that they need a Surety server.

use std::sync::Arc;

use reqwest::Url;
use surety_core::{ErrorKind, Transport, TransportError};

use super::error::CliError;
use super::http::server_url;

/// A parsed `--backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A `surety serve` (`http://`, `https://`, or a bare `HOST:PORT`).
    Surety(Url),
    /// NATS JetStream (`nats://`, `tls://`).
    Nats(Url),
    /// Redis Streams (`redis://`, `rediss://`).
    Redis(Url),
    /// RabbitMQ (`amqp://`, `amqps://`).
    Rabbit(Url),
    /// Kafka (`kafka://HOST:PORT[,HOST:PORT...]`), kept as text: a list of brokers is
    /// no URL authority. Checked by `KafkaOptions::from_url` when parsed.
    Kafka(String),
}

impl Backend {
    /// Reads `--backend`: a URL whose scheme names the broker; no scheme means a Surety
    /// server (`127.0.0.1:7333`).
    pub fn parse(text: &str) -> Result<Backend, CliError> {
        let s = text.trim();
        let Some((scheme, _)) = s.split_once("://") else {
            return server_url(s).map(Backend::Surety);
        };
        match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => server_url(s).map(Backend::Surety),
            "nats" | "tls" => Url::parse(s)
                .ok()
                .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
                .map(Backend::Nats)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "--backend {text:?} is not a NATS address (example: nats://127.0.0.1:4222)"
                    ))
                }),
            "redis" | "rediss" => Url::parse(s)
                .ok()
                .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
                .map(Backend::Redis)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "--backend {text:?} is not a Redis address (example: redis://127.0.0.1:6379)"
                    ))
                }),
            "amqp" | "amqps" => Url::parse(s)
                .ok()
                .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
                .map(Backend::Rabbit)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "--backend {text:?} is not a RabbitMQ address (example: amqp://guest:guest@127.0.0.1:5672/%2f)"
                    ))
                }),
            "kafka" => {
                // The options crate wants the scheme in lower case; the rest as given.
                let url = format!("kafka://{}", &s[scheme.len() + 3..]);
                surety_kafka::KafkaOptions::from_url(&url)
                    .map(|_| Backend::Kafka(url))
                    .map_err(|e| {
                        CliError::Usage(format!(
                            "--backend {text:?} is not a Kafka address: {} \
                             (example: kafka://127.0.0.1:9092)",
                            e.message
                        ))
                    })
            }
            other => Err(CliError::Usage(format!(
                "--backend {text:?}: unknown scheme {other:?} \
                 (use http://HOST:PORT for a Surety server, nats://HOST:PORT for NATS, \
                 redis://HOST:PORT for Redis, amqp://HOST:PORT for RabbitMQ, \
                 kafka://HOST:PORT for Kafka)"
            ))),
        }
    }

    /// The broker's name in messages: `Surety server`, `NATS`, `Redis`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Surety(_) => "Surety server",
            Backend::Nats(_) => "NATS",
            Backend::Redis(_) => "Redis",
            Backend::Rabbit(_) => "RabbitMQ",
            Backend::Kafka(_) => "Kafka",
        }
    }

    /// The address as given to the broker's client library.
    pub fn url(&self) -> &str {
        match self {
            Backend::Surety(u) | Backend::Nats(u) | Backend::Redis(u) | Backend::Rabbit(u) => {
                u.as_str()
            }
            Backend::Kafka(u) => u,
        }
    }

    /// How long a new consumer may wait for its first deliveries before an idle
    /// `consume` (no `--follow`) counts as idle: a Kafka group hands out partitions only
    /// after its first rebalance (seconds), every other backend at once.
    pub fn join_allowance(&self) -> std::time::Duration {
        match self {
            Backend::Kafka(_) => std::time::Duration::from_secs(6),
            _ => std::time::Duration::ZERO,
        }
    }

    /// The Surety server's URL, or the refusal of a command that only a Surety server
    /// has (`peek`, `groups`, ack and nack by receipt).
    pub fn surety_url(&self) -> Result<&Url, CliError> {
        match self {
            Backend::Surety(url) => Ok(url),
            other => Err(CliError::Usage(format!(
                "this command needs a Surety server (--backend http://HOST:PORT); on {} \
                 the backend contract has topics create|list|describe, publish, consume \
                 (also --exec) and dlq",
                other.name()
            ))),
        }
    }

    /// Connects the transport seam to this broker. `require_fsync`: refuse a broker whose
    /// confirms would not survive a power loss (a Surety server always fsyncs first).
    /// `topic`: the one topic the command works on (`publish`, `consume`), where a
    /// broker's safety depends on the topic's own settings (Kafka's replication).
    pub async fn transport(
        &self,
        token: Option<&str>,
        require_fsync: bool,
        topic: Option<&str>,
    ) -> Result<Arc<dyn Transport>, CliError> {
        match self {
            Backend::Surety(url) => {
                let client = surety_client::Client::connect(url.as_str(), token)
                    .await
                    .map_err(|e| match e {
                        surety_client::ConnectError::Connect { .. } => CliError::Transport {
                            url: url.to_string(),
                            reason: super::error::one_line(&e),
                        },
                        other => CliError::Usage(super::error::one_line(&other)),
                    })?;
                Ok(Arc::new(client))
            }
            Backend::Nats(url) => {
                let mut options = surety_nats::NatsOptions::from_url_query(url)
                    .map_err(|e| CliError::Usage(format!("--backend {url}: {}", e.message)))?;
                options.require_fsync |= require_fsync;
                let nats = surety_nats::NatsTransport::connect(url.as_str(), options)
                    .await
                    .map_err(|e| seam_error(self, e))?;
                if !nats.durability().is_safe() {
                    // Loud, once, at start-up: confirms on this server can be lost.
                    eprintln!(
                        "warning: {} (--require-fsync refuses such a server)",
                        nats.durability()
                    );
                }
                Ok(Arc::new(nats))
            }
            Backend::Redis(url) => {
                let mut options = surety_redis::RedisOptions::from_url_query(url)
                    .map_err(|e| CliError::Usage(format!("--backend {url}: {}", e.message)))?;
                options.require_fsync |= require_fsync;
                let redis = surety_redis::RedisTransport::connect(url.as_str(), options)
                    .await
                    .map_err(|e| seam_error(self, e))?;
                if !redis.durability().is_safe() {
                    // Loud, once, at start-up: confirms on this server can be lost.
                    eprintln!(
                        "warning: {} (--require-fsync refuses such a server)",
                        redis.durability()
                    );
                }
                Ok(Arc::new(redis))
            }
            Backend::Rabbit(url) => {
                // Every queue Surety declares is a quorum queue: its confirms come after a
                // quorum fsynced, so require_fsync is always met and nothing is printed.
                let options = surety_rabbitmq::RabbitOptions::from_url_query(url)
                    .map_err(|e| CliError::Usage(format!("--backend {url}: {}", e.message)))?;
                let rabbit = surety_rabbitmq::RabbitTransport::connect(url.as_str(), options)
                    .await
                    .map_err(|e| seam_error(self, e))?;
                Ok(Arc::new(rabbit))
            }
            Backend::Kafka(url) => {
                let mut options = surety_kafka::KafkaOptions::from_url(url)
                    .map_err(|e| CliError::Usage(format!("--backend {url}: {}", e.message)))?;
                options.require_fsync |= require_fsync;
                let require_fsync = options.require_fsync;
                let kafka = surety_kafka::KafkaTransport::connect(options)
                    .await
                    .map_err(|e| seam_error(self, e))?;
                // Loud, once, at start-up: an acks=all confirm is in page caches only.
                eprintln!("note: {}", kafka.durability());
                if let Some(topic) = topic {
                    kafka_safety(self, &kafka, topic, require_fsync).await?;
                }
                Ok(Arc::new(kafka))
            }
        }
    }
}

/// Prints each unsafe setting of the cluster for `topic` (replication factor 1, ...);
/// under `require_fsync` any of them refuses the command.
async fn kafka_safety(
    backend: &Backend,
    kafka: &surety_kafka::KafkaTransport,
    topic: &str,
    require_fsync: bool,
) -> Result<(), CliError> {
    let warnings = match kafka.safety_warnings(topic).await {
        Ok(w) => w,
        // No such topic (yet): the command itself says so, with its own error line.
        Err(e) if e.kind == ErrorKind::TopicNotFound && !require_fsync => return Ok(()),
        Err(e) if require_fsync => return Err(seam_error(backend, e)),
        Err(e) => {
            eprintln!(
                "warning: could not check the Kafka settings of topic {topic}: {}",
                e.message
            );
            return Ok(());
        }
    };
    for w in &warnings {
        eprintln!("warning: {w} (--require-fsync refuses such a topic)");
    }
    if require_fsync && !warnings.is_empty() {
        return Err(CliError::Refused(format!(
            "--require-fsync: Kafka topic {topic:?} would lose confirmed messages in a power \
             loss: {}",
            warnings.join("; ")
        )));
    }
    Ok(())
}

/// A seam error as one CLI error: refusals keep their code (`topic_not_found`, ...;
/// named after the kind where the broker gave none) so scripts and humans see what the
/// Surety server would have said.
pub fn seam_error(backend: &Backend, e: TransportError) -> CliError {
    if e.retryable() {
        return CliError::Transport {
            url: backend.url().to_string(),
            reason: e.message,
        };
    }
    match e
        .code
        .clone()
        .or_else(|| kind_code(e.kind).map(str::to_owned))
    {
        Some(code) => CliError::Server {
            status: 0,
            code,
            message: e.message,
        },
        None => CliError::Refused(format!("{}: {}", backend.name(), e.message)),
    }
}

/// The docs/errors.md code of a refusal kind.
fn kind_code(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::TopicNotFound => "topic_not_found",
        ErrorKind::GroupNotFound => "group_not_found",
        ErrorKind::InvalidName => "invalid_name",
        ErrorKind::InvalidInput => "invalid_request",
        ErrorKind::TooLarge => "message_too_large",
        ErrorKind::SequenceTooOld => "sequence_too_old",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::LeaseExpired => "lease_expired",
        ErrorKind::Stale => "receipt_stale",
        ErrorKind::UnknownReceipt => "receipt_invalid",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_broker() {
        assert!(matches!(
            Backend::parse("127.0.0.1:7333"),
            Ok(Backend::Surety(u)) if u.as_str() == "http://127.0.0.1:7333/"
        ));
        assert!(matches!(
            Backend::parse("https://q.example:443"),
            Ok(Backend::Surety(_))
        ));
        assert!(matches!(
            Backend::parse("nats://127.0.0.1:4222"),
            Ok(Backend::Nats(u)) if u.port() == Some(4222)
        ));
        let refused = |s: &str| match Backend::parse(s) {
            Err(CliError::Usage(m)) => m,
            other => panic!("{s}: {other:?}"),
        };
        assert!(matches!(
            Backend::parse("redis://127.0.0.1:6379/0?require_fsync=true"),
            Ok(Backend::Redis(u)) if u.port() == Some(6379)
        ));
        assert!(matches!(
            Backend::parse("rediss://r.example:6380"),
            Ok(Backend::Redis(_))
        ));
        assert!(refused("redis://").contains("not a Redis address"));
        assert!(matches!(
            Backend::parse("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Ok(Backend::Rabbit(u)) if u.port() == Some(5672)
        ));
        assert!(refused("amqp://").contains("not a RabbitMQ address"));
        assert!(matches!(
            Backend::parse("kafka://k1:9092,k2:9093?retry=topic"),
            Ok(Backend::Kafka(u)) if u == "kafka://k1:9092,k2:9093?retry=topic"
        ));
        assert!(matches!(
            Backend::parse("KAFKA://k:9092"),
            Ok(Backend::Kafka(u)) if u == "kafka://k:9092"
        ));
        assert!(refused("kafka://k").contains("not a Kafka address"));
        assert!(refused("kafka://k:9092?acks=1").contains("unknown Kafka backend parameter"));
        assert!(refused("ftp://x").contains("unknown scheme"));
        assert!(refused("nats://").contains("not a NATS address"));
        assert!(refused("http://").contains("not a server address"));
    }

    #[test]
    fn server_only_commands_say_so() {
        let nats = Backend::parse("nats://n:4222").unwrap();
        let e = nats.surety_url().unwrap_err().to_string();
        assert!(
            e.contains("needs a Surety server") && e.contains("NATS"),
            "{e}"
        );
        assert!(Backend::parse("s:1").unwrap().surety_url().is_ok());
    }
}
