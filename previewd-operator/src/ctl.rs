//! Subcommands for people and scripts: `list`, `describe`, `extend`, `sleep`, `wake`,
//! `delete`. They talk to the cluster with the caller's own credentials, chosen as
//! kubectl chooses them (`--kubeconfig`, `--context`, `-n/--namespace`, else
//! `$KUBECONFIG`, `~/.kube/config` and its current context), never with the operator's.
//! `-o` selects the output as kubectl's does: `table` (default), `wide` (more columns),
//! `json` or `yaml` for scripts.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use previewd_kube::PreviewEnvironment;
use previewd_kube::crd::{
    ANNOTATION_LAST_COMMAND, ANNOTATION_SLEEP, ANNOTATION_SLEEP_REQUESTED_AT,
};
use previewd_kube::plan::sleep::{self, SLEEP_REQUEST_COMMAND};
use serde_json::{Value, json};

use crate::cli::parse_duration;

/// Output format.
#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// A table (or text) for people.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// JSON for scripts.
    Json,
    /// YAML for scripts.
    Yaml,
}

/// Where to look for environments.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Path to the kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "PREVIEWD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; default: its current context.
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace of the environments; default: the context's namespace.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Prints `doc` as JSON or YAML, or `text` for the table formats.
fn emit(output: Output, doc: &Value, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(doc)?),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(doc).context("rendering YAML")?
        ),
        Output::Table | Output::Wide => print!("{}", text()),
    }
    Ok(())
}

/// `previewd list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Where and how.
    #[command(flatten)]
    pub target: Target,
    /// Environments of every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
}

/// `previewd describe NAME`, `previewd delete NAME`.
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// The environment (or its PR number).
    pub name: String,
    /// Where and how.
    #[command(flatten)]
    pub target: Target,
}

/// `previewd extend NAME --by 2h`.
#[derive(Debug, Clone, Args)]
pub struct ExtendArgs {
    /// The environment (or its PR number).
    pub name: String,
    /// How much longer the environment lives (`30m`, `2h`, `1d`), up to its hard cap.
    #[arg(long, value_parser = parse_duration)]
    pub by: std::time::Duration,
    /// Where and how.
    #[command(flatten)]
    pub target: Target,
}

async fn connect(target: &Target) -> anyhow::Result<(Client, String)> {
    let config =
        crate::run::kube_config_for(target.kubeconfig.as_deref(), target.context.as_deref())
            .await?;
    let client = crate::run::client_as(config, "previewd-cli")?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, namespace))
}

/// Finds an environment by name, or by PR number when `name` is all digits.
async fn find(api: &Api<PreviewEnvironment>, name: &str) -> anyhow::Result<PreviewEnvironment> {
    if let Some(env) = api.get_opt(name).await.context("reading the environment")? {
        return Ok(env);
    }
    if let Ok(pr) = name.parse::<i64>() {
        let matches: Vec<_> = api
            .list(&ListParams::default())
            .await
            .context("listing environments")?
            .items
            .into_iter()
            .filter(|e| e.spec.pr_number == pr)
            .collect();
        match matches.len() {
            1 => return matches.into_iter().next().context("one match"),
            0 => {}
            n => anyhow::bail!(
                "{n} environments are for PR {pr} (several repositories): name one of them"
            ),
        }
    }
    anyhow::bail!("no environment {name:?} in this namespace")
}

