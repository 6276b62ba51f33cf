//! What happens after Ready: the stages (test data, tests), in order, each once the one
//! before passed. They move the environment through Testing to Complete or Failed.

use std::collections::BTreeMap;
use std::sync::Arc;

use previewd_core::{Observation, Phase};

use super::humanize;
use super::lifecycle::Phases;
use super::namespace::NamespaceMeta;
use super::object::DesiredObject;
use super::pass::{Pass, Step};
use super::provision::needs_apply;
use super::render::{confine, scoped};
use crate::crd::condition;
use crate::strategy::{NamespaceView, RenderInput, Stage, StageOutcome};

/// What the stages did in this pass.
pub(super) struct StageRun {
    /// Their objects (Jobs), scoped to the namespace.
    pub objects: Vec<DesiredObject>,
    /// The `TestsCompleted` condition: passed, reason, message.
    pub condition: (bool, &'static str, String),
    /// The message of a failed stage (the environment's message).
    pub failure_message: Option<String>,
}

/// Runs the stages when the application serves; `None` when none runs.
pub(super) fn run(
    pass: &mut Pass<'_, '_>,
    render: &RenderInput<'_>,
    view: &NamespaceView,
    ns_meta: Option<&NamespaceMeta>,
    labels: &BTreeMap<String, String>,
    services_deployed: bool,
    phases: &mut Phases,
) -> Step<Option<StageRun>> {
    let input = pass.input;
    let env = input.env;
    let now = input.now;
    let enabled: Vec<&Arc<dyn Stage>> = input.stages.iter().filter(|s| s.enabled(env)).collect();
    let failed_in_stage = phases.now == Phase::Failed
        && pass
            .old
            .conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.reason == "TestsFailed");
    if enabled.is_empty() || !services_deployed || !(phases.now.is_serving() || failed_in_stage) {
        return Ok(None);
    }
    let mut outcome = StageOutcome::Passed(String::new());
    let mut stage_objects = Vec::new();
    for stage in &enabled {
        let objects = stage
            .desired(render)
            .and_then(|mut objects| {
                confine(&mut objects, render, None)?;
                scoped(objects, render.namespace, labels)
            })
            .map_err(|e| pass.stall(&e.reason, &e.message))?;
        outcome = stage.outcome(render, view);
        if let StageOutcome::Running(_) = outcome
            && let Some(limit) = stage.timeout(env)
            && let Some(started) = started_at(&objects, view)
            && now
                >= started
                    .checked_add(jiff::SignedDuration::try_from(limit).unwrap_or_default())
                    .unwrap_or(jiff::Timestamp::MAX)
        {
            outcome = StageOutcome::Failed(format!(
                "stage {} did not finish within {}",
                stage.name(),
                humanize(limit)
            ));
        }
        stage.record(render, view, &outcome, &mut pass.status);
        stage_objects.extend(objects);
        if !matches!(outcome, StageOutcome::Passed(_)) {
            break;
        }
    }
    let stage_applying = needs_apply(&stage_objects, view, ns_meta);
    let (observation, message) = match &outcome {
        _ if !stage_applying.is_empty() => (Observation::TestsStarted, "starting the stages"),
        StageOutcome::Running(m) => (Observation::TestsStarted, m.as_str()),
        StageOutcome::Passed(m) => (Observation::TestsPassed, m.as_str()),
        StageOutcome::Failed(m) => (Observation::TestsFailed { failed: 1 }, m.as_str()),
    };
    phases.observe(&observation, message);
    let (condition, failure_message) = match outcome {
        StageOutcome::Passed(m) => ((true, "StagesPassed", m), None),
        StageOutcome::Failed(m) => ((false, "StageFailed", m.clone()), Some(m)),
        StageOutcome::Running(m) => ((false, "StageRunning", m), None),
    };
    Ok(Some(StageRun {
        objects: stage_objects,
        condition,
        failure_message,
    }))
}

/// When a stage started: the creation of the oldest of its objects the caches hold whole.
fn started_at(objects: &[DesiredObject], view: &NamespaceView) -> Option<jiff::Timestamp> {
    objects
        .iter()
        .filter_map(|o| view.objects.get(&o.key()))
        .filter_map(|o| o.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .min()
}
