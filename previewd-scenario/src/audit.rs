//! Writes to the API server by who made them, from the local control plane's audit log
//! (`$STATE/audit.log`: one JSON line per completed write). The scale scenario marks the
//! log's end before and after each stage and counts what lies between, so that previewd's
//! writes per environment are set beside those of Kubernetes' own controllers, the
//! scheduler and kwok, and the API server's write throughput is read off the floor.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

/// The audit log of a local control plane.
#[derive(Clone, Debug)]
pub struct AuditLog {
    path: PathBuf,
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    verb: String,
    #[serde(default)]
    user: User,
    #[serde(default, rename = "userAgent")]
    user_agent: String,
    #[serde(default, rename = "objectRef")]
    object: ObjectRef,
}

#[derive(Default, Deserialize)]
struct User {
    #[serde(default)]
    username: String,
}

#[derive(Default, Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
}

/// Who made a write: a Kubernetes controller by its service account, the scheduler,
/// kwok, or (for the admin credentials the scenario and the operator share) the client
/// by its user agent (`previewd-controller`, `previewd-webhook`, the floor's clients,
/// the scenario).
pub fn writer(username: &str, user_agent: &str) -> String {
    if let Some(sa) = username.strip_prefix("system:serviceaccount:kube-system:") {
        return format!("kube-controller-manager/{sa}");
    }
    match username {
        "system:kube-scheduler" => "kube-scheduler".into(),
        "kwok-controller" => "kwok".into(),
        "system:apiserver" => "kube-apiserver".into(),
        "previewd-testenv-admin" => {
            let agent = user_agent.split(['/', ' ']).next().unwrap_or("");
            match agent {
                "previewd-controller" | "previewd-webhook" | "previewd" => agent.into(),
                _ => "scenario".into(),
            }
        }
        other => other.to_string(),
    }
}

/// Writes counted between two marks.
#[derive(Clone, Debug, Default)]
pub struct Writes {
    /// Writer → count.
    pub by_writer: BTreeMap<String, u64>,
    /// `writer verb resource` → count.
    pub by_kind: BTreeMap<String, u64>,
}

impl Writes {
    /// All writes.
    pub fn total(&self) -> u64 {
        self.by_writer.values().sum()
    }

    /// Writes of writers whose name starts with `prefix`.
    pub fn of(&self, prefix: &str) -> u64 {
        self.by_writer
            .iter()
            .filter(|(w, _)| w.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// As JSON, per environment (`n` environments) and over `seconds`.
    pub fn to_json(&self, n: u64, seconds: f64) -> Value {
        let n = n.max(1) as f64;
        let per_env: BTreeMap<&String, f64> = self
            .by_writer
            .iter()
            .map(|(w, c)| (w, (*c as f64 / n * 10.0).round() / 10.0))
            .collect();
        json!({
            "total": self.total(),
            "per_environment": (self.total() as f64 / n * 10.0).round() / 10.0,
            "per_second": if seconds > 0.0 { (self.total() as f64 / seconds * 10.0).round() / 10.0 } else { 0.0 },
            "per_environment_by_writer": per_env,
        })
    }
}

/// Where each audit file ended at one moment, by inode: the API server rotates the log
/// (`audit.log` is renamed `audit-<time>.log` at 100 MB), and a file keeps its inode when
/// renamed.
pub type AuditMark = BTreeMap<u64, u64>;

impl AuditLog {
    /// The audit log next to `kubeconfig` (testenv puts both in its state directory).
    pub fn beside(kubeconfig: &Path) -> Option<AuditLog> {
        let path = kubeconfig.parent()?.join("audit.log");
        path.is_file().then_some(AuditLog { path })
    }

    /// The audit log of the cluster `KUBECONFIG` names, when it is a local control plane.
    pub fn from_env() -> Option<AuditLog> {
        let kubeconfig = std::env::var_os("KUBECONFIG")?;
        let first = std::env::split_paths(&kubeconfig).next()?;
        AuditLog::beside(&first)
    }

    /// The audit files (the current one and rotated ones) with their inodes.
    fn files(&self) -> Vec<(u64, PathBuf, u64)> {
        use std::os::unix::fs::MetadataExt;
        let Some(dir) = self.path.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("audit") && name.ends_with(".log")
            })
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.ino(), e.path(), meta.len()))
            })
            .collect()
    }

    /// Where the log ends now.
    pub fn mark(&self) -> AuditMark {
        self.files()
            .into_iter()
            .map(|(inode, _, len)| (inode, len))
            .collect()
    }

    /// The writes logged between two marks (leases left out: they are the kwok nodes'
    /// heartbeats, the same with or without previewd).
    pub fn writes(&self, from: &AuditMark, to: &AuditMark) -> Writes {
        let mut writes = Writes::default();
        for (inode, path, _) in self.files() {
            let Some(end) = to.get(&inode).copied() else {
                continue;
            };
            let start = from.get(&inode).copied().unwrap_or(0);
            if start < end {
                count_lines(&path, start, end, &mut writes);
            }
        }
        writes
    }
}

fn count_lines(path: &Path, from: u64, to: u64, writes: &mut Writes) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return;
    };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return;
    }
    let mut reader = BufReader::new(file);
    let mut read = from;
    let mut line = String::new();
    while read < to {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n as u64,
        }
        let Ok(parsed) = serde_json::from_str::<Line>(&line) else {
            continue;
        };
        if parsed.object.resource == "leases" {
            continue;
        }
        let who = writer(&parsed.user.username, &parsed.user_agent);
        let resource = if parsed.object.subresource.is_empty() {
            parsed.object.resource
        } else {
            format!("{}/{}", parsed.object.resource, parsed.object.subresource)
        };
        *writes.by_writer.entry(who.clone()).or_default() += 1;
        *writes
            .by_kind
            .entry(format!("{who} {} {resource}", parsed.verb))
            .or_default() += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writers_are_told_apart() {
        assert_eq!(
            writer(
                "system:serviceaccount:kube-system:replicaset-controller",
                "x"
            ),
            "kube-controller-manager/replicaset-controller"
        );
        assert_eq!(
            writer("previewd-testenv-admin", "previewd-controller/0.1.0"),
            "previewd-controller"
        );
        assert_eq!(writer("previewd-testenv-admin", "kube-rs/5.0"), "scenario");
        assert_eq!(writer("kwok-controller", ""), "kwok");
    }

    #[test]
    fn writes_between_marks_are_counted_by_writer() {
        let dir = std::env::temp_dir().join(format!("audit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let line = |user: &str, agent: &str, resource: &str| {
            format!(
                "{}\n",
                json!({"verb": "create", "user": {"username": user}, "userAgent": agent,
                       "objectRef": {"resource": resource}})
            )
        };
        std::fs::write(&path, line("kwok-controller", "", "pods")).unwrap();
        let log = AuditLog { path: path.clone() };
        let from = log.mark();
        // Rotated meanwhile: the old file keeps its inode under another name.
        std::fs::rename(&path, dir.join("audit-2026-01-01T00-00-00.log")).unwrap();
        std::fs::write(&path, "").unwrap();
        let more = line(
            "previewd-testenv-admin",
            "previewd-controller/0.1.0",
            "deployments",
        ) + &line("system:kube-scheduler", "", "pods")
            + &line("kwok-controller", "", "leases");
        std::fs::write(&path, more).unwrap();
        let writes = log.writes(&from, &log.mark());
        assert_eq!(writes.total(), 2, "{writes:?}");
        assert_eq!(writes.of("previewd"), 1);
        assert_eq!(writes.by_writer["kube-scheduler"], 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
