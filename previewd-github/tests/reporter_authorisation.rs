//! The GitHub reporter asks the controller's authorisation right before it writes: a
//! report that waited while the claim allowing it was revoked is dropped, with nothing
//! sent to GitHub, while an authorised one goes out. Against a local server that speaks
//! GitHub's API and records every request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_github;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fake_github::FakeGitHub;
use previewd_core::Phase;
use previewd_core::environment::{EnvironmentReporter, EnvironmentView, ReportAuthoriser};
use previewd_core::source_control::SourceControl;
use previewd_github::client::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_github::metrics::ClientMetrics;
use previewd_github::reporter::GitHubReporter;
use secrecy::SecretString;

/// Authorises while `allowed` holds.
struct Switch {
    allowed: Arc<AtomicBool>,
    asked: Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

impl ReportAuthoriser for Switch {
    fn authorise(&self, env: &EnvironmentView, deleted: bool) -> Result<(), String> {
        self.asked
            .lock()
            .unwrap()
            .push((env.repository.clone(), deleted));
        if self.allowed.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!(
                "namespace {} may not claim {}",
                env.namespace, env.repository
            ))
        }
    }
}

fn view(number: u64) -> EnvironmentView {
    EnvironmentView {
        namespace: "team".into(),
        name: format!("shop-pr-{number}"),
        repository: "acme/shop".into(),
        pr_number: number,
        branch: "feature".into(),
        head_sha: "7777777777777777777777777777777777777777".into(),
        phase: Some(Phase::Ready),
        url: Some(format!("https://pr-{number}.preview.test/")),
        ..EnvironmentView::default()
    }
}

#[tokio::test]
async fn a_report_is_sent_only_while_the_environment_is_authorised() {
    let github = FakeGitHub::start().await;
    let mut config = ClientConfig::new(github.base_url());
    config.max_retries = 0;
    config.mutation_spacing = Duration::from_millis(1);
    let scm: Arc<dyn SourceControl> = Arc::new(
        GitHubClient::new(
            config,
            GitHubAuth::Token(SecretString::from(fake_github::TOKEN.to_string())),
            ClientMetrics::default(),
        )
        .unwrap(),
    );
    let reporter = GitHubReporter::new(scm, None);
    let allowed = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    reporter.authorise_with(Arc::new(Switch {
        allowed: allowed.clone(),
        asked: asked.clone(),
    }));

    // Refused: nothing reaches GitHub, the refusal is counted, and the authoriser was asked
    // about this environment.
    reporter.environment_changed(&view(7)).await;
    reporter.environment_deleted(&view(8)).await;
    reporter.idle().await;
    assert_eq!(
        github.with(|s| s.log.len()),
        0,
        "a refused report wrote to GitHub"
    );
    assert_eq!(reporter.refused(), 2);
    assert_eq!(
        *asked.lock().unwrap(),
        [
            ("acme/shop".to_string(), false),
            ("acme/shop".to_string(), true)
        ]
    );

    // Authorised: the status, the deployment and the comment go out.
    allowed.store(true, Ordering::SeqCst);
    reporter.environment_changed(&view(7)).await;
    reporter.idle().await;
    let writes = github.with(|s| {
        (
            s.commit_statuses.len(),
            s.deployments.len(),
            s.comments.len(),
        )
    });
    assert_eq!(writes, (1, 1, 1));
    assert_eq!(reporter.refused(), 2);
}
