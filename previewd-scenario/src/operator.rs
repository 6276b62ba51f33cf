//! The real `previewd` binary as a child process: started with flags, probed on
//! `/readyz`, measured from `/proc` (peak RSS, CPU seconds), stopped with SIGTERM or killed
//! with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// How to run the operator.
#[derive(Clone, Debug)]
pub struct OperatorSettings {
    /// The `previewd` binary.
    pub binary: PathBuf,
    /// Kubeconfig the operator uses (the counting proxy's).
    pub kubeconfig: PathBuf,
    /// Namespace it watches.
    pub namespace: String,
    /// Webhook secret.
    pub webhook_secret: String,
    /// GitHub API base URL; `None` runs without GitHub reporting.
    pub github_api_url: Option<String>,
    /// GitHub token.
    pub github_token: String,
    /// `--resync-interval`.
    pub resync_interval: String,
    /// `--cleanup-interval`.
    pub cleanup_interval: String,
    /// `--readiness-timeout`.
    pub readiness_timeout: String,
    /// `--concurrency`.
    pub concurrency: u16,
    /// Where stdout and stderr go.
    pub log_file: PathBuf,
    /// `RUST_LOG`.
    pub log_filter: String,
    /// Fixed (admin, webhook) ports, so a restarted operator answers at the same URLs;
    /// `None` picks free ones at each start.
    pub ports: Option<(u16, u16)>,
}

/// A running operator.
pub struct Operator {
    child: Child,
    /// Process id.
    pub pid: u32,
    /// Webhook URL (`http://127.0.0.1:PORT/webhook`).
    pub webhook_url: String,
    /// Admin base URL.
    pub admin_url: String,
}

/// Resource use read from `/proc/<pid>`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Peak resident set size, bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Current resident set size, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `previewd` binary: `$PREVIEWD_BIN`, else `previewd` next to this executable
/// (same target directory), else an error saying how to build it.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PREVIEWD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe()?;
    for dir in me.ancestors().skip(1).take(3) {
        let candidate = dir.join("previewd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "previewd binary not found next to {}: build it (`cargo build --release -p previewd-operator`) or set PREVIEWD_BIN",
        me.display()
    )
}

impl Operator {
    /// Starts the operator and waits until `/readyz` answers 200 (caches synced).
    pub async fn start(settings: &OperatorSettings) -> anyhow::Result<Self> {
        let (admin, webhook) = match settings.ports {
            Some(ports) => ports,
            None => (free_port()?, free_port()?),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.log_file)
            .with_context(|| format!("opening {}", settings.log_file.display()))?;
        let mut cmd = Command::new(&settings.binary);
        cmd.arg("run")
            .args(["--ingress-namespace", "ingress-system"])
            .arg("--kubeconfig")
            .arg(&settings.kubeconfig)
            .args(["--namespace", &settings.namespace])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .args(["--resync-interval", &settings.resync_interval])
            .args(["--cleanup-interval", &settings.cleanup_interval])
            .args(["--readiness-timeout", &settings.readiness_timeout])
            .args(["--concurrency", &settings.concurrency.to_string()])
            .args(["--base-domain", "preview.scenario.test"])
            .args(["--log-format", "json"])
            .env("PREVIEWD_WEBHOOK_SECRET", &settings.webhook_secret)
            .env("RUST_LOG", &settings.log_filter)
            .env_remove("PREVIEWD_GITHUB_TOKEN")
            .env_remove("PREVIEWD_GITHUB_API_URL")
            .env_remove("ENABLE_AI")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(url) = &settings.github_api_url {
            cmd.args(["--github-api-url", url])
                .env("PREVIEWD_GITHUB_TOKEN", &settings.github_token);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", settings.binary.display()))?;
        let pid = child.id().context("operator exited at once")?;
        let admin_url = format!("http://127.0.0.1:{admin}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{admin_url}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "operator exited ({status}) before it was ready; log: {}",
                    settings.log_file.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "operator not ready within 60 s; log: {}",
                    settings.log_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Operator {
            child,
            pid,
            webhook_url: format!("http://127.0.0.1:{webhook}/webhook"),
            admin_url,
        })
    }

    /// Resource use so far.
    pub fn usage(&self) -> Usage {
        usage_of(self.pid).unwrap_or_default()
    }

    /// SIGKILL: no draining, no goodbye.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then waits up to 30 s for a clean exit (SIGKILL after that).
    pub async fn stop(mut self) -> anyhow::Result<Usage> {
        let usage = self.usage();
        signal(self.pid, "TERM").await?;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            self.child.start_kill()?;
            self.child.wait().await?;
        }
        Ok(usage)
    }

    /// The admin server's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.admin_url))
            .await?
            .text()
            .await?)
    }
}

/// Sends a signal with `kill(1)` (the workspace forbids unsafe code, so no libc call).
pub async fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak RSS, RSS and CPU seconds of a process, from `/proc`.
pub fn usage_of(pid: u32) -> Option<Usage> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Usage {
        peak_rss_bytes: kib("VmHWM:")?,
        rss_bytes: kib("VmRSS:")?,
        cpu_seconds: ticks as f64 / clock_ticks(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_usage() {
        let u = usage_of(std::process::id()).expect("own /proc entry");
        assert!(u.peak_rss_bytes >= u.rss_bytes && u.rss_bytes > 0, "{u:?}");
    }
}
