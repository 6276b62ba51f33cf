//! The event recorder against the local control plane (`testenv/up`): a repeated event
//! becomes a series on the first Event object, a different one is a new object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use previewd_kube::controller::events::EventRecorder;
use support::*;

fn event(reason: &str, type_: EventType) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(format!("{reason} happened")),
        action: "Reconcile".into(),
        secondary: None,
    }
}

#[tokio::test]
async fn a_repeated_event_is_a_series_and_a_new_one_an_object_of_its_own() {
    let client = client().await;
    let ns = temp_namespace(&client, "events").await;
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let regarding = configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "subject"}})).unwrap(),
        )
        .await
        .unwrap();
    let reference: ObjectReference = regarding.object_ref(&());
    let recorder = EventRecorder::new(client.clone(), "previewd", Some("test-1".into()));

    for _ in 0..3 {
        recorder
            .publish(&event("Provisioning", EventType::Normal), &reference)
            .await
            .unwrap();
    }
    recorder
        .publish(&event("Failed", EventType::Warning), &reference)
        .await
        .unwrap();

    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let mut listed = events.list(&ListParams::default()).await.unwrap().items;
    listed.sort_by_key(|e| e.reason.clone());
    assert_eq!(listed.len(), 2, "{listed:?}");
    let (failed, provisioning) = (&listed[0], &listed[1]);
    assert_eq!(provisioning.reason.as_deref(), Some("Provisioning"));
    assert_eq!(provisioning.type_.as_deref(), Some("Normal"));
    assert_eq!(provisioning.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(provisioning.note.as_deref(), Some("Provisioning happened"));
    assert_eq!(
        provisioning.reporting_controller.as_deref(),
        Some("previewd")
    );
    assert_eq!(provisioning.reporting_instance.as_deref(), Some("test-1"));
    let about = provisioning.regarding.as_ref().unwrap();
    assert_eq!(about.name.as_deref(), Some("subject"));
    assert_eq!(about.uid, regarding.metadata.uid);
    assert_eq!(failed.reason.as_deref(), Some("Failed"));
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert!(failed.series.is_none());

    // An event deleted meanwhile (the API server's event TTL) is published anew.
    events
        .delete(&provisioning.name_any(), &Default::default())
        .await
        .unwrap();
    recorder
        .publish(&event("Provisioning", EventType::Normal), &reference)
        .await
        .unwrap();
    let again: Vec<K8sEvent> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Provisioning"))
        .collect();
    assert_eq!(again.len(), 1);
    assert!(again[0].series.is_none());
    delete_namespace(&client, &ns).await;
}
