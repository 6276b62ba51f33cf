//! What a preview namespace forbids, tried against the local control plane: a privileged
//! pod is refused by pod security; the NetworkPolicies, read back from the API server,
//! let no other namespace in or out but the ingress controller and DNS; hosts outside
//! the allowed base domains, or taken by another environment, are never published.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy, NetworkPolicyPeer};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::controller::{self, Context};
use previewd_kube::crd::PreviewEnvironment;
use serde_json::{Value, json};
use support::*;

fn manifest(
    name: &str,
    repository: &str,
    pr: i64,
    branch: &str,
    extra: Value,
) -> PreviewEnvironment {
    let mut spec = json!({
        "repository": repository,
        "prNumber": pr,
        "branch": branch,
        "headSHA": "0123456789abcdef0123456789abcdef01234567",
        "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

async fn wait_for(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    f: fn(&PreviewEnvironment) -> bool,
) -> PreviewEnvironment {
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(90), what, || {
        let api = api.clone();
        async move {
            let e = api.get_opt(name).await.ok().flatten()?;
            f(&e).then_some(e)
        }
    })
    .await
}

fn ready(e: &PreviewEnvironment) -> bool {
    e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
}

fn stalled_reason(e: &PreviewEnvironment) -> Option<String> {
    e.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .map(|c| c.reason.clone())
}

/// Whether a peer list admits a pod in `namespace` (namespace labels `ns_labels`) seen
/// from a policy in `policy_ns`. Implements the peer rules the policies use: an empty
/// pod selector alone is the policy's own namespace; a namespace selector matches labels.
fn admits(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    policy_ns: &str,
    namespace: &str,
    ns_labels: &BTreeMap<String, String>,
) -> bool {
    let Some(peers) = peers else { return true };
    peers.iter().any(|peer| {
        assert!(peer.ip_block.is_none(), "no policy opens an IP block");
        match &peer.namespace_selector {
            None => namespace == policy_ns,
            Some(sel) => sel
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| ns_labels.get(k) == Some(v)),
        }
    })
}

fn ns_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("kubernetes.io/metadata.name".to_string(), name.to_string())])
}

