//! The topics of a cluster: their names, their creation, and where a new
//! node starts reading them.
//!
//! `{cluster}.broadcast` (`partitions` partitions, keyed by sender so that one
//! sender's broadcasts stay in order) and one `{cluster}.node.{id}` per node
//! (one partition: per-pair FIFO). Each node creates the broadcast topic and
//! its own topic when they are missing, at start and whenever the broker
//! turns out to have lost them.

use coordinator_core::config::KafkaConfig;
use coordinator_core::{Error, NodeId};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Checks that the cluster name can name Kafka topics (letters, digits, `.`,
/// `_`, `-`; at most 249 characters with the longest suffix).
pub fn check_cluster_name(cluster: &str) -> Result<(), Error> {
    let longest = format!("{cluster}.node.{}", NodeId::MAX);
    if cluster.is_empty()
        || longest.len() > 249
        || !cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::Start(format!(
            "cluster: {cluster:?} cannot name Kafka topics (use letters, digits, '.', '_' and '-', \
             at most {} characters)",
            249 - (longest.len() - cluster.len())
        )));
    }
    Ok(())
}

/// Creates `topics` (name, partitions) where missing; ones that exist are fine.
pub async fn ensure(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    topics: &[(String, i32)],
) -> Result<(), String> {
    let retention = config.retention.as_millis().to_string();
    let create = |replication: i32| {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| {
                // Retention deletes whole segments only: one rolled every
                // `retention` keeps heartbeats and old messages at most about
                // two of it (the broker's default rolls weekly or at 1 GiB).
                NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
                    .set("retention.ms", &retention)
                    .set("segment.ms", &retention)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(config.timeout_session));
        async move { admin.create_topics(new.iter(), &options).await }
    };
    // Without `replicationFactor`, the broker's default (-1), and 1 for a
    // broker that does not know that convention.
    let replication = config.replication_factor.map_or(-1, |r| r as i32);
    let mut results = create(replication).await.map_err(describe)?;
    let refused_default = results.iter().any(|result| {
        matches!(
            result,
            Err((
                _,
                RDKafkaErrorCode::InvalidReplicationFactor | RDKafkaErrorCode::InvalidRequest
            ))
        )
    });
    if config.replication_factor.is_none() && refused_default {
        results = create(1).await.map_err(describe)?;
    }
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}")),
        }
    }
    Ok(())
}