/// One row of `previewd list`, also its JSON form.
pub fn summary(env: &PreviewEnvironment, now: Timestamp) -> Value {
    let status = env.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == previewd_kube::crd::condition::READY);
    let expires_in = status
        .expires_at
        .as_ref()
        .map(|t| t.0.duration_since(now))
        .map(human);
    json!({
        "namespace": env.namespace(),
        "name": env.name_any(),
        "repository": env.spec.repository,
        "pr": env.spec.pr_number,
        "phase": status.phase.map(|p| p.to_string()),
        "ready": ready.map(|c| c.status.clone()),
        "reason": ready.map(|c| c.reason.clone()),
        "branch": env.spec.branch,
        "headSHA": env.spec.head_sha,
        "url": status.url,
        "costToDate": status.costs.as_ref().and_then(|c| c.actual_to_date).map(|m| m.to_string()),
        "estimatedDaily": status.costs.as_ref().and_then(|c| c.estimated_daily).map(|m| m.to_string()),
        "expiresAt": status.expires_at.as_ref().map(|t| t.0.to_string()),
        "expiresIn": expires_in,
        "message": status.message,
    })
}

/// `1h 5m`, `12m`, `expired`.
pub fn human(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs <= 0 {
        return "expired".into();
    }
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// Renders rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let _ = write!(text, "{cell:<width$}   ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, headers.to_vec());
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `previewd list`.
pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let (client, namespace) = connect(&args.target).await?;
    let api: Api<PreviewEnvironment> = if args.all_namespaces {
        Api::all(client)
    } else {
        Api::namespaced(client, &namespace)
    };
    let mut envs = api
        .list(&ListParams::default())
        .await
        .context("listing PreviewEnvironments")?
        .items;
    envs.sort_by_key(|e| (e.namespace(), e.spec.repository.clone(), e.spec.pr_number));
    let now = Timestamp::now();
    let rows: Vec<Value> = envs.iter().map(|e| summary(e, now)).collect();
    let output = args.target.output;
    emit(output, &Value::Array(rows.clone()), || {
        list_table(&rows, args.all_namespaces, output == Output::Wide)
    })
}

/// The table of `previewd list`: with `all_namespaces` a NAMESPACE column first, and with
/// `wide` the branch, head commit, daily estimate and Ready reason too.
pub fn list_table(rows: &[Value], all_namespaces: bool, wide: bool) -> String {
    let mut columns = vec![
        ("NAME", "name"),
        ("REPOSITORY", "repository"),
        ("PR", "pr"),
        ("PHASE", "phase"),
        ("URL", "url"),
        ("COST", "costToDate"),
        ("EXPIRES IN", "expiresIn"),
    ];
    if all_namespaces {
        columns.insert(0, ("NAMESPACE", "namespace"));
    }
    if wide {
        columns.extend([
            ("BRANCH", "branch"),
            ("HEAD", "headSHA"),
            ("DAILY", "estimatedDaily"),
            ("REASON", "reason"),
        ]);
    }
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|(_, key)| match *key {
                    "headSHA" => cell(&r[*key]).chars().take(7).collect(),
                    _ => cell(&r[*key]),
                })
                .collect()
        })
        .collect();
    table(&headers, &table_rows)
}

/// `previewd describe`.
pub async fn describe(args: NameArgs) -> anyhow::Result<()> {
    let (client, namespace) = connect(&args.target).await?;
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &namespace);
    let env = find(&api, &args.name).await?;
    let events: Api<Event> = Api::namespaced(client, &namespace);
    let selector = format!(
        "regarding.kind=PreviewEnvironment,regarding.name={}",
        env.name_any()
    );
    let mut events = events
        .list(&ListParams::default().fields(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    let status = env.status.clone().unwrap_or_default();
    let mut doc = summary(&env, Timestamp::now());
    doc["environmentNamespace"] = json!(status.namespace);
    doc["services"] = json!(
        env.spec
            .services
            .iter()
            .map(|s| json!({"name": s.name, "image": s.image, "url": status.urls.get(&s.name)}))
            .collect::<Vec<_>>()
    );
    doc["conditions"] = json!(
        status
            .conditions
            .iter()
            .map(|c| json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message}))
            .collect::<Vec<_>>()
    );
    doc["tests"] = serde_json::to_value(&status.tests)?;
    doc["events"] = json!(
        events
            .iter()
            .map(|e| json!({
                "type": e.type_,
                "reason": e.reason,
                "note": e.note,
                "time": e.event_time.as_ref().map(|t| t.0.to_string()),
            }))
            .collect::<Vec<_>>()
    );
    emit(args.target.output, &doc, || describe_text(&doc))
}