/// Whether the namespace's policies let traffic in from `from` (ingress) or out to `to`
/// on `port` (egress). Traffic is allowed when some policy of that direction allows it
/// (policies are additive), and denied when policies select the pods but none allows it.
fn allowed(
    policies: &[NetworkPolicy],
    own: &str,
    peer_ns: &str,
    port: Option<i32>,
    ingress: bool,
) -> bool {
    let labels = ns_labels(peer_ns);
    let mut selected = false;
    for p in policies {
        let spec = p.spec.as_ref().unwrap();
        let types = spec.policy_types.clone().unwrap_or_default();
        let direction = if ingress { "Ingress" } else { "Egress" };
        if !types.iter().any(|t| t == direction) {
            continue;
        }
        selected = true;
        if ingress {
            for rule in spec.ingress.iter().flatten() {
                if admits(rule.from.as_ref(), own, peer_ns, &labels) {
                    return true;
                }
            }
        } else {
            for rule in spec.egress.iter().flatten() {
                let port_ok = rule.ports.as_ref().is_none_or(|ps| {
                    ps.iter().any(|pp| match (&pp.port, port) {
                        (
                            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(a)),
                            Some(b),
                        ) => *a == b,
                        (None, _) => true,
                        _ => false,
                    })
                });
                if port_ok && admits(rule.to.as_ref(), own, peer_ns, &labels) {
                    return true;
                }
            }
        }
    }
    !selected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_namespace_refuses_what_it_forbids() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "guard-ns").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let branch = format!("guards-{}", &ns[ns.len() - 8..]);
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &manifest("shop-pr-31", "acme/shop", 31, &branch, json!({})),
    )
    .await
    .unwrap();
    let env = wait_for(&client, &ns, "shop-pr-31", "Ready", ready).await;
    let env_ns = env.status.unwrap().namespace.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &env_ns);

    // The attack: a privileged pod that mounts the node's filesystem.
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "escape"},
        "spec": {
            "hostPID": true,
            "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                "securityContext": {"privileged": true},
                "volumeMounts": [{"name": "host", "mountPath": "/host"}]}]
        }
    }))
    .unwrap();
    let refused = pods.create(&PostParams::default(), &privileged).await;
    let err = refused.expect_err("a privileged pod is refused");
    let text = err.to_string();
    assert!(
        text.contains("PodSecurity") && text.contains("restricted"),
        "{text}"
    );
    // A pod that follows the restricted profile is admitted: the guard is not a blanket deny.
    let compliant: Pod = serde_json::from_value(json!({
        "metadata": {"name": "fine"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &compliant)
        .await
        .unwrap();

    // The policies as the API server holds them.
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &env_ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(policies.len(), 2, "default deny and the allow list");
    let deny = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("previewd"))
        .unwrap();
    let deny_spec = deny.spec.as_ref().unwrap();
    assert_eq!(
        deny_spec.pod_selector,
        Some(Default::default()),
        "selects every pod"
    );
    assert!(deny_spec.ingress.as_ref().is_none_or(Vec::is_empty));
    assert!(deny_spec.egress.as_ref().is_none_or(Vec::is_empty));
    let other_preview = "preview-32-another";
    // In: same namespace and the ingress controller only.
    assert!(allowed(&policies, &env_ns, &env_ns, None, true));
    assert!(allowed(&policies, &env_ns, "ingress-nginx", None, true));
    assert!(
        !allowed(&policies, &env_ns, other_preview, None, true),
        "another preview cannot reach in"
    );
    assert!(!allowed(&policies, &env_ns, "default", None, true));
    assert!(!allowed(&policies, &env_ns, "kube-system", None, true));
    // Out: DNS in kube-system and the same namespace only.
    assert!(allowed(&policies, &env_ns, "kube-system", Some(53), false));
    assert!(
        !allowed(&policies, &env_ns, "kube-system", Some(443), false),
        "only DNS to kube-system"
    );
    assert!(
        !allowed(&policies, &env_ns, other_preview, Some(8080), false),
        "no way out to another preview"
    );
    assert!(!allowed(&policies, &env_ns, "default", Some(443), false));
    assert!(allowed(&policies, &env_ns, &env_ns, Some(8080), false));

    api.delete("shop-pr-31", &Default::default()).await.unwrap();
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_allowed_domains_or_taken_are_never_published() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "guard-host").await;
    let op = Operator::start(client.clone(), test_config(&ns)).await;
    let suffix = ns[ns.len() - 8..].to_string();
    let api: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    let ingresses: Api<Ingress> = Api::all(client.clone());

    // The attack: a PR author's environment asks for somebody else's host, and for an
    // issuer the platform team did not allow.
    api.create(
        &PostParams::default(),
        &manifest(
            "evil-pr-1",
            "acme/shop",
            41,
            &format!("h1-{suffix}"),
            json!({"ingress": {"enabled": true, "host": "www.bank.example"}}),
        ),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &manifest(
            "evil-pr-2",
            "acme/shop",
            42,
            &format!("h2-{suffix}"),
            json!({"ingress": {"enabled": true, "tls": true, "clusterIssuer": "attacker-issuer"}}),
        ),
    )
    .await
    .unwrap();
    let e1 = wait_for(&client, &ns, "evil-pr-1", "HostNotAllowed", |e| {
        stalled_reason(e).as_deref() == Some("HostNotAllowed")
    })
    .await;
    assert!(
        e1.status
            .unwrap()
            .message
            .unwrap()
            .contains("www.bank.example")
    );
    wait_for(&client, &ns, "evil-pr-2", "ClusterIssuerNotAllowed", |e| {
        stalled_reason(e).as_deref() == Some("ClusterIssuerNotAllowed")
    })
    .await;

    // Two repositories sharing the base domain, both with a PR 43: one host each.
    api.create(
        &PostParams::default(),
        &manifest(
            "shop-pr-43",
            "acme/shop",
            43,
            &format!("s-{suffix}"),
            json!({}),
        ),
    )
    .await
    .unwrap();
    let first = wait_for(&client, &ns, "shop-pr-43", "Ready", ready).await;
    api.create(
        &PostParams::default(),
        &manifest(
            "web-pr-43",
            "other/web",
            43,
            &format!("w-{suffix}"),
            json!({}),
        ),
    )
    .await
    .unwrap();
    let second = wait_for(&client, &ns, "web-pr-43", "Ready", ready).await;
    let h1 = first.status.as_ref().unwrap().host.clone().unwrap();
    let h2 = second.status.as_ref().unwrap().host.clone().unwrap();
    assert_eq!(h1, "pr-43.preview.test");
    assert_ne!(h1, h2);
    assert!(
        h2.starts_with("pr-43-") && h2.ends_with(".preview.test"),
        "{h2}"
    );

    // What is published: exactly the two hosts, nothing for the refused environments.
    let published: Vec<String> = ingresses
        .list(&ListParams::default().labels(&format!("previewd.io/env-namespace={ns}")))
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|i| i.spec.as_ref().unwrap().rules.clone().unwrap_or_default())
        .filter_map(|r| r.host)
        .collect();
    let mut published = published;
    published.sort();
    let mut want = vec![h1.clone(), h2.clone()];
    want.sort();
    assert_eq!(published, want);

    for name in ["evil-pr-1", "evil-pr-2", "shop-pr-43", "web-pr-43"] {
        api.delete(name, &Default::default()).await.unwrap();
    }
    for name in ["evil-pr-1", "evil-pr-2", "shop-pr-43", "web-pr-43"] {
        eventually(Duration::from_secs(90), name, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }
    op.stop().await;
    delete_namespace(&client, &ns).await;
}

