//! The web view and the waker in a real browser: Debian's Chromium driven through
//! chromedriver (WebDriver), against the whole operator (`OperatorBuilder`, the same as
//! `previewd run`) on the local control plane (`testenv/up`).
//!
//! Environments are opened by signed `pull_request` deliveries (the real
//! `@octokit/webhooks-examples` payload) to the operator's webhook. The test plays the
//! kubelet of the test-runner pod (its termination message), as the stage tests do. It
//! shows that:
//!
//! - the list shows the environments the webhooks created, and its filters (repository,
//!   phase, author) narrow it;
//! - the detail page of the environment whose tests failed names the failed test;
//! - a token that may list nothing gets 403 and sees no environment, in the JSON API and
//!   in the browser;
//! - a PR title full of markup renders as text (no element, no script runs);
//! - opening a sleeping preview gets the waker's page, wakes the environment, and the page
//!   lands on the preview once it is Ready again.
//!
//! How the preview is reached: a small host-routing front stands in for the ingress
//! controller. For each request it reads the Ingress with the request's host from the API
//! server, picks the rule's backend Service and that Service's ready EndpointSlice
//! endpoints, as an ingress controller does. The waker's slice (written by previewd with
//! the operator's address) is proxied to that address; the services' slices hold the
//! addresses of kwok pods, which run nothing, so requests for them go to one loopback
//! server standing in for the application, which names the Service and the endpoint it was
//! reached for. Chromium uses the front as its HTTP proxy.
//!
//! With `PREVIEWD_SCREENSHOTS_DIR` set, the list and detail pages are saved there as PNG
//! (`scripts/screenshots`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use previewd_core::Phase;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::testing::{
    client, delete_namespace, eventually, install_crds, temp_namespace, unique_suffix,
};
use previewd_operator::OperatorBuilder;
use previewd_operator::cli::{Command, parse};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "dashboard-webhook-secret";
const TIMEOUT: Duration = Duration::from_secs(120);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// A title an attacker chose: markup and script that must show as text.
const HOSTILE_TITLE: &str =
    "Add <b>bold</b> <img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
const FAILED_TEST: &str = "tests.test_cart.test_checkout_total";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address of this machine other than loopback: the waker's address as written into
/// EndpointSlices (the API server refuses loopback endpoints).
fn host_address() -> IpAddr {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() && !a.is_loopback())
        .expect("this machine has a non-loopback IPv4 address for the waker")
}

/// Fails (never skips) when the browser is missing: scripts/test requires it.
fn require_browser() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the web view's browser test needs Debian's {package} (apt-get install chromium chromium-driver)"
        );
    }
}

// ---- the front: an ingress controller's routing, from the API server -----------------------

#[derive(Clone)]
struct Front {
    kube: Client,
    app: SocketAddr,
    http: reqwest::Client,
}

/// The Ingress rule's backend for `host` and `path` (longest matching prefix).
fn backend_for(ingresses: &[Ingress], host: &str, path: &str) -> Option<(String, String, i32)> {
    let mut best: Option<(usize, String, String, i32)> = None;
    for ing in ingresses {
        let ns = ing.namespace().unwrap_or_default();
        for rule in ing.spec.as_ref()?.rules.clone().unwrap_or_default() {
            if !rule
                .host
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(host))
            {
                continue;
            }
            for p in rule.http.map(|h| h.paths).unwrap_or_default() {
                let prefix = p.path.clone().unwrap_or_else(|| "/".into());
                let matches = path == prefix
                    || path.starts_with(&format!("{}/", prefix.trim_end_matches('/')))
                    || prefix == "/";
                let Some(svc) = p.backend.service else {
                    continue;
                };
                let port = svc.port.and_then(|p| p.number).unwrap_or(0);
                if matches && best.as_ref().is_none_or(|b| prefix.len() > b.0) {
                    best = Some((prefix.len(), ns.clone(), svc.name, port));
                }
            }
        }
    }
    best.map(|(_, ns, name, port)| (ns, name, port))
}