/// Waits until the brokers list every topic with its partitions, and returns
/// the partition count of each.
pub async fn partitions(
    consumer: &std::sync::Arc<crate::NodeConsumer>,
    topics: &[&str],
    within: Duration,
) -> Result<Vec<i32>, String> {
    let started = Instant::now();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    loop {
        let consumer = consumer.clone();
        let names = topics.clone();
        let found = tokio::task::spawn_blocking(move || listed(&consumer, &names))
            .await
            .map_err(|error| error.to_string())?;
        match found {
            Ok(counts) if counts.iter().all(|&n| n > 0) => return Ok(counts),
            Ok(_) if started.elapsed() < within => {}
            Ok(counts) => {
                let missing: Vec<_> = topics
                    .iter()
                    .zip(&counts)
                    .filter(|(_, n)| **n == 0)
                    .map(|(t, _)| t.as_str())
                    .collect();
                return Err(format!(
                    "the brokers do not list topic {} after {within:?}",
                    missing.join(", ")
                ));
            }
            Err(error) if started.elapsed() >= within => return Err(describe(error)),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a consumer starts reading its partitions.
#[derive(Clone, Debug)]
pub enum Start {
    /// At the current end of each partition: its high watermark, read now, so
    /// that whatever is produced after the assignment is read.
    End,
    /// At these offsets; a partition without one from the first message
    /// the broker still has.
    At(Offsets),
}

/// Where reading starts or stands, per topic and partition.
pub type Offsets = HashMap<(String, i32), Offset>;

/// Waits until the brokers list `topics`, then assigns all their partitions
/// to the consumer, from `start`. Returns the offsets it assigned.
pub async fn read_from(
    consumer: &std::sync::Arc<crate::NodeConsumer>,
    topics: &[&str],
    start: Start,
    within: Duration,
) -> Result<Offsets, String> {
    let counts = partitions(consumer, topics, within).await?;
    let topics: Vec<(String, i32)> = topics
        .iter()
        .zip(counts)
        .map(|(topic, count)| (topic.to_string(), count))
        .collect();
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || {
        let mut assignment = TopicPartitionList::new();
        let mut assigned = Offsets::new();
        for (topic, partitions) in &topics {
            for partition in 0..*partitions {
                let offset = match &start {
                    Start::At(offsets) => offsets
                        .get(&(topic.clone(), partition))
                        .copied()
                        .unwrap_or(Offset::Beginning),
                    Start::End => {
                        let (_, high) = consumer
                            .fetch_watermarks(topic, partition, within)
                            .map_err(|error| {
                                format!("{topic}[{partition}]: {}", describe(error))
                            })?;
                        Offset::Offset(high)
                    }
                };
                assignment
                    .add_partition_offset(topic, partition, offset)
                    .map_err(describe)?;
                assigned.insert((topic.clone(), partition), offset);
            }
        }
        consumer.assign(&assignment).map_err(describe)?;
        Ok(assigned)
    })
    .await
    .map_err(|error| error.to_string())?
}

/// Where a new consumer takes over from `consumer`: in each partition of
/// `assigned`, the offset after the last message `consumer` handed over, or
/// where it was assigned when it handed none over yet; none (so the first
/// message the broker has) in the topics of `lost`, which the broker made
/// again.
pub fn resume_at(
    consumer: &StreamConsumer<crate::context::LinkContext>,
    assigned: &Offsets,
    lost: &[&str],
) -> Offsets {
    let positions = consumer.position().map(|list| {
        list.elements()
            .iter()
            .map(|element| {
                let topic = element.topic().to_string();
                ((topic, element.partition()), element.offset())
            })
            .collect::<Vec<_>>()
    });
    merge_positions(assigned, positions.unwrap_or_default(), lost)
}

fn merge_positions(
    assigned: &Offsets,
    positions: impl IntoIterator<Item = ((String, i32), Offset)>,
    lost: &[&str],
) -> Offsets {
    let mut offsets = assigned.clone();
    for (partition, offset) in positions {
        if let Offset::Offset(next) = offset {
            offsets.insert(partition, Offset::Offset(next));
        }
    }
    offsets.retain(|(topic, _), _| !lost.contains(&topic.as_str()));
    offsets
}

/// The partition count of each topic of `names` (0 when the brokers do not
/// list it), from one metadata request for all topics.
///
/// A request for named topics would be lighter, but librdkafka 2.12 crashes
/// on the answer Tansu gives for a topic it no longer has (a topic without a
/// name), which is what a restarted in-memory broker answers.
pub fn listed(
    consumer: &StreamConsumer<crate::context::LinkContext>,
    names: &[String],
) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(None, Duration::from_millis(1000))?;
    Ok(names
        .iter()
        .map(|name| {
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32)
        })
        .collect())
}

pub fn describe(error: KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{error} ({code:?})"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_consumer_resumes_where_the_old_stood_and_reads_lost_topics_from_their_start() {
        let key = |topic: &str, partition| (topic.to_string(), partition);
        let assigned: Offsets = [
            (key("c.broadcast", 0), Offset::Offset(10)),
            (key("c.broadcast", 1), Offset::Offset(20)),
            (key("c.node.1", 0), Offset::Offset(5)),
        ]
        .into_iter()
        .collect();
        let positions = [
            // Read up to 14: resume at 15.
            (key("c.broadcast", 0), Offset::Offset(15)),
            // Nothing read since the assignment: where it was assigned.
            (key("c.broadcast", 1), Offset::Invalid),
            (key("c.node.1", 0), Offset::Offset(9)),
        ];
        let merged = merge_positions(&assigned, positions, &["c.node.1"]);
        let expected: Offsets = [
            (key("c.broadcast", 0), Offset::Offset(15)),
            (key("c.broadcast", 1), Offset::Offset(20)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            merged, expected,
            "the lost topic has no offset: from its start"
        );
    }

    #[test]
    fn cluster_names_that_cannot_name_topics_are_refused_with_the_field() {
        assert!(check_cluster_name("mail-eu_1.prod").is_ok());
        for bad in ["", "mail cluster", "mail/eu", &"x".repeat(240)] {
            let error = check_cluster_name(bad).unwrap_err().to_string();
            assert!(
                error.contains("cluster: ") && error.contains("cannot name Kafka topics"),
                "{bad:?}: {error}"
            );
        }
    }
}
