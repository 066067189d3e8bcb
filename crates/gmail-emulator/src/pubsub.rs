//! Cloud Pub/Sub's state, as much of it as Gmail push needs: topics with their publish grants,
//! pull subscriptions with their subscriber grants, and at-least-once delivery with ack
//! deadlines and redelivery, on the emulator's clock.
//!
//! Delivery follows Pub/Sub's documented contract: a pulled message is outstanding until it is
//! acknowledged or its ack deadline passes, after which it is delivered again (with a higher
//! `deliveryAttempt`); `modifyAckDeadline` extends the deadline, or with 0 seconds hands the
//! message back at once. Seeded faults drop, duplicate and delay what is published. Times are
//! milliseconds on the emulator's clock, passed in by the callers; nothing here reads a clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::util::SplitMix;

/// The project the emulator's service account and web client belong to: a topic for
/// `users.watch` must be in it.
pub(crate) const PROJECT: &str = "emulator-project";
/// The account Gmail publishes as; a topic must grant it `roles/pubsub.publisher`.
pub(crate) const GMAIL_PUSH_ACCOUNT: &str =
    "serviceAccount:gmail-api-push@system.gserviceaccount.com";
/// Pub/Sub's bounds on a subscription's ack deadline, in seconds.
pub(crate) const ACK_DEADLINE_RANGE: std::ops::RangeInclusive<i64> = 10..=600;
/// `modifyAckDeadline` also takes 0 (hand the message back now).
pub(crate) const MODIFY_DEADLINE_RANGE: std::ops::RangeInclusive<i64> = 0..=600;

/// A refusal, rendered by the route handlers in Google's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PubSubError {
    NotFound(String),
    AlreadyExists(String),
    InvalidArgument(String),
}

#[derive(Debug, Default)]
pub(crate) struct Topic {
    /// IAM members (`serviceAccount:…`, `user:…`) holding `roles/pubsub.publisher`.
    pub(crate) publishers: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct PubMessage {
    pub(crate) id: String,
    pub(crate) data: Vec<u8>,
    pub(crate) publish_time_ms: i64,
}

#[derive(Debug)]
struct Queued {
    message: PubMessage,
    /// Not handed out before this time (a delayed or a nacked message).
    visible_at: i64,
    /// Deliveries so far.
    attempts: u32,
}

#[derive(Debug)]
struct Outstanding {
    message: PubMessage,
    deadline: i64,
    attempts: u32,
}

#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) topic: String,
    pub(crate) ack_deadline_seconds: i64,
    /// IAM members holding `roles/pubsub.subscriber`.
    pub(crate) subscribers: BTreeSet<String>,
    backlog: VecDeque<Queued>,
    /// By ack ID.
    outstanding: BTreeMap<String, Outstanding>,
}

impl Subscription {
    /// Messages not yet acknowledged: queued and outstanding.
    pub(crate) fn unacked(&self) -> usize {
        self.backlog.len() + self.outstanding.len()
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

/// One pulled message: its ack ID, the message and which delivery this is (1 = first).
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) ack_id: String,
    pub(crate) message: PubMessage,
    pub(crate) delivery_attempt: u32,
}

/// Seeded faults on what is published (per subscription copy).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushFaults {
    /// Probability that a notification is never delivered.
    #[serde(default)]
    pub(crate) drop_rate: f64,
    /// Probability that a notification is delivered twice (two messages, two IDs' worth of
    /// deliveries of the same message ID, as Pub/Sub's at-least-once delivery may).
    #[serde(default)]
    pub(crate) duplicate_rate: f64,
    /// A notification becomes pullable after a delay drawn from this range.
    #[serde(default)]
    pub(crate) delay_ms: [u64; 2],
    #[serde(default)]
    pub(crate) seed: Option<u64>,
}

/// Counters for the control API's stats.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct PushStats {
    pub(crate) published: u64,
    pub(crate) dropped: u64,
    pub(crate) duplicated: u64,
    pub(crate) delivered: u64,
    pub(crate) redelivered: u64,
    pub(crate) acknowledged: u64,
    /// Gmail notifications not published because the user had one in the last second.
    pub(crate) rate_limited: u64,
    /// Gmail notifications for a watch whose topic is gone or no longer grants publish.
    pub(crate) unpublishable: u64,
}

#[derive(Debug)]
pub(crate) struct PubSub {
    pub(crate) topics: BTreeMap<String, Topic>,
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    pub(crate) faults: PushFaults,
    rng: SplitMix,
    next_message: u64,
    next_ack: u64,
    pub(crate) stats: PushStats,
}

