//! Coalesces concurrent merge patches of one map in one object into one request.
//!
//! Every closed pull request records a tombstone in its `PreviewRepository`'s status. When
//! many pull requests close at once, each merge patch of that one object conflicts with
//! the others inside the API server, which retries them one after the other: at 1000
//! closes the patches took 3 s at p50 and 7 s at p95, past the webhook's store timeout.
//! Here the first caller writes every entry queued so far in one patch while later
//! callers queue theirs for the next one, so at most one patch per object is in flight and
//! a burst costs a handful of requests. Each caller gets the result of the patch that
//! carried its entries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::StoreError;

/// Queues of entries, by object.
#[derive(Default)]
pub(crate) struct Coalescer {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    queue: Mutex<Vec<Pending>>,
    flush: tokio::sync::Mutex<()>,
}

struct Pending {
    entries: Map<String, Value>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl Coalescer {
    /// Writes `entries` into the object `key` with `write` (given the merged entries of
    /// every caller it carries), and returns the result of the write that carried them.
    pub(crate) async fn submit<F, Fut>(
        &self,
        key: &str,
        entries: Map<String, Value>,
        write: F,
    ) -> Result<(), StoreError>
    where
        F: FnOnce(Map<String, Value>) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(key.to_string()).or_default().clone()
        };
        let (done, mut result) = oneshot::channel();
        slot.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending { entries, done });
        let _flushing = slot.flush.lock().await;
        match result.try_recv() {
            // An earlier caller's patch carried these entries.
            Ok(outcome) => return outcome,
            Err(oneshot::error::TryRecvError::Closed) => return Err(dropped()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let batch = std::mem::take(&mut *slot.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let outcome = write(merge(batch.iter().map(|p| &p.entries))).await;
        for pending in batch {
            let _ = pending.done.send(outcome.clone());
        }
        result.await.unwrap_or_else(|_| Err(dropped()))
    }
}

fn dropped() -> StoreError {
    StoreError::Unavailable("the write carrying this change was abandoned; retry".into())
}

/// The entries of several callers, in order: a value wins over a removal (`null`) of the
/// same key whatever their order (a removal is computed from older state), and of two
/// values the later one wins.
fn merge<'a>(batches: impl Iterator<Item = &'a Map<String, Value>>) -> Map<String, Value> {
    let mut merged = Map::new();
    for entries in batches {
        for (key, value) in entries {
            if value.is_null() {
                merged.entry(key.clone()).or_insert(Value::Null);
            } else {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    merged
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_value_wins_over_a_removal_and_the_later_value_wins() {
        let merged = merge(
            [
                map(json!({"a": 1, "b": null})),
                map(json!({"b": 2, "a": null, "c": null})),
                map(json!({"a": 3})),
            ]
            .iter(),
        );
        assert_eq!(Value::Object(merged), json!({"a": 3, "b": 2, "c": null}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_few_writes_and_each_gets_its_result() {
        let coalescer = Arc::new(Coalescer::default());
        let writes = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(Mutex::new(Map::new()));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let coalescer = coalescer.clone();
            let writes = writes.clone();
            let written = written.clone();
            tasks.push(tokio::spawn(async move {
                coalescer
                    .submit(
                        "repo",
                        map(json!({ format!("pr-{i}"): i })),
                        |entries| async move {
                            writes.fetch_add(1, Ordering::SeqCst);
                            // A slow API server: callers pile up behind this write.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            written.lock().unwrap().extend(entries);
                            Ok(())
                        },
                    )
                    .await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let written = written.lock().unwrap();
        assert_eq!(written.len(), 50, "every entry was written");
        let writes = writes.load(Ordering::SeqCst);
        assert!(writes < 50, "{writes} writes for 50 callers");
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_caller_it_carried() {
        let coalescer = Coalescer::default();
        let outcome = coalescer
            .submit("repo", map(json!({"a": 1})), |_| async {
                Err(StoreError::Unavailable("down".into()))
            })
            .await;
        assert_eq!(outcome, Err(StoreError::Unavailable("down".into())));
        // The next caller writes afresh.
        let outcome = coalescer
            .submit("repo", map(json!({"b": 1})), |entries| async move {
                assert_eq!(Value::Object(entries), json!({"b": 1}));
                Ok(())
            })
            .await;
        assert_eq!(outcome, Ok(()));
    }
}
