//! Publishing Kubernetes Events (`events.k8s.io/v1`) about environments.
//!
//! An event repeated within [`REPEAT_WINDOW`] (the same type, action, reason and object)
//! becomes a series on the first one (its count and last time patched) instead of a new
//! object, as `kubectl` and kube's own recorder do. To know a repeat, the recorder keeps
//! of each event it published only what a repeat needs (where it is, its count, when it
//! was last seen) under a hash of what makes two events the same: about 100 bytes each,
//! where a copy of the whole event cost about 2 KB, and closing 1000 pull requests
//! publishes 2000 events.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

/// How long a published event is remembered, so that a repeat adds to its series.
pub const REPEAT_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// How often the record of published events drops what fell out of the window.
const FORGET_EVERY: SignedDuration = SignedDuration::from_secs(30);

/// Publishes events as one controller (and, with several replicas, one instance).
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Arc<Mutex<Recent>>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl EventRecorder {
    /// A recorder reporting as `controller`, instance `instance` (else `controller`).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        EventRecorder {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            recent: Arc::default(),
        }
    }

    /// Publishes `event` about `regarding` (in its namespace, else `default`): a new
    /// Event, or a repeat of one published within [`REPEAT_WINDOW`] added to its series.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = self.key(event, regarding);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let repeat = self.lock().repeat(key, now);
        if let Some(Repeat { name, count }) = repeat {
            let patch = json!({"series": EventSeries {
                count,
                last_observed_time: MicroTime(now),
            }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Deleted meanwhile (the API server's event TTL): publish anew.
                Err(kube::Error::Api(s)) if s.is_not_found() => self.lock().forget(key),
                Err(e) => {
                    self.lock().forget(key);
                    return Err(e);
                }
            }
        }
        let created = api
            .create(&PostParams::default(), &self.event(event, regarding, now))
            .await?;
        if let Some(name) = created.metadata.name {
            self.lock().published(key, name, now);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What makes two events the same: their type, action, reason, reporter, and the
    /// object they are about (by API version, kind, namespace, name and UID) and the one
    /// they relate to.
    fn key(&self, event: &Event, regarding: &ObjectReference) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        matches!(event.type_, EventType::Warning).hash(&mut h);
        event.action.hash(&mut h);
        event.reason.hash(&mut h);
        self.controller.hash(&mut h);
        self.instance.hash(&mut h);
        let reference = |r: &ObjectReference, h: &mut std::collections::hash_map::DefaultHasher| {
            r.api_version.hash(h);
            r.kind.hash(h);
            r.namespace.hash(h);
            r.name.hash(h);
            r.uid.hash(h);
        };
        reference(regarding, &mut h);
        if let Some(related) = &event.secondary {
            reference(related, &mut h);
        }
        h.finish()
    }

    fn event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        K8sEvent {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        }
    }
}

/// An earlier event a repeat adds to: its name and the series count after this repeat.
#[derive(Debug, PartialEq, Eq)]
struct Repeat {
    name: String,
    count: i32,
}

/// What the recorder remembers of one published event.
#[derive(Debug)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// The events published within the window, by key.
#[derive(Debug)]
struct Recent {
    by_key: HashMap<u64, Published>,
    forgotten_at: Timestamp,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            by_key: HashMap::new(),
            forgotten_at: Timestamp::UNIX_EPOCH,
        }
    }
}

impl Recent {
    /// The earlier event an event with `key` repeats at `now`, its count raised; `None`
    /// when there is none within the window.
    fn repeat(&mut self, key: u64, now: Timestamp) -> Option<Repeat> {
        if now.duration_since(self.forgotten_at) >= FORGET_EVERY {
            self.by_key
                .retain(|_, p| now.duration_since(p.last) < REPEAT_WINDOW);
            self.forgotten_at = now;
        }
        let published = self
            .by_key
            .get_mut(&key)
            .filter(|p| now.duration_since(p.last) < REPEAT_WINDOW)?;
        published.count = published.count.saturating_add(1);
        published.last = now;
        Some(Repeat {
            name: published.name.clone(),
            count: published.count,
        })
    }

    /// Records a new event `name` published at `now`.
    fn published(&mut self, key: u64, name: String, now: Timestamp) {
        self.by_key.insert(
            key,
            Published {
                name,
                count: 1,
                last: now,
            },
        );
    }

    fn forget(&mut self, key: u64) {
        self.by_key.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_repeat_within_the_window_adds_to_the_first_event_s_series() {
        let mut recent = Recent::default();
        assert_eq!(recent.repeat(7, at("2026-12-08T10:00:00Z")), None);
        recent.published(7, "shop-pr-1.17a".into(), at("2026-12-08T10:00:00Z"));
        assert_eq!(
            recent.repeat(7, at("2026-12-08T10:01:00Z")),
            Some(Repeat {
                name: "shop-pr-1.17a".into(),
                count: 2
            })
        );
        assert_eq!(
            recent
                .repeat(7, at("2026-12-08T10:06:30Z"))
                .map(|r| r.count),
            Some(3),
            "the window counts from the last repeat"
        );
        // another event is not a repeat
        assert_eq!(recent.repeat(8, at("2026-12-08T10:06:31Z")), None);
    }

    #[test]
    fn an_event_past_the_window_is_new_and_old_records_are_dropped() {
        let mut recent = Recent::default();
        recent.published(7, "a".into(), at("2026-12-08T10:00:00Z"));
        recent.published(8, "b".into(), at("2026-12-08T10:05:00Z"));
        assert_eq!(recent.repeat(7, at("2026-12-08T10:06:00Z")), None);
        // the record of 7 went with the sweep; 8 is still within its window
        assert_eq!(recent.by_key.len(), 1);
        assert_eq!(
            recent.repeat(8, at("2026-12-08T10:06:01Z")).map(|r| r.name),
            Some("b".to_string())
        );
        recent.forget(8);
        assert!(recent.by_key.is_empty());
    }
}
