//! A small server on 127.0.0.1 that speaks the parts of GitHub's REST API previewd uses:
//! pulls, pull files (capped at 3000 like GitHub), diffs, statuses, deployments and their
//! statuses, issue comments (paginated with `Link` headers), collaborator permissions,
//! `/user`, `/app` and App installation tokens (the JWT is verified with the app's public
//! key). Failures are scripted per route; every request is logged so tests can count
//! attempts.
//!
//! The App may have several installations (`State::installations`), each serving its own
//! repositories: a token is issued for one installation, and a request about a repository
//! that installation does not serve is answered 404 as GitHub does (and recorded in
//! `State::wrong_installation`). `GET /app/installations`, `GET /installation/repositories`
//! and `GET /repos/{owner}/{repo}/installation` answer from that map.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const TOKEN: &str = "test-token";
pub const BOT: &str = "previewd-bot";
pub const APP_SLUG: &str = "previewd-app";
pub const APP_ID: u64 = 4242;
pub const INSTALLATION_ID: u64 = 77;
/// A second installation, for tests with two.
pub const OTHER_INSTALLATION_ID: u64 = 88;

/// A scripted answer, returned instead of the normal one.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
    /// Carry the request out normally, then hold the answer for `delay` (a lost answer).
    pub process: bool,
}

impl Scripted {
    pub fn status(status: u16, message: &str) -> Self {
        Scripted {
            status,
            headers: vec![],
            body: json!({"message": message}).to_string(),
            delay: Duration::ZERO,
            process: false,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn stall(delay: Duration) -> Self {
        Scripted {
            status: 200,
            headers: vec![],
            body: String::new(),
            delay,
            process: false,
        }
    }
    /// GitHub carries the request out, but the answer arrives after `delay`.
    pub fn processed_then_stall(delay: Duration) -> Self {
        Scripted {
            process: true,
            ..Self::stall(delay)
        }
    }
}

#[derive(Clone, Debug)]
pub struct Comment {
    pub id: u64,
    pub body: String,
    pub user: String,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub accept: String,
    pub authorization: String,
    pub body: Value,
    /// The installation whose token the request carried, if it carried one.
    pub installation: Option<u64>,
}

#[derive(Default)]
pub struct State {
    pub addr: Option<SocketAddr>,
    pub log: Vec<Logged>,
    pub scripts: HashMap<(Method, String), VecDeque<Scripted>>,
    pub comments: Vec<Comment>,
    pub next_id: u64,
    pub statuses: Vec<Value>,
    /// Commit statuses as `(sha, body)`, in the order they were accepted.
    pub commit_statuses: Vec<(String, Value)>,
    /// When set, every request without a per-route script gets this answer (an outage).
    pub outage: Option<Scripted>,
    pub deployments: Vec<Value>,
    pub deployment_statuses: Vec<(u64, Value)>,
    /// PR number → number of changed files.
    pub pr_files: BTreeMap<u64, usize>,
    /// PR number → its changed files as GitHub lists them (`filename`, `status`,
    /// `patch`, ...); wins over `pr_files`.
    pub pr_file_list: BTreeMap<u64, Vec<Value>>,
    /// PR numbers whose diff GitHub refuses (too large).
    pub diff_refused: Vec<u64>,
    pub public_key_pem: Option<String>,
    pub issued_tokens: Vec<String>,
    /// Installation each issued token belongs to.
    pub token_installations: HashMap<String, u64>,
    /// Installations of the App: id → the repositories (`owner/name`, lower case) it
    /// serves; an empty list serves every repository.
    pub installations: BTreeMap<u64, Vec<String>>,
    /// Requests about a repository made with another installation's token, as
    /// `METHOD path (installation)`.
    pub wrong_installation: Vec<String>,
    /// Open pull requests by repository (`owner/name`), as `GET .../pulls?state=open`
    /// lists them.
    pub open_pulls: BTreeMap<String, Vec<Value>>,
    pub revoked_tokens: Vec<String>,
    /// Lifetime of issued installation tokens.
    pub token_lifetime: Duration,
    pub jwt_errors: Vec<String>,
    pub in_flight_mutations: usize,
    pub max_in_flight_mutations: usize,
    pub rate_limit_remaining: u64,
    /// Check runs (as GitHub lists them, with `head_sha`), for `GET .../check-runs`.
    pub check_runs: Vec<Value>,
    /// Check suites (with `head_sha`), for `GET .../check-suites`.
    pub check_suites: Vec<Value>,
    /// Reactions as `(comment id, content)`, each at most once (as GitHub keeps them).
    pub reactions: Vec<(u64, String)>,
    /// Collaborator permissions by login (lower case): `(role_name, permission)`; a login
    /// not listed gets 404, as GitHub answers for someone who is no collaborator.
    pub permissions: BTreeMap<String, (String, String)>,
    /// Pull requests by number, as `GET .../pulls/{n}` answers them; others get a
    /// default open pull request.
    pub pulls: BTreeMap<u64, Value>,
}

pub struct FakeGitHub {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl FakeGitHub {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            token_lifetime: Duration::from_secs(3600),
            rate_limit_remaining: 4999,
            installations: BTreeMap::from([(INSTALLATION_ID, Vec::new())]),
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        state.lock().unwrap().addr = Some(addr);
        let shared = state.clone();
        let app = Router::new().fallback(move |req: Request<Body>| {
            let shared = shared.clone();
            async move { handle(shared, req).await }
        });
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        FakeGitHub {
            addr,
            state,
            shutdown,
        }
    }

    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).unwrap()
    }