impl PubSub {
    pub(crate) fn new(seed: u64) -> PubSub {
        PubSub {
            topics: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            faults: PushFaults::default(),
            rng: SplitMix::new(seed ^ 0x5055_4253_5542),
            next_message: 1,
            next_ack: 1,
            stats: PushStats::default(),
        }
    }

    pub(crate) fn set_faults(&mut self, faults: PushFaults, fallback_seed: u64) {
        self.rng = SplitMix::new(faults.seed.unwrap_or(fallback_seed) ^ 0x5055_4253_5542);
        self.faults = faults;
    }

    pub(crate) fn create_topic(&mut self, name: &str) -> Result<(), PubSubError> {
        if self.topics.contains_key(name) {
            return Err(PubSubError::AlreadyExists(format!(
                "Resource already exists in the project (resource={}).",
                short(name)
            )));
        }
        self.topics.insert(name.to_owned(), Topic::default());
        Ok(())
    }

    /// Deletes a topic; its subscriptions stay, detached (`_deleted-topic_`), as in Pub/Sub.
    pub(crate) fn delete_topic(&mut self, name: &str) -> Result<(), PubSubError> {
        self.topics.remove(name).ok_or_else(|| not_found(name))?;
        for sub in self.subscriptions.values_mut() {
            if sub.topic == name {
                sub.topic = "_deleted-topic_".to_owned();
            }
        }
        Ok(())
    }

    pub(crate) fn topic(&self, name: &str) -> Result<&Topic, PubSubError> {
        self.topics.get(name).ok_or_else(|| not_found(name))
    }

    pub(crate) fn set_publisher(
        &mut self,
        topic: &str,
        member: &str,
        granted: bool,
    ) -> Result<(), PubSubError> {
        let t = self.topics.get_mut(topic).ok_or_else(|| not_found(topic))?;
        if granted {
            t.publishers.insert(member.to_owned());
        } else {
            t.publishers.remove(member);
        }
        Ok(())
    }

