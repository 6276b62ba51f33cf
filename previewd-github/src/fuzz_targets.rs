//! Entry points shared by the coverage-guided fuzz targets (`fuzz/`, cargo-fuzz) and the
//! bounded runs of the test suite (`tests/fuzz_bounded.rs`). Each takes arbitrary bytes,
//! must never panic, and checks the properties of what it exercises; a property that
//! fails panics, which the fuzzer records as a crash.

use std::str::FromStr;

use previewd_core::naming;
use previewd_kube::crd::{GatingPolicy, PreviewRepository};
use previewd_kube::render::{self, PullRequestSnapshot};
use secrecy::SecretString;

use crate::event::PullRequestEvent;
use crate::signature;

const SECRET: &str = "fuzz-secret";

/// Signature check and payload handling of one delivery. The first byte picks the
/// content type and whether the body is signed correctly; the rest is the body.
/// Properties: a correct signature verifies, a flipped one never does; whatever parses
/// can be planned and rendered without a panic, and every name rendered is a DNS label.
pub fn webhook_delivery(data: &[u8]) {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let secrets = [SecretString::from(SECRET.to_string())];
    let good = signature::sign(SECRET.as_bytes(), body);
    assert!(signature::verify(&secrets, Some(&good), body).is_ok());
    let mut bad = good.clone().into_bytes();
    if let Some(last) = bad.last_mut() {
        *last = if *last == b'0' { b'1' } else { b'0' };
    }
    let bad = String::from_utf8_lossy(&bad).into_owned();
    assert!(signature::verify(&secrets, Some(&bad), body).is_err());
    // Arbitrary header values never panic.
    let header = String::from_utf8_lossy(body);
    let _ = signature::check_syntax(Some(&header));
    let _ = signature::verify(&secrets, Some(&header), b"");

    let payload: Vec<u8> = if control & 1 == 0 {
        body.to_vec()
    } else {
        match form_payload(body) {
            Some(p) => p.into_bytes(),
            None => return,
        }
    };
    // Check events: whatever parses records into the gate's record without a panic, and
    // a record never holds a name that was not required.
    for kind in crate::ci::CHECK_EVENTS {
        if let Ok(Some(report)) = crate::ci::report_of(kind, &payload) {
            let required = vec![
                previewd_core::checks::RequiredCheck::named("build"),
                previewd_core::checks::RequiredCheck::bound("lint", 29310),
            ];
            let mut record = previewd_core::checks::RecordedChecks::default();
            if let Some(check) = crate::ci::required_check(&report, &required) {
                record.record_from(
                    &report.sha,
                    &check.name,
                    report.app,
                    report.state,
                    &report.at,
                );
            }
            assert!(
                record
                    .checks
                    .keys()
                    .all(|k| required.iter().any(|r| &r.name == k))
            );
            assert!(
                record
                    .checks
                    .get("lint")
                    .is_none_or(|r| r.app == Some(29310)),
                "a bound check only ever records its App"
            );
            let _ = previewd_core::checks::gate(&required, &report.sha, &record);
        }
    }
    let Ok(event) = serde_json::from_slice::<PullRequestEvent>(&payload) else {
        return;
    };
    pull_request_event(&event);
}

/// The `payload` field of a form-encoded body, as the webhook extracts it.
pub fn form_payload(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == "payload")
        .map(|(_, value)| value.into_owned())
}

/// Form-encoded bodies: extraction never panics, and a payload serialised into a form
/// comes back unchanged.
pub fn form_body(data: &[u8]) {
    let _ = form_payload(data);
    let text = String::from_utf8_lossy(data);
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &text)
        .finish();
    assert_eq!(
        form_payload(form.as_bytes()).as_deref(),
        Some(text.as_ref())
    );
}

fn settings() -> Option<PreviewRepository> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "fuzz", "namespace": "previews"},
        "spec": {
            "repository": "acme/shop",
            "baseDomain": "preview.example.com",
            "catalogue": {"services": [{"name": "web", "image": "ghcr.io/acme/web:{{branch}}-{{shortSha}}"}]}
        }
    }))
    .ok()
}

