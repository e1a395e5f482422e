//! Creating, describing and listing topics. A group's counters: `lag` = its queue's
//! ready messages + those waiting out a nack's delay in its retry queues + its in-flight
//! deliveries; `in_flight` is exact for this process's sessions, and otherwise the
//! management API's sampled unacked count (up to `collect_statistics_interval`, 5 s by
//! default, old); `dead_letters` = its dead-letter queue's messages.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use surety_core::{ErrorKind, GroupInfo, TopicInfo, TopicSpec, TransportError};

use crate::names::{self, QueueRole, TopicNames};
use crate::topology;
use crate::transport::Inner;

pub(crate) async fn create(
    inner: &Inner,
    topic: &str,
    spec: &TopicSpec,
) -> Result<TopicInfo, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    topology::declare_topic(inner, &names, spec).await?;
    describe(inner, topic).await
}

pub(crate) async fn describe(inner: &Inner, topic: &str) -> Result<TopicInfo, TransportError> {
    let names = TopicNames::new(&inner.options.prefix, topic)?;
    let settings = topology::settings(inner, &names).await?;
    Ok(TopicInfo {
        name: topic.to_owned(),
        partitions: 1,
        max_deliveries: settings.max_deliveries,
        ack_wait: settings.ack_wait,
        confirm: inner.caps.confirm,
        groups: groups(inner, &names).await?,
    })
}

#[derive(Default)]
struct Queues {
    queue: Option<String>,
    retries: Vec<String>,
    dlq: Option<String>,
    sampled_unacked: u64,
}

async fn groups(inner: &Inner, names: &TopicNames) -> Result<Vec<GroupInfo>, TransportError> {
    let mut by_group: BTreeMap<String, Queues> = BTreeMap::new();
    match &inner.management {
        Some(m) => {
            for q in m.queues(&names.group_prefix).await? {
                let Some(role) = names.classify(&q.name) else {
                    continue;
                };
                let (g, slot) = match role {
                    QueueRole::Group(g) => (g, 0),
                    QueueRole::Retry(g) => (g, 1),
                    QueueRole::DeadLetters(g) => (g, 2),
                };
                let e = by_group.entry(g.to_owned()).or_default();
                match slot {
                    0 => {
                        e.sampled_unacked = q.messages_unacknowledged;
                        e.queue = Some(q.name);
                    }
                    1 => e.retries.push(q.name),
                    _ => e.dlq = Some(q.name),
                }
            }
        }
        None => {
            // Only the groups this process declared are known without the API.
            for q in inner.declared.lock().unwrap().iter() {
                if let Some(role) = names.classify(q) {
                    let e = by_group.entry(match role {
                        QueueRole::Group(g) | QueueRole::Retry(g) | QueueRole::DeadLetters(g) => {
                            g.to_owned()
                        }
                    });
                    let e = e.or_default();
                    match role {
                        QueueRole::Group(_) => e.queue = Some(q.clone()),
                        QueueRole::Retry(_) => e.retries.push(q.clone()),
                        QueueRole::DeadLetters(_) => e.dlq = Some(q.clone()),
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (group, qs) in by_group {
        let Some(queue) = &qs.queue else { continue };
        let g = names.group(&group)?;
        let mut asked: Vec<&str> = vec![queue, &g.dlq];
        asked.extend(qs.retries.iter().map(String::as_str));
        let counts = topology::ready_counts(inner, &asked).await?;
        let local = inner.local_group(queue);
        let in_flight = if local.sessions.load(Ordering::Relaxed) > 0 {
            local.in_flight.load(Ordering::Relaxed)
        } else {
            qs.sampled_unacked
        };
        out.push(GroupInfo {
            name: group,
            lag: counts[0] + counts[2..].iter().sum::<u64>() + in_flight,
            in_flight,
            dead_letters: counts[1],
        });
    }
    Ok(out)
}

pub(crate) async fn list(inner: &Inner) -> Result<Vec<String>, TransportError> {
    let Some(m) = &inner.management else {
        return Err(TransportError::refused(
            ErrorKind::Unsupported,
            "listing topics needs the RabbitMQ management API (AMQP 0-9-1 cannot list exchanges); \
             remove management=none",
        ));
    };
    let mut topics: Vec<String> = m
        .exchanges()
        .await?
        .iter()
        .filter_map(|e| names::topic_of_exchange(&inner.options.prefix, e).map(str::to_owned))
        .collect();
    topics.sort();
    Ok(topics)
}