    pub(crate) fn create_subscription(
        &mut self,
        name: &str,
        topic: &str,
        ack_deadline_seconds: i64,
    ) -> Result<(), PubSubError> {
        if !self.topics.contains_key(topic) {
            return Err(not_found(topic));
        }
        if self.subscriptions.contains_key(name) {
            return Err(PubSubError::AlreadyExists(format!(
                "Resource already exists in the project (resource={}).",
                short(name)
            )));
        }
        if !ACK_DEADLINE_RANGE.contains(&ack_deadline_seconds) {
            return Err(PubSubError::InvalidArgument(format!(
                "The ack deadline must be between 10 and 600 seconds (got {ack_deadline_seconds})."
            )));
        }
        self.subscriptions.insert(
            name.to_owned(),
            Subscription {
                topic: topic.to_owned(),
                ack_deadline_seconds,
                subscribers: BTreeSet::new(),
                backlog: VecDeque::new(),
                outstanding: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub(crate) fn delete_subscription(&mut self, name: &str) -> Result<(), PubSubError> {
        self.subscriptions
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    pub(crate) fn subscription(&self, name: &str) -> Result<&Subscription, PubSubError> {
        self.subscriptions.get(name).ok_or_else(|| not_found(name))
    }

    pub(crate) fn set_subscriber(
        &mut self,
        sub: &str,
        member: &str,
        granted: bool,
    ) -> Result<(), PubSubError> {
        let s = self
            .subscriptions
            .get_mut(sub)
            .ok_or_else(|| not_found(sub))?;
        if granted {
            s.subscribers.insert(member.to_owned());
        } else {
            s.subscribers.remove(member);
        }
        Ok(())
    }

    /// Publishes `data` to every subscription of `topic` (the caller checked the grant).
    /// Returns the message ID.
    pub(crate) fn publish(
        &mut self,
        topic: &str,
        data: Vec<u8>,
        now: i64,
    ) -> Result<String, PubSubError> {
        if !self.topics.contains_key(topic) {
            return Err(not_found(topic));
        }
        let id = self.next_message.to_string();
        self.next_message += 1;
        self.stats.published += 1;
        let message = PubMessage {
            id: id.clone(),
            data,
            publish_time_ms: now,
        };
        let names: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.topic == topic)
            .map(|(n, _)| n.clone())
            .collect();
        let faults = self.faults.clone();
        for name in names {
            if faults.drop_rate > 0.0 && self.rng.unit() < faults.drop_rate {
                self.stats.dropped += 1;
                continue;
            }
            let copies = if faults.duplicate_rate > 0.0 && self.rng.unit() < faults.duplicate_rate {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let [lo, hi] = faults.delay_ms;
                let delay = if hi > lo {
                    lo + self.rng.below(hi - lo + 1)
                } else {
                    lo
                };
                let sub = self.subscriptions.get_mut(&name).expect("listed above");
                sub.backlog.push_back(Queued {
                    message: message.clone(),
                    visible_at: now + i64::try_from(delay).unwrap_or(0),
                    attempts: 0,
                });
            }
        }
        Ok(id)
    }

    /// Up to `max` messages of `sub` that are due: expired outstanding ones first go back to
    /// the queue (redelivery), then visible queued ones are handed out with a new ack ID and
    /// the subscription's ack deadline.
    pub(crate) fn pull(
        &mut self,
        sub: &str,
        max: usize,
        now: i64,
    ) -> Result<Vec<Received>, PubSubError> {
        let s = self
            .subscriptions
            .get_mut(sub)
            .ok_or_else(|| not_found(sub))?;
        let expired: Vec<String> = s
            .outstanding
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for ack_id in expired {
            if let Some(o) = s.outstanding.remove(&ack_id) {
                s.backlog.push_front(Queued {
                    message: o.message,
                    visible_at: now,
                    attempts: o.attempts,
                });
            }
        }
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(s.backlog.len());
        while let Some(q) = s.backlog.pop_front() {
            if out.len() >= max || q.visible_at > now {
                kept.push_back(q);
                continue;
            }
            let ack_id = format!("ack-{}", self.next_ack);
            self.next_ack += 1;
            let attempts = q.attempts + 1;
            if attempts > 1 {
                self.stats.redelivered += 1;
            }
            self.stats.delivered += 1;
            s.outstanding.insert(
                ack_id.clone(),
                Outstanding {
                    message: q.message.clone(),
                    deadline: now + s.ack_deadline_seconds * 1000,
                    attempts,
                },
            );
            out.push(Received {
                ack_id,
                message: q.message,
                delivery_attempt: attempts,
            });
        }
        s.backlog = kept;
        Ok(out)
    }

    /// Acknowledges; unknown or expired ack IDs are ignored, as Pub/Sub does.
    pub(crate) fn acknowledge(&mut self, sub: &str, ack_ids: &[String]) -> Result<(), PubSubError> {
        let s = self
            .subscriptions
            .get_mut(sub)
            .ok_or_else(|| not_found(sub))?;
        for id in ack_ids {
            if s.outstanding.remove(id).is_some() {
                self.stats.acknowledged += 1;
            }
        }
        Ok(())
    }

    /// Sets the deadline of outstanding messages to `now + seconds`; 0 hands them back now.
    pub(crate) fn modify_ack_deadline(
        &mut self,
        sub: &str,
        ack_ids: &[String],
        seconds: i64,
        now: i64,
    ) -> Result<(), PubSubError> {
        if !MODIFY_DEADLINE_RANGE.contains(&seconds) {
            return Err(PubSubError::InvalidArgument(format!(
                "Invalid ack deadline given: {seconds}. It must be between 0 and 600 seconds."
            )));
        }
        let s = self
            .subscriptions
            .get_mut(sub)
            .ok_or_else(|| not_found(sub))?;
        for id in ack_ids {
            if let Some(o) = s.outstanding.get_mut(id) {
                o.deadline = now + seconds * 1000;
            }
        }
        Ok(())
    }
}

fn not_found(resource: &str) -> PubSubError {
    PubSubError::NotFound(format!(
        "Resource not found (resource={}).",
        short(resource)
    ))
}

/// The last path segment, as Pub/Sub names resources in its errors.
fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "projects/p/topics/t";
    const SUB: &str = "projects/p/subscriptions/s";

    fn world() -> PubSub {
        let mut p = PubSub::new(7);
        p.create_topic(TOPIC).unwrap();
        p.create_subscription(SUB, TOPIC, 10).unwrap();
        p
    }

    #[test]
    fn an_unacknowledged_message_is_delivered_again_after_its_deadline() {
        let mut p = world();
        p.publish(TOPIC, b"one".to_vec(), 0).unwrap();
        let first = p.pull(SUB, 10, 0).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].delivery_attempt, 1);
        assert!(
            p.pull(SUB, 10, 9_999).unwrap().is_empty(),
            "still outstanding"
        );
        let again = p.pull(SUB, 10, 10_000).unwrap();
        assert_eq!(again.len(), 1, "redelivered at the deadline");
        assert_eq!(again[0].message.id, first[0].message.id);
        assert_eq!(again[0].delivery_attempt, 2);
        assert_ne!(again[0].ack_id, first[0].ack_id);
        // The stale ack ID no longer acknowledges anything; the new one does.
        p.acknowledge(SUB, std::slice::from_ref(&first[0].ack_id))
            .unwrap();
        assert_eq!(p.subscription(SUB).unwrap().unacked(), 1);
        p.acknowledge(SUB, std::slice::from_ref(&again[0].ack_id))
            .unwrap();
        assert_eq!(p.subscription(SUB).unwrap().unacked(), 0);
        assert!(p.pull(SUB, 10, 100_000).unwrap().is_empty());
    }

