//! Reading a whole (small) topic from its beginning to its end as it is now, without a
//! consumer group: what the topic settings and the dead letters are read with.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use surety_core::{ErrorKind, TransportError};

use crate::error::{blocking, unavailable};
use crate::transport::Inner;

/// The most records one scan reads (a dead-letter topic larger than this is paged by
/// purging, or read with Kafka's own tools).
pub const MAX_SCAN: usize = 100_000;

/// Every record of `topic` (all partitions, each in offset order, partitions one after
/// another); an unknown topic is empty.
pub async fn read_all(inner: &Inner, topic: &str) -> Result<Vec<OwnedMessage>, TransportError> {
    let mut config = inner.config();
    config
        .set("group.id", "surety-scan")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    let timeout = inner.options.request_timeout;
    let topic = topic.to_owned();
    blocking(
        "scan",
        move || -> Result<Vec<OwnedMessage>, TransportError> {
            let c: BaseConsumer = config
                .create()
                .map_err(|e| unavailable("creating a Kafka reader", &e))?;
            let md = c
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| unavailable("reading metadata", &e))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Ok(Vec::new());
            };
            if t.error().is_some() {
                return Ok(Vec::new());
            }
            let mut ends = Vec::new();
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                let (low, high) = c
                    .fetch_watermarks(&topic, p.id(), timeout)
                    .map_err(|e| unavailable("reading watermarks", &e))?;
                if high > low {
                    ends.push((p.id(), high));
                    tpl.add_partition_offset(&topic, p.id(), Offset::Offset(low))
                        .map_err(|e| unavailable("assigning", &e))?;
                }
            }
            let mut out = Vec::new();
            if ends.is_empty() {
                return Ok(out);
            }
            c.assign(&tpl).map_err(|e| unavailable("assigning", &e))?;
            let deadline = Instant::now() + timeout * 3;
            let mut done = vec![false; ends.len()];
            while done.iter().any(|d| !d) {
                if Instant::now() > deadline {
                    return Err(TransportError::timed_out("reading a topic to its end"));
                }
                let Some(r) = c.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let m = r.map_err(|e| unavailable("reading", &e))?;
                if let Some(i) = ends.iter().position(|(p, _)| *p == m.partition())
                    && m.offset() + 1 >= ends[i].1
                {
                    done[i] = true;
                }
                out.push(m.detach());
                if out.len() > MAX_SCAN {
                    return Err(TransportError::refused(
                        ErrorKind::Unsupported,
                        format!("{topic} holds more than {MAX_SCAN} records; purge some first"),
                    ));
                }
            }
            Ok(out)
        },
    )
    .await?
}