/// The planner chooses a namespace name from the watch cache, which may not have seen
/// another environment's namespace of the same name yet. Driven here with caches that
/// never started (they see nothing): the namespace the environment would take belongs to
/// another environment, and the reconcile must fail rather than take it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_claimed_by_another_environment_is_never_taken_over() {
    let client = client().await;
    install_crds(&client).await;
    let team = temp_namespace(&client, "guards-claim").await;
    let branch = format!("claim-{}", unique_suffix());
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &team);
    let env = envs
        .create(
            &PostParams::default(),
            &manifest("shop-pr-88", "acme/shop", 88, &branch, json!({})),
        )
        .await
        .unwrap();
    // Another environment (another repository's PR 88 on the same branch) got there first.
    let taken = previewd_core::naming::namespace_name(88, &branch);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {
                    "name": taken,
                    "labels": {"app.kubernetes.io/managed-by": "previewd"},
                    "annotations": {"previewd.io/owner-uid": "another-environment"},
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let ctx = Arc::new(Context::new(client.clone(), test_config(&team)));
    let mut env = Arc::new(env);
    let mut outcome = controller::reconcile(env.clone(), ctx.clone()).await;
    // The first pass may only add the finalizer; look again at the stored object.
    for _ in 0..3 {
        if outcome.is_err() {
            break;
        }
        env = Arc::new(envs.get(&env.name_any()).await.unwrap());
        outcome = controller::reconcile(env.clone(), ctx.clone()).await;
    }
    let err = outcome.expect_err("the reconcile refuses the other environment's namespace");
    assert_eq!(err.category(), "conflict", "{err}");
    assert!(err.to_string().contains(&taken), "{err}");
    let live = namespaces.get(&taken).await.unwrap();
    assert_eq!(
        live.annotations()
            .get("previewd.io/owner-uid")
            .map(String::as_str),
        Some("another-environment"),
        "the namespace still belongs to the other environment"
    );
    let pods: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &taken);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was deployed into it"
    );

    // Once its cache sees the namespace, the environment chooses its own name.
    let operator = Operator::start(client.clone(), test_config(&team)).await;
    let ready_env = wait_for(&client, &team, "shop-pr-88", "Ready", ready).await;
    let own = ready_env.status.unwrap().namespace.unwrap();
    assert_ne!(own, taken);
    operator.stop().await;
    let _ = envs.delete("shop-pr-88", &Default::default()).await;
    let _ = namespaces.delete(&taken, &Default::default()).await;
    delete_namespace(&client, &team).await;
}