    #[test]
    fn modify_ack_deadline_extends_or_hands_back() {
        let mut p = world();
        p.publish(TOPIC, b"one".to_vec(), 0).unwrap();
        let got = p.pull(SUB, 10, 0).unwrap();
        p.modify_ack_deadline(SUB, &[got[0].ack_id.clone()], 60, 5_000)
            .unwrap();
        assert!(p.pull(SUB, 10, 64_999).unwrap().is_empty(), "extended");
        let again = p.pull(SUB, 10, 65_000).unwrap();
        assert_eq!(again.len(), 1);
        p.modify_ack_deadline(SUB, &[again[0].ack_id.clone()], 0, 65_001)
            .unwrap();
        assert_eq!(p.pull(SUB, 10, 65_001).unwrap().len(), 1, "nacked: at once");
        assert!(matches!(
            p.modify_ack_deadline(SUB, &[], 601, 0),
            Err(PubSubError::InvalidArgument(_))
        ));
    }

    #[test]
    fn pull_honours_max_and_delay_and_keeps_order() {
        let mut p = world();
        p.set_faults(
            PushFaults {
                delay_ms: [500, 500],
                ..PushFaults::default()
            },
            1,
        );
        for i in 0..5u8 {
            p.publish(TOPIC, vec![i], 0).unwrap();
        }
        assert!(p.pull(SUB, 10, 499).unwrap().is_empty(), "delayed");
        let two = p.pull(SUB, 2, 500).unwrap();
        assert_eq!(
            two.iter().map(|r| r.message.data[0]).collect::<Vec<_>>(),
            [0, 1]
        );
        let rest = p.pull(SUB, 10, 500).unwrap();
        assert_eq!(
            rest.iter().map(|r| r.message.data[0]).collect::<Vec<_>>(),
            [2, 3, 4]
        );
    }

    #[test]
    fn seeded_drops_and_duplicates_are_counted_and_repeatable() {
        let run = || {
            let mut p = world();
            p.set_faults(
                PushFaults {
                    drop_rate: 0.3,
                    duplicate_rate: 0.3,
                    seed: Some(42),
                    ..PushFaults::default()
                },
                0,
            );
            for i in 0..200u8 {
                p.publish(TOPIC, vec![i], 0).unwrap();
            }
            let got: Vec<u8> = p
                .pull(SUB, 1000, 0)
                .unwrap()
                .iter()
                .map(|r| r.message.data[0])
                .collect();
            (got, p.stats.clone())
        };
        let (a, stats) = run();
        let (b, _) = run();
        assert_eq!(a, b, "the same seed, the same deliveries");
        assert!(stats.dropped > 20 && stats.duplicated > 20, "{stats:?}");
        assert_eq!(
            a.len() as u64,
            200 - stats.dropped + stats.duplicated,
            "{stats:?}"
        );
    }

    #[test]
    fn a_subscription_needs_an_existing_topic_and_a_valid_deadline() {
        let mut p = PubSub::new(1);
        assert!(matches!(
            p.create_subscription(SUB, TOPIC, 10),
            Err(PubSubError::NotFound(_))
        ));
        p.create_topic(TOPIC).unwrap();
        assert!(matches!(
            p.create_topic(TOPIC),
            Err(PubSubError::AlreadyExists(_))
        ));
        assert!(matches!(
            p.create_subscription(SUB, TOPIC, 5),
            Err(PubSubError::InvalidArgument(_))
        ));
        p.create_subscription(SUB, TOPIC, 10).unwrap();
        // Messages published before a subscription exists are not delivered to it.
        p.delete_subscription(SUB).unwrap();
        p.publish(TOPIC, b"x".to_vec(), 0).unwrap();
        p.create_subscription(SUB, TOPIC, 10).unwrap();
        assert!(p.pull(SUB, 10, 0).unwrap().is_empty());
    }
}