async fn route(State(front): State<Front>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))
        .unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default().to_string();
    let path = req.uri().path().to_string();
    let ingresses = Api::<Ingress>::all(front.kube.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let Some((ns, service, _port)) = backend_for(&ingresses, &host, &path) else {
        return (StatusCode::NOT_FOUND, format!("front: no route for {host}")).into_response();
    };
    let slices = Api::<EndpointSlice>::namespaced(front.kube.clone(), &ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let ready = slices.iter().find_map(|s| {
        let address = s
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .find_map(|e| e.addresses.first().cloned())?;
        let port = s.ports.as_ref()?.first()?.port?;
        let by_previewd = s
            .labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .is_some_and(|m| m == "previewd.io");
        Some((address, port, by_previewd))
    });
    let Some((address, port, by_previewd)) = ready else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("front: no ready endpoints for {ns}/{service}"),
        )
            .into_response();
    };
    // The waker's slice points at a real address; the services' at kwok pods, which the
    // loopback stand-in answers for.
    let upstream = if by_previewd {
        format!("http://{address}:{port}{path}")
    } else {
        format!("http://{}{path}", front.app)
    };
    let answer = front
        .http
        .get(&upstream)
        .header(header::HOST, &host)
        .header("x-front-service", format!("{ns}/{service}"))
        .header("x-front-endpoint", format!("{address}:{port}"))
        .send()
        .await;
    match answer {
        Ok(r) => {
            let status = r.status();
            let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
            let body = r.bytes().await.unwrap_or_default();
            let mut response = (status, body).into_response();
            if let Some(ct) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("front: {e}")).into_response(),
    }
}