/// The human form of `describe`.
pub fn describe_text(doc: &Value) -> String {
    let mut out = String::new();
    for (label, key) in [
        ("Name", "name"),
        ("Namespace", "namespace"),
        ("Repository", "repository"),
        ("PR", "pr"),
        ("Branch", "branch"),
        ("Head", "headSHA"),
        ("Phase", "phase"),
        ("Ready", "ready"),
        ("Reason", "reason"),
        ("Message", "message"),
        ("URL", "url"),
        ("Workloads in", "environmentNamespace"),
        ("Cost to date", "costToDate"),
        ("Estimated daily", "estimatedDaily"),
        ("Expires at", "expiresAt"),
        ("Expires in", "expiresIn"),
    ] {
        let _ = writeln!(out, "{label:<16}{}", cell(&doc[key]));
    }
    let section = |out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>| {
        let _ = writeln!(out, "\n{title}:");
        if rows.is_empty() {
            out.push_str("  (none)\n");
        } else {
            for line in table(headers, &rows).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    };
    let rows = |key: &str, fields: &[&str]| -> Vec<Vec<String>> {
        doc[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| fields.iter().map(|f| cell(&i[*f])).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    section(
        &mut out,
        "Services",
        &["NAME", "IMAGE", "URL"],
        rows("services", &["name", "image", "url"]),
    );
    section(
        &mut out,
        "Conditions",
        &["TYPE", "STATUS", "REASON", "MESSAGE"],
        rows("conditions", &["type", "status", "reason", "message"]),
    );
    let tests = &doc["tests"];
    let _ = writeln!(
        out,
        "\nTests:          {}",
        if tests.is_null() {
            "-".to_string()
        } else {
            format!(
                "{} passed, {} failed, {} skipped of {}",
                tests["passed"], tests["failed"], tests["skipped"], tests["total"]
            )
        }
    );
    section(
        &mut out,
        "Events",
        &["TIME", "TYPE", "REASON", "NOTE"],
        rows("events", &["time", "type", "reason", "note"]),
    );
    out
}

/// The TTL that makes an environment created at `created` live until `expires + by`,
/// in whole minutes (rounded up).
pub fn extended_ttl(created: Timestamp, expires: Timestamp, by: std::time::Duration) -> String {
    let target = expires.as_second().saturating_add(by.as_secs() as i64);
    let seconds = (target - created.as_second()).max(60);
    format!("{}m", (seconds + 59) / 60)
}

/// `previewd extend`: sets `spec.ttl` so that the environment expires `--by` later than
/// it does now (the controller still applies the hard cap, `spec.maxLifespan`).
pub async fn extend(args: ExtendArgs) -> anyhow::Result<()> {
    let (client, namespace) = connect(&args.target).await?;
    let api: Api<PreviewEnvironment> = Api::namespaced(client, &namespace);
    let env = find(&api, &args.name).await?;
    let status = env.status.clone().unwrap_or_default();
    let created = status
        .created_at
        .as_ref()
        .map(|t| t.0)
        .or_else(|| env.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .context("the environment has no creation time yet")?;
    let expires = status
        .expires_at
        .as_ref()
        .map(|t| t.0)
        .context("the environment has no expiry yet: wait for the controller to see it")?;
    let ttl = extended_ttl(created, expires, args.by);
    let patched = api
        .patch(
            &env.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ttl": ttl}})),
        )
        .await
        .context("updating spec.ttl")?;
    let answer =
        json!({"name": patched.name_any(), "ttl": ttl, "previousExpiresAt": expires.to_string()});
    emit(args.target.output, &answer, || {
        format!(
            "{}: ttl set to {ttl} (was expiring at {expires}); the hard cap still applies\n",
            patched.name_any()
        )
    })
}

/// `previewd sleep`: scales the environment's workloads to zero (namespace and data
/// kept), like `/preview sleep`; a push, `/preview wake` or `previewd wake` wakes it.
pub async fn sleep(args: NameArgs) -> anyhow::Result<()> {
    set_sleep(args, true).await
}

/// `previewd wake`: withdraws a sleep request and counts as activity (an idle sleep ends
/// too). An environment asleep for its cost budget is not woken: its budget decides.
pub async fn wake(args: NameArgs) -> anyhow::Result<()> {
    set_sleep(args, false).await
}

/// The sleep request as `/preview sleep` and `/preview wake` write it.
async fn set_sleep(args: NameArgs, asleep: bool) -> anyhow::Result<()> {
    let (client, namespace) = connect(&args.target).await?;
    let api: Api<PreviewEnvironment> = Api::namespaced(client, &namespace);
    let env = find(&api, &args.name).await?;
    let now = Timestamp::now().to_string();
    let annotations = if asleep {
        json!({ANNOTATION_SLEEP: SLEEP_REQUEST_COMMAND, ANNOTATION_SLEEP_REQUESTED_AT: now})
    } else {
        if env
            .annotations()
            .get(ANNOTATION_SLEEP)
            .is_some_and(|v| sleep::is_budget_request(v))
        {
            anyhow::bail!(
                "{} sleeps because its cost budget is exhausted; raise spec.costBudget (or the repository's) to wake it",
                env.name_any()
            );
        }
        json!({ANNOTATION_SLEEP: null, ANNOTATION_SLEEP_REQUESTED_AT: null, ANNOTATION_LAST_COMMAND: now})
    };
    let patched = api
        .patch(
            &env.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .context("updating the environment's sleep request")?;
    let name = patched.name_any();
    emit(
        args.target.output,
        &json!({"name": name, "sleep": asleep}),
        || {
            if asleep {
                format!(
                    "{name}: going to sleep (workloads scaled to zero, namespace and data kept)\n"
                )
            } else {
                format!("{name}: waking up\n")
            }
        },
    )
}

/// `previewd delete`: deletes the environment; its namespace goes with it.
pub async fn delete(args: NameArgs) -> anyhow::Result<()> {
    let (client, namespace) = connect(&args.target).await?;
    let api: Api<PreviewEnvironment> = Api::namespaced(client, &namespace);
    let env = find(&api, &args.name).await?;
    api.delete(&env.name_any(), &DeleteParams::default())
        .await
        .context("deleting the environment")?;
    emit(
        args.target.output,
        &json!({"name": env.name_any(), "deleted": true}),
        || {
            format!(
                "{} deleted (teardown of its namespace is in progress)\n",
                env.name_any()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn extension_is_whole_minutes_from_creation() {
        let created: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let expires: Timestamp = "2026-01-01T04:00:00Z".parse().unwrap();
        assert_eq!(
            extended_ttl(created, expires, std::time::Duration::from_secs(7200)),
            "360m"
        );
        assert_eq!(
            extended_ttl(created, expires, std::time::Duration::from_secs(30)),
            "241m"
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(SignedDuration::from_secs(-5)), "expired");
        assert_eq!(human(SignedDuration::from_secs(42)), "42s");
        assert_eq!(human(SignedDuration::from_secs(600)), "10m");
        assert_eq!(human(SignedDuration::from_secs(3900)), "1h 5m");
        assert_eq!(human(SignedDuration::from_secs(90_000)), "1d 1h");
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["NAME", "PR"],
            &[
                vec!["shop-pr-1".into(), "1".into()],
                vec!["a".into(), "1234".into()],
            ],
        );
        assert_eq!(t, "NAME        PR\nshop-pr-1   1\na           1234\n");
    }
}