    /// A token client of this server with short timeouts and few retries, which gives up
    /// at once on a rate limit longer than a second.
    pub fn client(&self) -> previewd_github::GitHubClient {
        let mut config = previewd_github::ClientConfig::new(self.base_url());
        config.request_timeout = Duration::from_secs(5);
        config.max_retries = 1;
        config.backoff_base = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(100);
        config.mutation_spacing = Duration::from_millis(1);
        config.max_rate_limit_wait = Duration::from_secs(1);
        previewd_github::GitHubClient::new(
            config,
            previewd_github::GitHubAuth::Token(secrecy::SecretString::from(TOKEN.to_string())),
            previewd_github::metrics::ClientMetrics::default(),
        )
        .unwrap()
    }

    pub fn script(&self, method: Method, path: &str, answers: Vec<Scripted>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .entry((method, path.to_string()))
            .or_default()
            .extend(answers);
    }

    /// Starts (`Some`) or ends (`None`) an outage: every request gets the answer given.
    pub fn outage(&self, answer: Option<Scripted>) {
        self.state.lock().unwrap().outage = answer;
    }

    /// Requests received for `method path`.
    pub fn hits(&self, method: &Method, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.method == *method && l.path == path)
            .count()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Installs the App twice: `first` serves `INSTALLATION_ID`, `second`
    /// `OTHER_INSTALLATION_ID` (repositories as `owner/name`).
    pub fn two_installations(&self, first: &[&str], second: &[&str]) {
        let names = |repos: &[&str]| -> Vec<String> {
            repos.iter().map(|r| r.to_ascii_lowercase()).collect()
        };
        self.with(|s| {
            s.installations = BTreeMap::from([
                (INSTALLATION_ID, names(first)),
                (OTHER_INSTALLATION_ID, names(second)),
            ])
        });
    }

    /// Requests about `owner/name` (paths under `/repos/owner/name/`) and the installation
    /// whose token each carried.
    pub fn repository_requests(&self, repository: &str) -> Vec<(String, Option<u64>)> {
        let prefix = format!("/repos/{}/", repository.to_ascii_lowercase());
        self.with(|s| {
            s.log
                .iter()
                .filter(|l| l.path.to_ascii_lowercase().starts_with(&prefix))
                .map(|l| (format!("{} {}", l.method, l.path), l.installation))
                .collect()
        })
    }