/// A parsed event through the policy, the ordering plan and the renderer.
pub fn pull_request_event(event: &PullRequestEvent) {
    let _ = event.is_fork();
    let _ = event.base_repository();
    for gating in [
        GatingPolicy::default(),
        GatingPolicy {
            forks: previewd_kube::crd::ForkPolicy::Allow,
            skip_drafts: false,
            ..GatingPolicy::default()
        },
    ] {
        let _ = crate::decision::plan(event, &gating, "fuzz", None, None);
    }
    let name = render::environment_name(event.base_repository(), event.number);
    assert!(naming::is_dns1123_label(&name), "{name:?}");
    if let Some(mut settings) = settings() {
        settings.spec.repository = event.base_repository().to_string();
        if let Ok(env) = crate::webhook::desired_environment(event, &settings, None, "fuzz", None) {
            assert!(naming::is_dns1123_label(
                env.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
}

/// Money, CPU and memory quantities, TTLs and tiers: parsing never panics, and what
/// parses formats into something that parses to the same value.
pub fn parsers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(money) = previewd_core::Money::from_str(&text) {
        // `{:#}` is the full-precision form; `{}` rounds to cents for display.
        let again = previewd_core::Money::from_str(&format!("{money:#}"));
        assert_eq!(again.ok(), Some(money), "{text:?}");
    }
    if let Ok(millicores) = previewd_core::cost::parse_cpu(&text) {
        let formatted = previewd_core::cost::format_cpu(millicores);
        assert_eq!(
            previewd_core::cost::parse_cpu(&formatted).ok(),
            Some(millicores),
            "{text:?} -> {formatted:?}"
        );
    }
    if let Ok(bytes) = previewd_core::cost::parse_memory(&text) {
        let formatted = previewd_core::cost::format_memory(bytes);
        assert!(
            previewd_core::cost::parse_memory(&formatted).is_ok(),
            "{text:?} -> {formatted:?}"
        );
    }
    let _ = previewd_core::Ttl::from_str(&text);
    let _ = previewd_core::Tier::from_str(&text);
    let _ = previewd_core::ttl::label_requests_no_expiry(&text);
    let _ = text.parse::<jiff::Timestamp>();
}

/// Naming: every name made from free text is a DNS-1123 label, namespaces start with
/// `preview-<pr>`, and sanitised text is `[a-z0-9-]*`.
pub fn names(data: &[u8]) {
    let (pr, text) = match data.split_first_chunk::<8>() {
        Some((head, rest)) => (u64::from_le_bytes(*head), String::from_utf8_lossy(rest)),
        None => (7, String::from_utf8_lossy(data)),
    };
    let sanitized = naming::sanitize(&text);
    assert!(
        sanitized
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{sanitized:?}"
    );
    let namespace = naming::namespace_name(pr, &text);
    assert!(naming::is_dns1123_label(&namespace), "{namespace:?}");
    assert!(
        namespace.starts_with(&format!("preview-{pr}")),
        "{namespace:?}"
    );
    let env = naming::environment_name(&text, pr);
    assert!(naming::is_dns1123_label(&env), "{env:?}");
    let _ = naming::ingress_host(pr, &text);
    let label = render::repo_label_value(&text);
    assert!(label.len() <= 63, "{label:?}");
    let _ = naming::validate_dns1123_subdomain(&text);
}

/// Image template rendering with an arbitrary template, branch and SHA: no panic, and
/// the branch never brings characters an image tag cannot hold.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{0}');
    let template = parts.next().unwrap_or_default();
    let branch = parts.next().unwrap_or("main");
    let sha = parts.next().unwrap_or("abcdef1234567");
    let snapshot = PullRequestSnapshot {
        repository: "acme/shop".into(),
        number: 12,
        branch: branch.to_string(),
        head_sha: sha.to_string(),
        base_branch: Some("main".into()),
        author: Some("dev".into()),
        updated_at: Some("2024-01-01T00:00:00Z".into()),
        last_activity: None,
    };
    let rendered = render::render_image("{{branch}}", &snapshot, "web");
    assert!(rendered.is_ok(), "{rendered:?}");
    let rendered = rendered.unwrap_or_default();
    assert!(
        rendered
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
        "{rendered:?}"
    );
    let _ = render::render_image(template, &snapshot, "web");
    if let Some(mut settings) = settings() {
        if let Some(service) = settings.spec.catalogue.services.first_mut() {
            service.image = template.to_string();
        }
        let _ = render::render_environment(&settings, &snapshot);
    }
}
