//! Installing the shipped manifests on the local control plane, acting as the chart's
//! ServiceAccount, and recording every request a client makes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Client, Config};
use serde_json::{Value, json};

/// The rendered manifests (`deploy/manifests/<name>.yaml`), one JSON value per document.
pub fn rendered(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/../deploy/manifests/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parse rendered manifests");
    docs.into_iter().filter(|d| d.is_object()).collect()
}

/// The rendered document of `kind` named `name`.
pub fn document(docs: &[Value], kind: &str, name: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// One (API group, resource[/subresource], verb) a client used, and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: u16,
}

impl Call {
    /// Parses a Kubernetes API request path and method.
    fn from_request(method: &http::Method, uri: &http::Uri) -> Option<Call> {
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => ((*group).to_string(), rest),
            _ => return None,
        };
        let (namespace, resource, name, sub) = match rest {
            ["namespaces", ns, resource, tail @ ..]
                if !matches!(*resource, "status" | "finalize") =>
            {
                (
                    Some((*ns).to_string()),
                    *resource,
                    tail.first().copied(),
                    tail.get(1).copied(),
                )
            }
            [resource, tail @ ..] => (None, *resource, tail.first().copied(), tail.get(1).copied()),
            [] => return None,
        };
        let watch = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let verb = match (method.as_str(), name) {
            ("GET", Some(_)) => "get",
            ("GET", None) if watch => "watch",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", Some(_)) => "delete",
            ("DELETE", None) => "deletecollection",
            _ => return None,
        };
        let resource = match sub {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        Some(Call {
            group,
            resource,
            verb: verb.to_string(),
            namespace,
            name: name.map(str::to_string),
            status: 0,
        })
    }
}

/// Every request made through a client built with [`RecordLayer`].
#[derive(Clone, Default)]
pub struct Recording(Arc<Mutex<Vec<Call>>>);

impl Recording {
    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// Requests the API server refused with 403 Forbidden.
    pub fn forbidden(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.status == 403)
            .collect()
    }

    /// (group, resource, verb) triples used successfully; a server-side apply that created
    /// its object (201) also counts as a `create`, which the API server authorises too.
    pub fn used(&self) -> BTreeSet<(String, String, String)> {
        let mut used = BTreeSet::new();
        for c in self.calls() {
            if !(200..300).contains(&c.status) {
                continue;
            }
            used.insert((c.group.clone(), c.resource.clone(), c.verb.clone()));
            if c.verb == "patch" && c.status == 201 {
                used.insert((c.group.clone(), c.resource.clone(), "create".into()));
            }
        }
        used
    }
}

/// A tower layer that records each request's verb and resource with its response status.
#[derive(Clone)]
pub struct RecordLayer(pub Recording);

impl<S> tower::Layer<S> for RecordLayer {
    type Service = RecordService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordService {
            inner,
            recording: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RecordService<S> {
    inner: S,
    recording: Recording,
}

impl<S, B, RB> tower::Service<Request<B>> for RecordService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let call = Call::from_request(req.method(), req.uri());
        let recording = self.recording.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            if let Some(mut call) = call {
                call.status = response.status().as_u16();
                recording.0.lock().unwrap().push(call);
            }
            Ok(response)
        })
    }
}

/// A short-lived token of `namespace/service_account` from the TokenRequest API.
pub async fn token(admin: &Client, namespace: &str, service_account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .expect("TokenRequest for the ServiceAccount");
    answer
        .status
        .expect("token in the TokenRequest status")
        .token
}

/// The local control plane's configuration with `token` as the only credential (no
/// client certificate).
pub async fn token_config(token: &str) -> Config {
    let mut config = previewd_kube::testing::config().await;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..kube::config::AuthInfo::default()
    };
    config
}

/// A client authenticated with `token` whose requests are recorded.
pub async fn recorded_client(token: &str) -> (Client, Recording) {
    let recording = Recording::default();
    let client = kube::client::ClientBuilder::try_from(token_config(token).await)
        .expect("client builder")
        .with_layer(&RecordLayer(recording.clone()))
        .build();
    (client, recording)
}

/// Creates a ServiceAccount.
pub async fn service_account(admin: &Client, namespace: &str, name: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
}