    /// Gives `login` the role `role_name` (and the legacy `permission` GitHub maps it to).
    pub fn grant(&self, login: &str, role_name: &str) {
        let permission = match role_name {
            "admin" => "admin",
            "maintain" | "write" => "write",
            "triage" | "read" => "read",
            _ => "write",
        };
        self.with(|s| {
            s.permissions.insert(
                login.to_ascii_lowercase(),
                (role_name.to_string(), permission.to_string()),
            )
        });
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn authorized(state: &State, headers: &HeaderMap) -> bool {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth == format!("Bearer {TOKEN}") {
        return true;
    }
    if let Some(token) = auth.strip_prefix("token ") {
        return state.issued_tokens.iter().any(|t| t == token)
            && !state.revoked_tokens.iter().any(|t| t == token);
    }
    false
}

/// The installation of the token a request carries.
fn token_installation(state: &State, headers: &HeaderMap) -> Option<u64> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("token ")?;
    state.token_installations.get(token).copied()
}

/// Whether `installation` serves `repository` (`owner/name`).
fn serves(state: &State, installation: u64, repository: &str) -> bool {
    state.installations.get(&installation).is_some_and(|repos| {
        repos.is_empty() || repos.iter().any(|r| r.eq_ignore_ascii_case(repository))
    })
}

/// The installation serving `repository`: one that lists it, else one serving every
/// repository.
fn installation_of(state: &State, repository: &str) -> Option<u64> {
    let listed = state
        .installations
        .iter()
        .find(|(_, repos)| repos.iter().any(|r| r.eq_ignore_ascii_case(repository)));
    listed
        .or_else(|| {
            state
                .installations
                .iter()
                .find(|(_, repos)| repos.is_empty())
        })
        .map(|(id, _)| *id)
}

/// Verifies an App JWT: RS256 with the app's key, issuer, and GitHub's time rules.
fn verify_jwt(state: &State, headers: &HeaderMap) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let jwt = auth.strip_prefix("Bearer ").ok_or("no bearer JWT")?;
    let pem = state
        .public_key_pem
        .as_ref()
        .ok_or("no public key configured")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[APP_ID.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation).map_err(|e| e.to_string())?;
    let now = jiff::Timestamp::now().as_second();
    let iat = data.claims["iat"].as_i64().ok_or("iat")?;
    let exp = data.claims["exp"].as_i64().ok_or("exp")?;
    if iat > now {
        return Err("iat in the future".into());
    }
    if now - iat < 55 {
        return Err("iat not backdated".into());
    }
    if exp - now > 600 {
        return Err("exp more than 10 minutes ahead".into());
    }
    Ok(())
}

fn file_entry(number: u64, i: usize) -> Value {
    json!({
        "sha": "0000000000000000000000000000000000000000",
        "filename": format!("services/svc-{}/file-{i}.rs", i % 7),
        "status": if i.is_multiple_of(5) { "added" } else { "modified" },
        "additions": 3, "deletions": 1, "changes": 4,
        "patch": format!("@@ -1 +1 @@\n-old {number}\n+new {i}")
    })
}

/// One page of `items` (`per_page`, `page` from the query) and the `Link` header to the
/// next, if there is one.
fn page_of(
    state: &State,
    path: &str,
    query: &HashMap<String, String>,
    items: &[Value],
) -> (Vec<Value>, Option<String>) {
    let per_page: usize = query
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .min(100);
    let page: usize = query
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let start = (page - 1) * per_page;
    let slice: Vec<Value> = items.iter().skip(start).take(per_page).cloned().collect();
    let link = (start + per_page < items.len()).then(|| {
        let addr = state.addr.unwrap();
        format!(
            "<http://{addr}{path}?per_page={per_page}&page={}>; rel=\"next\", <http://{addr}{path}?per_page={per_page}&page={}>; rel=\"last\"",
            page + 1,
            items.len().div_ceil(per_page)
        )
    });
    (slice, link)
}