/// The application's stand-in: names what it was reached for.
async fn app(headers: HeaderMap) -> Response {
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let body = format!(
        "<!doctype html><title>preview app</title><h1 id=\"app\">The preview application</h1>\
         <p id=\"service\">{}</p><p id=\"endpoint\">{}</p>",
        get("x-front-service"),
        get("x-front-endpoint")
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

// ---- the browser ---------------------------------------------------------------------------

struct Chrome {
    driver: tokio::process::Child,
    browser: Browser,
}

async fn chrome(proxy: SocketAddr) -> Chrome {
    require_browser();
    let port = free_port();
    let driver = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let status = format!("http://127.0.0.1:{port}/status");
    eventually(Duration::from_secs(30), "chromedriver answers", || {
        let status = status.clone();
        async move { reqwest::get(&status).await.ok().map(|_| ()) }
    })
    .await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1000", "--hide-scrollbars",
                     format!("--proxy-server=http://{proxy}")]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session through chromedriver");
    Chrome { driver, browser }
}

async fn body_text(b: &Browser) -> String {
    b.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `namespace/name` of every row of the list.
async fn rows(b: &Browser) -> Vec<String> {
    let mut out = Vec::new();
    for row in b
        .find_all(Locator::Css("tr[data-environment]"))
        .await
        .unwrap()
    {
        out.push(row.attr("data-environment").await.unwrap().unwrap());
    }
    out.sort();
    out
}

async fn sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}login")).await.unwrap();
    b.find(Locator::Css("textarea#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    b.find(Locator::Css("form[action$='login'] button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Chooses `value` in the filter `name` and applies the form.
async fn filter(b: &Browser, base: &str, name: &str, value: &str) -> Vec<String> {
    b.goto(base).await.unwrap();
    b.find(Locator::Css(&format!("form.filters select[name={name}]")))
        .await
        .unwrap()
        .select_by_value(value)
        .await
        .unwrap();
    b.find(Locator::Css("form.filters button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let expect = format!("{name}=");
    eventually(Duration::from_secs(10), "the filtered list", || {
        let expect = expect.clone();
        async move {
            let url = b.current_url().await.ok()?;
            url.query()
                .is_some_and(|q| q.contains(&expect))
                .then_some(())
        }
    })
    .await;
    rows(b).await
}

async fn screenshot(b: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("PREVIEWD_SCREENSHOTS_DIR") {
        let png = b.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(name), png).unwrap();
    }
}

// ---- the cluster ---------------------------------------------------------------------------

async fn audience_token(admin: &Client, ns: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["previewd".into()],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

fn repository(name: &str, repository: &str, tests: bool) -> PreviewRepository {
    let mut spec = json!({
        "repository": repository,
        "baseDomain": "preview.test",
        "catalogue": {"services": [
            {"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"}
        ]},
    });
    if tests {
        spec["tests"] =
            json!({"enabled": true, "image": "ghcr.io/acme/tests:1", "command": ["pytest"]});
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// A signed `pull_request` `opened` delivery (octokit's example, re-addressed).
async fn deliver_opened(
    webhook: &str,
    repository: &str,
    number: u64,
    sha: &str,
    title: &str,
    author: &str,
) {
    let index: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/npm/node_modules/@octokit/webhooks-examples/api.github.com/index.json"
        ))
        .expect("the real webhook payloads: run `npm ci --prefix tests/fixtures/npm`"),
    )
    .unwrap();
    let mut payload = index
        .into_iter()
        .find(|e| e["name"] == "pull_request")
        .unwrap()["examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "opened")
        .cloned()
        .unwrap();
    let (owner, name) = repository.split_once('/').unwrap();
    payload["number"] = json!(number);
    let pr = &mut payload["pull_request"];
    pr["number"] = json!(number);
    pr["title"] = json!(title);
    pr["draft"] = json!(false);
    pr["user"]["login"] = json!(author);
    pr["head"]["sha"] = json!(sha);
    pr["head"]["ref"] = json!(format!("feature-{number}"));
    pr["html_url"] = json!(format!("https://github.com/{repository}/pull/{number}"));
    for pointer in [
        "/repository",
        "/pull_request/base/repo",
        "/pull_request/head/repo",
    ] {
        let repo = payload.pointer_mut(pointer).unwrap();
        repo["full_name"] = json!(repository);
        repo["name"] = json!(name);
        repo["owner"]["login"] = json!(owner);
    }
    let body = serde_json::to_vec(&payload).unwrap();
    let signature = previewd_github::signature::sign(SECRET.as_bytes(), &body);
    let status = reqwest::Client::new()
        .post(webhook)
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", uuid_like(number))
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202, "the webhook accepts the delivery");
}

fn uuid_like(n: u64) -> String {
    format!("dashboard-{n}-{}", unique_suffix())
}

async fn wait_env(
    envs: &Api<PreviewEnvironment>,
    name: &str,
    what: &str,
    ok: impl Fn(&PreviewEnvironment) -> bool,
) -> PreviewEnvironment {
    eventually(TIMEOUT, &format!("{name}: {what}"), || {
        let envs = envs.clone();
        let ok = &ok;
        async move { envs.get_opt(name).await.ok().flatten().filter(|e| ok(e)) }
    })
    .await
}

fn phase_is(e: &PreviewEnvironment, phase: Phase) -> bool {
    e.status.as_ref().and_then(|s| s.phase) == Some(phase)
}

fn condition_true(e: &PreviewEnvironment, type_: &str) -> bool {
    e.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// Plays the kubelet of the test runner: it failed one test.
async fn tests_fail(admin: &Client, env: &PreviewEnvironment) {
    let ns = env.status.as_ref().unwrap().namespace.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
    let pod = eventually(TIMEOUT, "the test runner's pod", || {
        let (pods, jobs) = (pods.clone(), jobs.clone());
        async move {
            let job = jobs
                .list(&ListParams::default().labels("previewd.io/stage=tests"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()?;
            let selector = format!("batch.kubernetes.io/job-name={}", job.name_any());
            pods.list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    let now = jiff::Timestamp::now().to_string();
    let summary = json!({"total": 3, "passed": 2, "failed": 1, "skipped": 0, "durationMs": 1200,
        "failures": [{"name": FAILED_TEST, "reason": "expected $12.00, got $12.50"}]})
    .to_string();
    let image = pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Failed",
            "containerStatuses": [{
                "name": "runner", "image": image, "imageID": "", "ready": false,
                "restartCount": 0, "started": false,
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now,
                                         "finishedAt": now, "message": summary}}
            }]
        }})),
    )
    .await
    .unwrap();
}

async fn role_to_list_environments(admin: &Client, ns: &str, account: &str) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "environment-viewer"},
        "rules": [{"apiGroups": ["previewd.io"], "resources": ["previewenvironments"],
                   "verbs": ["get", "list", "watch"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "environment-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "environment-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_and_the_waker_in_a_real_browser() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    require_browser();
    let admin = client().await;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "dash").await;
    let suffix = unique_suffix();
    let shop = format!("acme-{suffix}/shop");
    let web = format!("acme-{suffix}/web");
    let repos: Api<PreviewRepository> = Api::namespaced(admin.clone(), &ns);
    repos
        .create(&PostParams::default(), &repository("shop", &shop, true))
        .await
        .unwrap();
    repos
        .create(&PostParams::default(), &repository("web", &web, false))
        .await
        .unwrap();
    let viewer = audience_token(&admin, &ns, "viewer").await;
    let stranger = audience_token(&admin, &ns, "stranger").await;
    role_to_list_environments(&admin, &ns, "viewer").await;

    // The operator, as `previewd run` starts it.
    let webhook_port = free_port();
    let dashboard_port = free_port();
    let waker_addr = SocketAddr::new(host_address(), free_port());
    let cli = parse([
        "previewd",
        "run",
        "--namespace",
        &ns,
        "--webhook-addr",
        &format!("127.0.0.1:{webhook_port}"),
        "--webhook-secret",
        SECRET,
        "--admin-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--dashboard-addr",
        &format!("127.0.0.1:{dashboard_port}"),
        "--waker-addr",
        &waker_addr.to_string(),
        "--base-domain",
        "preview.test",
        "--ingress-namespace",
        "ingress-controller",
        "--job-node-selector",
        "previewd.io/test-kubelet=manual",
        "--cleanup-interval",
        "1h",
        "--backfill-interval",
        "0s",
        "--log-format",
        "text",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else {
        panic!("not the run subcommand");
    };
    let shutdown = CancellationToken::new();
    let operator = tokio::spawn(
        OperatorBuilder::new(*args)
            .client(admin.clone())
            .shutdown_on(shutdown.clone())
            .run(),
    );
    let webhook = format!("http://127.0.0.1:{webhook_port}/webhook");
    eventually(TIMEOUT, "the webhook answers", || {
        let url = format!("http://127.0.0.1:{webhook_port}/healthz");
        async move { reqwest::get(&url).await.ok().map(|_| ()) }
    })
    .await;
    let base = format!("http://127.0.0.1:{dashboard_port}/");

    // Two pull requests by two authors (a third, with a hostile title, follows).
    deliver_opened(
        &webhook,
        &shop,
        5101,
        "5101510151015101510151015101510151015101",
        "Checkout shows the total",
        "alice",
    )
    .await;
    deliver_opened(
        &webhook,
        &web,
        5102,
        "5102510251025102510251025102510251025102",
        "Apple Pay on the payment page",
        "bob",
    )
    .await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);
    let testing = wait_env(&envs, "shop-pr-5101", "Testing", |e| {
        phase_is(e, Phase::Testing)
    })
    .await;
    tests_fail(&admin, &testing).await;
    wait_env(&envs, "shop-pr-5101", "Failed", |e| {
        phase_is(e, Phase::Failed)
    })
    .await;
    wait_env(&envs, "web-pr-5102", "Ready", |e| {
        condition_true(e, "Ready")
    })
    .await;

    let app_addr = serve(axum::Router::new().fallback(app)).await;
    let front = serve(
        axum::Router::new().fallback(route).with_state(Front {
            kube: admin.clone(),
            app: app_addr,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }),
    )
    .await;
    let Chrome {
        mut driver,
        browser: b,
    } = chrome(front).await;

    // Unauthenticated: nothing but the sign-in page.
    b.goto(&base).await.unwrap();
    assert!(rows(&b).await.is_empty());
    assert!(!body_text(&b).await.contains(&shop));

    // The viewer sees both environments the webhooks created.
    sign_in(&b, &base, &viewer).await;
    let both = vec![format!("{ns}/shop-pr-5101"), format!("{ns}/web-pr-5102")];
    eventually(Duration::from_secs(30), "the list shows both", || {
        let b = &b;
        let both = both.clone();
        async move { (rows(b).await == both).then_some(()) }
    })
    .await;
    let text = body_text(&b).await;
    assert!(text.contains(&format!("{shop} #5101")), "{text}");
    assert!(text.contains("Checkout shows the total"), "{text}");
    assert!(text.contains("Apple Pay on the payment page"), "{text}");
    screenshot(&b, "dashboard-list.png").await;

    // A pull request whose title is markup: it is text, shown verbatim, no element
    // made, no script run.
    deliver_opened(
        &webhook,
        &web,
        5103,
        "5103510351035103510351035103510351035103",
        HOSTILE_TITLE,
        "mallory",
    )
    .await;
    let all = vec![
        format!("{ns}/shop-pr-5101"),
        format!("{ns}/web-pr-5102"),
        format!("{ns}/web-pr-5103"),
    ];
    eventually(Duration::from_secs(60), "the list shows all three", || {
        let b = &b;
        let (all, base) = (all.clone(), base.clone());
        async move {
            b.goto(&base).await.ok()?;
            (rows(b).await == all).then_some(())
        }
    })
    .await;
    let title = b
        .find(Locator::Css(&format!(
            "tr[data-environment='{ns}/web-pr-5103'] .prtitle"
        )))
        .await
        .unwrap();
    assert_eq!(title.text().await.unwrap(), HOSTILE_TITLE);
    assert!(title.find_all(Locator::Css("*")).await.unwrap().is_empty());
    assert!(
        b.find_all(Locator::Css("img[src=x], b"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.execute("return window.pwned === undefined;", vec![])
            .await
            .unwrap(),
        json!(true)
    );

    // Filters.
    assert_eq!(
        filter(&b, &base, "repo", &web).await,
        vec![format!("{ns}/web-pr-5102"), format!("{ns}/web-pr-5103")]
    );
    assert_eq!(
        filter(&b, &base, "phase", "Failed").await,
        vec![format!("{ns}/shop-pr-5101")]
    );
    assert_eq!(
        filter(&b, &base, "author", "mallory").await,
        vec![format!("{ns}/web-pr-5103")]
    );

    // The detail page names the failed test.
    b.goto(&base).await.unwrap();
    b.find(Locator::Css(&format!(
        "tr[data-environment='{ns}/shop-pr-5101'] a.title"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    let failed = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("ul.failures code.testname"))
        .await
        .unwrap();
    assert_eq!(failed.text().await.unwrap(), FAILED_TEST);
    assert!(body_text(&b).await.contains("expected $12.00, got $12.50"));
    screenshot(&b, "dashboard-detail.png").await;

    // A token that may list nothing: 403 and nothing shown, in the API and the browser.
    let answer = reqwest::Client::new()
        .get(format!("{base}api/v1/environments"))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    let body = answer.text().await.unwrap();
    assert!(!body.contains("acme-") && !body.contains("pr-51"), "{body}");
    let answer = reqwest::Client::new()
        .get(format!("{base}environments/{ns}/shop-pr-5101"))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    assert!(!answer.text().await.unwrap().contains(FAILED_TEST));
    b.delete_all_cookies().await.unwrap();
    sign_in(&b, &base, &stranger).await;
    b.goto(&base).await.unwrap();
    let text = body_text(&b).await;
    assert!(rows(&b).await.is_empty());
    assert!(!text.contains("acme-") && !text.contains("5101"), "{text}");

    // Wake on visit: the web environment is put to sleep as `/preview sleep` records it.
    let now = jiff::Timestamp::now().to_string();
    envs.patch(
        "web-pr-5102",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "previewd.io/sleep": "command", "previewd.io/sleep-requested-at": now}}})),
    )
    .await
    .unwrap();
    let asleep = wait_env(&envs, "web-pr-5102", "asleep", |e| {
        condition_true(e, "Sleeping")
    })
    .await;
    let preview_ns = asleep.status.as_ref().unwrap().namespace.clone().unwrap();
    let host = asleep.status.as_ref().unwrap().host.clone().unwrap();
    // Its route points at the waker's Service, whose slice holds the waker's address.
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), &preview_ns);
    eventually(TIMEOUT, "the route points at the waker", || {
        let (ingresses, host) = (ingresses.clone(), host.clone());
        async move {
            let list = ingresses.list(&ListParams::default()).await.ok()?.items;
            let (_, service, _) = backend_for(&list, &host, "/")?;
            (service == "previewd-waker").then_some(())
        }
    })
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &preview_ns);
    let slice = eventually(TIMEOUT, "the waker's EndpointSlice", || {
        let slices = slices.clone();
        async move { slices.get_opt("previewd-waker").await.ok().flatten() }
    })
    .await;
    assert_eq!(
        slice.endpoints[0].addresses,
        vec![waker_addr.ip().to_string()]
    );

    // The visitor opens the preview: the waker's page, then the preview once Ready.
    b.goto(&format!("http://{host}/")).await.unwrap();
    let first = body_text(&b).await;
    assert!(first.contains("Waking up this preview"), "{first}");
    assert!(
        !first.contains("Apple Pay") && !first.contains("bob"),
        "{first}"
    );
    let woken = envs.get("web-pr-5102").await.unwrap();
    assert!(
        woken
            .annotations()
            .get("previewd.io/visit-wakes")
            .is_some_and(|v| !v.is_empty()),
        "the visit is recorded for the limit"
    );
    assert!(!woken.annotations().contains_key("previewd.io/sleep"));
    // The page reloads by itself; no navigation by the test.
    let landed = eventually(TIMEOUT, "the page lands on the preview", || {
        let b = &b;
        async move {
            let app = b.find(Locator::Css("h1#app")).await.ok()?;
            let service = b
                .find(Locator::Css("p#service"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            app.text().await.ok()?;
            Some(service)
        }
    })
    .await;
    assert_eq!(landed, format!("{preview_ns}/web"));
    let ready = envs.get("web-pr-5102").await.unwrap();
    assert!(condition_true(&ready, "Ready"));
    assert!(!condition_true(&ready, "Sleeping"));

    b.close().await.unwrap();
    let _ = driver.kill().await;

    for env in envs.list(&ListParams::default()).await.unwrap() {
        let _ = envs.delete(&env.name_any(), &Default::default()).await;
    }
    eventually(TIMEOUT, "environments gone", || {
        let envs = envs.clone();
        async move {
            envs.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    shutdown.cancel();
    operator.await.unwrap().unwrap();
    delete_namespace(&admin, &ns).await;
}