fn api_resource(doc: &Value) -> ApiResource {
    let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            doc["apiVersion"].as_str().unwrap().to_string(),
        ),
    };
    let kind = doc["kind"].as_str().unwrap();
    let gvk = GroupVersionKind::gvk(&group, &version, kind);
    let plural = match kind {
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies".to_string(),
        other => format!("{}s", other.to_ascii_lowercase()),
    };
    ApiResource::from_gvk_with_plural(&gvk, &plural)
}

/// Server-side applies a manifest (cluster-scoped when it has no namespace).
pub async fn apply(admin: &Client, doc: &Value) {
    let ar = api_resource(doc);
    let name = doc["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(admin.clone(), ns, &ar),
        None => Api::all_with(admin.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    api.patch(
        &name,
        &PatchParams::apply("previewd-tests").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {} {name}: {e}", doc["kind"]));
}

/// Deletes a cluster-scoped object applied by [`apply`], ignoring errors.
pub async fn delete_cluster_object(admin: &Client, doc: &Value) {
    let ar = api_resource(doc);
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &ar);
    let _ = api
        .delete(
            doc["metadata"]["name"].as_str().unwrap(),
            &DeleteParams::default(),
        )
        .await;
}

/// The rendered controller and webhook roles, lease Role and admission policy, renamed
/// for one test (`-<suffix>`) and bound to `namespace/service_account`, so that tests
/// sharing the cluster do not see each other's objects.
pub struct ShippedRbac {
    pub controller_role: Value,
    pub webhook_role: Value,
    pub lease_role: Value,
    pub policy: Value,
    pub policy_binding: Value,
}

impl ShippedRbac {
    /// From the default install (`deploy/manifests/previewd.yaml`).
    pub fn load() -> ShippedRbac {
        let docs = rendered("previewd");
        ShippedRbac {
            controller_role: document(&docs, "ClusterRole", "previewd-controller"),
            webhook_role: document(&docs, "ClusterRole", "previewd-webhook"),
            lease_role: document(&docs, "Role", "previewd-leader-election"),
            policy: document(&docs, "ValidatingAdmissionPolicy", "previewd-confine"),
            policy_binding: document(
                &docs,
                "ValidatingAdmissionPolicyBinding",
                "previewd-confine",
            ),
        }
    }

    /// The rules of the controller ClusterRole.
    pub fn controller_rules(&self) -> Vec<Value> {
        self.controller_role["rules"].as_array().unwrap().clone()
    }
}

/// Cluster objects installed for one test; [`Installed::remove`] deletes them.
pub struct Installed {
    pub cluster_objects: Vec<Value>,
}

impl Installed {
    pub async fn remove(self, admin: &Client) {
        for doc in self.cluster_objects.iter().rev() {
            delete_cluster_object(admin, doc).await;
        }
    }
}

fn labelled(mut doc: Value, name: &str) -> Value {
    doc["metadata"]["name"] = json!(name);
    doc["metadata"]["labels"]["previewd.io/test"] = json!("true");
    doc
}

/// Installs `rules` as a ClusterRole bound to the ServiceAccount.
pub async fn install_cluster_role(
    admin: &Client,
    name: &str,
    rules: &[Value],
    namespace: &str,
    service_account: &str,
) -> Vec<Value> {
    let role = labelled(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {}, "rules": rules}),
        name,
    );
    let binding = labelled(
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        }),
        name,
    );
    apply(admin, &role).await;
    apply(admin, &binding).await;
    vec![role, binding]
}

/// Installs the rendered admission policy for `namespace/service_account` (the rendered
/// one names `previewd-system/previewd`).
pub async fn install_policy(
    admin: &Client,
    shipped: &ShippedRbac,
    name: &str,
    namespace: &str,
    service_account: &str,
) -> Vec<Value> {
    let text = serde_json::to_string(&shipped.policy).unwrap();
    let text = text
        .replace(
            "system:serviceaccount:previewd-system:previewd",
            &format!("system:serviceaccount:{namespace}:{service_account}"),
        )
        .replace("'previewd-system'", &format!("'{namespace}'"));
    let policy = labelled(serde_json::from_str(&text).unwrap(), name);
    let mut binding = labelled(shipped.policy_binding.clone(), name);
    binding["spec"]["policyName"] = json!(name);
    apply(admin, &policy).await;
    apply(admin, &binding).await;
    vec![policy, binding]
}