fn paginate(
    state: &State,
    path: &str,
    query: &HashMap<String, String>,
    items: Vec<Value>,
) -> Response {
    let (slice, link) = page_of(state, path, query, &items);
    let mut response = answer(200, Value::Array(slice));
    if let Some(link) = link {
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

fn pull(number: u64) -> Value {
    json!({
        "number": number, "state": "open", "draft": false, "merged": false,
        "updated_at": "2024-05-01T10:00:00Z", "title": "Add checkout",
        "html_url": format!("https://github.com/acme/shop/pull/{number}"),
        "author_association": "MEMBER",
        "user": {"login": "dev"},
        "head": {"ref": "feature/checkout", "sha": "abcdef1234567890abcdef1234567890abcdef12", "repo": {"full_name": "acme/shop"}},
        "base": {"ref": "main", "sha": "1234567890abcdef1234567890abcdef12345678", "repo": {"full_name": "acme/shop"}},
        "labels": [{"name": "preview"}],
        "extra_field_github_added": {"nested": true}
    })
}

async fn handle(shared: Arc<Mutex<State>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query_text = req.uri().query().unwrap_or("").to_string();
    let query: HashMap<String, String> = form_urlencoded::parse(query_text.as_bytes())
        .into_owned()
        .collect();
    let headers = req.headers().clone();
    let bytes = to_bytes(req.into_body(), 10 * 1024 * 1024).await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mutating = method != Method::GET;

    let scripted = {
        let mut state = shared.lock().unwrap();
        let installation = token_installation(&state, &headers);
        state.log.push(Logged {
            installation,
            method: method.clone(),
            path: path.clone(),
            query: query_text.clone(),
            accept: headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body: body.clone(),
        });
        if mutating {
            state.in_flight_mutations += 1;
            state.max_in_flight_mutations =
                state.max_in_flight_mutations.max(state.in_flight_mutations);
        }
        let routed = state
            .scripts
            .get_mut(&(method.clone(), path.clone()))
            .and_then(VecDeque::pop_front);
        routed.or_else(|| state.outage.clone())
    };
    // Hold the mutation "in flight" a little so overlapping requests would be seen.
    if mutating {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let response = if let Some(s) = scripted.clone().filter(|s| s.process) {
        let response = route(&shared, &method, &path, &query, &headers, body);
        tokio::time::sleep(s.delay).await;
        response
    } else if let Some(s) = scripted {
        tokio::time::sleep(s.delay).await;
        let mut r = Response::builder().status(s.status);
        for (k, v) in &s.headers {
            r = r.header(k, v);
        }
        r.header("content-type", "application/json")
            .body(Body::from(s.body))
            .unwrap()
    } else {
        route(&shared, &method, &path, &query, &headers, body)
    };
    let mut state = shared.lock().unwrap();
    if mutating {
        state.in_flight_mutations -= 1;
    }
    let mut response = response;
    if !response.headers().contains_key("x-ratelimit-remaining") {
        state.rate_limit_remaining = state.rate_limit_remaining.saturating_sub(1);
        response.headers_mut().insert(
            "x-ratelimit-remaining",
            state.rate_limit_remaining.to_string().parse().unwrap(),
        );
    }
    response
}

fn route(
    shared: &Arc<Mutex<State>>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Value,
) -> Response {
    let mut state = shared.lock().unwrap();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // App endpoints authenticate with the JWT.
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            if let Err(e) = verify_jwt(&state, headers) {
                state.jwt_errors.push(e.clone());
                return answer(401, json!({"message": format!("bad JWT: {e}")}));
            }
            let Some(id) = id
                .parse::<u64>()
                .ok()
                .filter(|id| state.installations.contains_key(id))
            else {
                return answer(404, json!({"message": "Not Found"}));
            };
            let token = format!("ghs_{}", state.issued_tokens.len() + 1);
            state.issued_tokens.push(token.clone());
            state.token_installations.insert(token.clone(), id);
            let expires = jiff::Timestamp::now()
                + jiff::SignedDuration::from_secs(state.token_lifetime.as_secs() as i64);
            return answer(
                201,
                json!({"token": token, "expires_at": expires.to_string()}),
            );
        }
        ("GET", ["app"]) => {
            if let Err(e) = verify_jwt(&state, headers) {
                state.jwt_errors.push(e.clone());
                return answer(401, json!({"message": format!("bad JWT: {e}")}));
            }
            return answer(200, json!({"id": APP_ID, "slug": APP_SLUG}));
        }
        ("GET", ["app", "installations"]) => {
            if let Err(e) = verify_jwt(&state, headers) {
                state.jwt_errors.push(e.clone());
                return answer(401, json!({"message": format!("bad JWT: {e}")}));
            }
            let items = state
                .installations
                .keys()
                .map(|id| {
                    json!({"id": id, "account": {"login": format!("account-{id}")},
                           "suspended_at": null, "app_id": APP_ID})
                })
                .collect();
            return paginate(&state, path, query, items);
        }
        ("GET", ["repos", owner, repo, "installation"]) => {
            if let Err(e) = verify_jwt(&state, headers) {
                state.jwt_errors.push(e.clone());
                return answer(401, json!({"message": format!("bad JWT: {e}")}));
            }
            return match installation_of(&state, &format!("{owner}/{repo}")) {
                Some(id) => answer(200, json!({"id": id, "app_id": APP_ID})),
                None => answer(404, json!({"message": "Not Found"})),
            };
        }
        _ => {}
    }
    if !authorized(&state, headers) {
        return answer(401, json!({"message": "Bad credentials"}));
    }
    // An installation token reaches only the repositories of its installation.
    if let (Some(installation), ["repos", owner, repo, ..]) =
        (token_installation(&state, headers), segments.as_slice())
        && !serves(&state, installation, &format!("{owner}/{repo}"))
    {
        let entry = format!("{method} {path} ({installation})");
        state.wrong_installation.push(entry);
        return answer(404, json!({"message": "Not Found"}));
    }
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["user"]) => answer(200, json!({"login": BOT, "id": 1})),
        ("GET", ["installation", "repositories"]) => {
            let Some(installation) = token_installation(&state, headers) else {
                return answer(403, json!({"message": "not an installation token"}));
            };
            let repos = state
                .installations
                .get(&installation)
                .cloned()
                .unwrap_or_default();
            let items: Vec<Value> = repos
                .iter()
                .map(|r| json!({"full_name": r, "name": r.split('/').nth(1)}))
                .collect();
            // Paginated like a list, wrapped in an object as GitHub sends it.
            let (listed, link) = page_of(&state, path, query, &items);
            let mut response = answer(
                200,
                json!({"total_count": items.len(), "repositories": listed}),
            );
            if let Some(link) = link {
                response.headers_mut().insert("link", link.parse().unwrap());
            }
            response
        }
        ("GET", ["repos", owner, repo, "pulls"]) => {
            let key = format!("{owner}/{repo}").to_ascii_lowercase();
            let open = state.open_pulls.get(&key).cloned().unwrap_or_default();
            paginate(&state, path, query, open)
        }
        ("GET", ["repos", _, _, "pulls", n]) => {
            let number: u64 = n.parse().unwrap_or(0);
            let accept = headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept == "application/vnd.github.diff" {
                if state.diff_refused.contains(&number) {
                    return answer(
                        406,
                        json!({"message": "Sorry, the diff exceeded the maximum number of files (300)."}),
                    );
                }
                return Response::builder()
                    .status(200)
                    .header("content-type", "text/plain")
                    .body(Body::from(format!(
                        "diff --git a/x b/x\n@@ -1 +1 @@\n-a\n+b {number}\n"
                    )))
                    .unwrap();
            }
            match state.pulls.get(&number) {
                Some(pr) => answer(200, pr.clone()),
                None => answer(200, pull(number)),
            }
        }
        ("GET", ["repos", owner, repo, "collaborators", user, "permission"]) => {
            match state.permissions.get(&user.to_ascii_lowercase()) {
                Some((role_name, permission)) => answer(
                    200,
                    json!({
                        "permission": permission,
                        "role_name": role_name,
                        "user": {"login": user, "type": "User",
                                 "permissions": {"admin": permission == "admin",
                                                 "push": permission != "read" && permission != "none",
                                                 "pull": true}},
                        "repository": {"full_name": format!("{owner}/{repo}")}
                    }),
                ),
                None => answer(
                    404,
                    json!({"message": "Not Found",
                           "documentation_url": "https://docs.github.com/rest/collaborators/collaborators#get-repository-permissions-for-a-user"}),
                ),
            }
        }
        ("GET", ["repos", _, _, "pulls", n, "files"]) => {
            let number: u64 = n.parse().unwrap_or(0);
            let items = match state.pr_file_list.get(&number) {
                Some(listed) => listed.iter().take(3000).cloned().collect(),
                None => {
                    let count = state.pr_files.get(&number).copied().unwrap_or(0).min(3000);
                    (0..count).map(|i| file_entry(number, i)).collect()
                }
            };
            paginate(&state, path, query, items)
        }
        ("GET", ["repos", _, _, "commits", sha, "check-runs"]) => {
            let runs: Vec<Value> = state
                .check_runs
                .iter()
                .filter(|r| r["head_sha"] == *sha)
                .cloned()
                .collect();
            answer(200, json!({"total_count": runs.len(), "check_runs": runs}))
        }
        ("GET", ["repos", _, _, "commits", sha, "check-suites"]) => {
            let suites: Vec<Value> = state
                .check_suites
                .iter()
                .filter(|r| r["head_sha"] == *sha)
                .cloned()
                .collect();
            answer(
                200,
                json!({"total_count": suites.len(), "check_suites": suites}),
            )
        }
        ("GET", ["repos", _, _, "commits", sha, "status"]) => {
            // The latest status of each context, newest first, as GitHub combines them.
            let mut latest: Vec<Value> = Vec::new();
            for (s, body) in state.commit_statuses.iter().rev() {
                if s == sha && !latest.iter().any(|l| l["context"] == body["context"]) {
                    latest.push(body.clone());
                }
            }
            let combined = if latest
                .iter()
                .any(|l| l["state"] == "failure" || l["state"] == "error")
            {
                "failure"
            } else if latest.is_empty() || latest.iter().any(|l| l["state"] == "pending") {
                "pending"
            } else {
                "success"
            };
            answer(
                200,
                json!({"state": combined, "sha": sha, "total_count": latest.len(), "statuses": latest}),
            )
        }
        ("POST", ["repos", _, _, "statuses", sha]) => {
            state.statuses.push(body.clone());
            state.commit_statuses.push((sha.to_string(), body.clone()));
            answer(201, body)
        }
        ("GET", ["repos", _, _, "deployments"]) => {
            let found: Vec<Value> = state
                .deployments
                .iter()
                .rev()
                .filter(|d| {
                    query.get("ref").is_none_or(|r| d["ref"] == r.as_str())
                        && query
                            .get("environment")
                            .is_none_or(|e| d["environment"] == e.as_str())
                })
                .cloned()
                .collect();
            paginate(&state, path, query, found)
        }
        ("POST", ["repos", _, _, "deployments"]) => {
            state.next_id += 1;
            let mut created = body.clone();
            created["id"] = json!(state.next_id);
            state.deployments.push(created.clone());
            answer(201, created)
        }
        ("POST", ["repos", _, _, "deployments", id, "statuses"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            if !state.deployments.iter().any(|d| d["id"] == id) {
                return answer(404, json!({"message": "Not Found"}));
            }
            state.deployment_statuses.push((id, body.clone()));
            answer(201, body)
        }
        ("GET", ["repos", _, _, "issues", _n, "comments"]) => {
            let items = state
                .comments
                .iter()
                .map(|c| json!({"id": c.id, "body": c.body, "user": {"login": c.user}}))
                .collect();
            paginate(&state, path, query, items)
        }
        ("POST", ["repos", _, _, "issues", _n, "comments"]) => {
            let user = if headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.starts_with("token "))
            {
                format!("{APP_SLUG}[bot]")
            } else {
                BOT.to_string()
            };
            state.next_id += 1;
            let id = state.next_id;
            let text = body["body"].as_str().unwrap_or("").to_string();
            state.comments.push(Comment {
                id,
                body: text.clone(),
                user: user.clone(),
            });
            answer(
                201,
                json!({"id": id, "body": text, "user": {"login": user}}),
            )
        }
        ("POST", ["repos", _, _, "issues", "comments", id, "reactions"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let content = body["content"].as_str().unwrap_or("").to_string();
            let allowed = [
                "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
            ];
            if !allowed.contains(&content.as_str()) {
                return answer(422, json!({"message": "Validation Failed"}));
            }
            let entry = (id, content.clone());
            if state.reactions.contains(&entry) {
                return answer(200, json!({"id": id, "content": content}));
            }
            state.reactions.push(entry);
            answer(201, json!({"id": id, "content": content}))
        }
        ("PATCH", ["repos", _, _, "issues", "comments", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let text = body["body"].as_str().unwrap_or("").to_string();
            match state.comments.iter_mut().find(|c| c.id == id) {
                Some(c) => {
                    c.body = text.clone();
                    answer(200, json!({"id": id, "body": text}))
                }
                None => answer(404, json!({"message": "Not Found"})),
            }
        }
        _ => answer(404, json!({"message": "Not Found"})),
    }
}
