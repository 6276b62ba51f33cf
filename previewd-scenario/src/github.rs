//! A server on 127.0.0.1 that speaks the parts of GitHub's REST API the operator uses
//! (`/user`, pulls, commit statuses, deployments and their statuses, issue comments with
//! pagination), for many pull requests at once. The scenario sets each PR's true state
//! (open or closed, head commit, labels), so `GET /pulls/{n}` answers what GitHub would.
//! Every request is counted; an outage answers 503 to everything until it ends.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The token the operator is given; other credentials get 401.
pub const TOKEN: &str = "scenario-token";
/// The bot's login (author of previewd's comments).
pub const BOT: &str = "previewd-bot";
/// Marker previewd puts in its sticky comment.
pub const COMMENT_MARKER: &str = previewd_github::comment::COMMENT_MARKER;

/// The true state of a pull request, as GitHub holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullState {
    /// `open` or `closed`.
    pub open: bool,
    /// Head commit.
    pub head_sha: String,
    /// Head branch.
    pub branch: String,
    /// Labels.
    pub labels: Vec<String>,
    /// Last update, RFC 3339.
    pub updated_at: String,
}

/// A comment on an issue.
#[derive(Clone, Debug)]
pub struct Comment {
    /// Id.
    pub id: u64,
    /// Issue (PR) number.
    pub issue: u64,
    /// Body.
    pub body: String,
    /// Author.
    pub user: String,
}

/// A deployment.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// Id.
    pub id: u64,
    /// Commit.
    pub git_ref: String,
    /// Environment (`preview`, shared by every PR).
    pub environment: String,
    /// The PR of the deployment's payload (`{"pull_request": N}`).
    pub pull_request: Option<u64>,
    /// Statuses, oldest first (`state` values).
    pub statuses: Vec<String>,
}

/// Everything the server holds.
#[derive(Default, Debug)]
pub struct State {
    /// Address served.
    pub addr: Option<SocketAddr>,
    /// PR number → true state.
    pub pulls: BTreeMap<u64, PullState>,
    /// Comments, in creation order.
    pub comments: Vec<Comment>,
    /// Deployments, in creation order.
    pub deployments: Vec<Deployment>,
    /// Commit statuses as `(sha, state)`, in order.
    pub commit_statuses: Vec<(String, String)>,
    /// Requests by `METHOD route`.
    pub requests: BTreeMap<String, u64>,
    /// Answer 503 to every request while set.
    pub outage: bool,
    /// Requests answered 503 because of an outage.
    pub refused: u64,
    next_id: u64,
}

impl State {
    /// All requests received.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests that change something (not GET).
    pub fn mutations(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(k, _)| !k.starts_with("GET "))
            .map(|(_, v)| v)
            .sum()
    }

    /// previewd's comments on `issue`.
    pub fn bot_comments(&self, issue: u64) -> usize {
        self.comments
            .iter()
            .filter(|c| c.issue == issue && c.user == BOT && c.body.contains(COMMENT_MARKER))
            .count()
    }

    /// Deployments that share a (ref, environment, PR) with an earlier one.
    pub fn duplicate_deployments(&self) -> Vec<(String, String)> {
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for d in &self.deployments {
            let key = format!("{}#{}", d.environment, d.pull_request.unwrap_or_default());
            *seen.entry((d.git_ref.clone(), key)).or_default() += 1;
        }
        let mut dups: Vec<_> = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, _)| k)
            .collect();
        dups.sort();
        dups
    }

    /// Repository environments created (a deployment to a new environment name creates
    /// one, as on GitHub).
    pub fn environments(&self) -> std::collections::BTreeSet<String> {
        self.deployments
            .iter()
            .map(|d| d.environment.clone())
            .collect()
    }

    /// The newest deployment of PR `number` and its last status.
    pub fn latest_deployment(&self, number: u64) -> Option<(&Deployment, Option<&str>)> {
        self.deployments
            .iter()
            .rev()
            .find(|d| d.pull_request == Some(number))
            .map(|d| (d, d.statuses.last().map(String::as_str)))
    }
}

/// The reporter's figures in the operator's `/metrics` text: the backlog, the oldest
/// pending report's age, states superseded and delivered, rate-limit pauses and budget
/// waits.
pub fn report_backlog(metrics: &str) -> Value {
    const NAMES: [&str; 8] = [
        "previewd_github_report_backlog",
        "previewd_github_report_oldest_pending_seconds",
        "previewd_github_reports_superseded_total",
        "previewd_github_reports_delivered_total",
        "previewd_github_report_failures_total",
        "previewd_github_rate_limit_pauses_total",
        "previewd_github_paused_requests_total",
        "previewd_github_budget_waits_total",
    ];
    let mut out = serde_json::Map::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        if NAMES.contains(&name)
            && let Ok(value) = value.parse::<f64>()
        {
            out.insert(name.to_string(), json!(value));
        }
    }
    Value::Object(out)
}

/// The running server. Stops when dropped.
pub struct GitHubServer {
    /// Address.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
}

impl GitHubServer {
    /// Binds 127.0.0.1 on a free port and serves.
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        lock(&state).addr = Some(addr);
        let shared = state.clone();
        let app = Router::new().fallback(move |req: Request<Body>| {
            let shared = shared.clone();
            async move { handle(shared, req).await }
        });
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(GitHubServer {
            addr,
            state,
            shutdown,
        })
    }

    /// Base URL to give the operator (`--github-api-url`).
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Reads or changes the state.
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut lock(&self.state))
    }

    /// Sets a PR's true state.
    pub fn set_pull(&self, number: u64, pull: PullState) {
        lock(&self.state).pulls.insert(number, pull);
    }

    /// Starts or ends an outage (503 to everything).
    pub fn set_outage(&self, on: bool) {
        lock(&self.state).outage = on;
    }
}

impl Drop for GitHubServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn answer(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    // Plenty of primary rate limit left, so the client never waits for a reset.
    response.headers_mut().insert(
        "x-ratelimit-remaining",
        http::HeaderValue::from_static("4999"),
    );
    response
}

/// A route name for counting: numbers and SHAs replaced by placeholders.
fn route_name(method: &Method, segments: &[&str]) -> String {
    let shape: Vec<&str> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| match (i, segments.first()) {
            (1 | 2, Some(&"repos")) => "{repo}",
            _ if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => "{n}",
            _ if s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit()) => "{sha}",
            _ => s,
        })
        .collect();
    format!("{method} /{}", shape.join("/"))
}

fn pull_json(number: u64, pull: &PullState) -> Value {
    json!({
        "number": number,
        "state": if pull.open { "open" } else { "closed" },
        "draft": false, "merged": false,
        "updated_at": pull.updated_at,
        "title": format!("Change {number}"),
        "html_url": format!("https://github.com/acme/shop/pull/{number}"),
        "author_association": "MEMBER",
        "user": {"login": "dev"},
        "head": {"ref": pull.branch, "sha": pull.head_sha, "repo": {"full_name": "acme/shop"}},
        "base": {"ref": "main", "sha": "1234567890abcdef1234567890abcdef12345678", "repo": {"full_name": "acme/shop"}},
        "labels": pull.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
    })
}

fn paginate(
    addr: SocketAddr,
    path: &str,
    query: &HashMap<String, String>,
    items: Vec<Value>,
) -> Response {
    let per_page: usize = query
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = query
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let start = (page - 1) * per_page;
    let slice: Vec<Value> = items.iter().skip(start).take(per_page).cloned().collect();
    let mut response = answer(200, Value::Array(slice));
    if start + per_page < items.len() {
        let link = format!(
            "<http://{addr}{path}?per_page={per_page}&page={}>; rel=\"next\"",
            page + 1
        );
        if let Ok(value) = link.parse() {
            response.headers_mut().insert("link", value);
        }
    }
    response
}

async fn handle(shared: Arc<Mutex<State>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let headers = req.headers().clone();
    let Ok(bytes) = to_bytes(req.into_body(), 10 * 1024 * 1024).await else {
        return answer(400, json!({"message": "body too large"}));
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut state = lock(&shared);
    *state
        .requests
        .entry(route_name(&method, &segments))
        .or_default() += 1;
    if state.outage {
        state.refused += 1;
        return answer(503, json!({"message": "Service Unavailable"}));
    }
    route(
        &mut state, &method, &path, &segments, &query, &headers, body,
    )
}

fn route(
    state: &mut State,
    method: &Method,
    path: &str,
    segments: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Value,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {TOKEN}") && auth != format!("token {TOKEN}") {
        return answer(401, json!({"message": "Bad credentials"}));
    }
    let Some(addr) = state.addr else {
        return answer(500, json!({"message": "not started"}));
    };
    match (method.as_str(), segments) {
        ("GET", ["user"]) => answer(200, json!({"login": BOT, "id": 1})),
        ("GET", ["repos", _, _, "pulls", n]) => {
            let number: u64 = n.parse().unwrap_or(0);
            match state.pulls.get(&number) {
                Some(pull) => answer(200, pull_json(number, pull)),
                None => answer(404, json!({"message": "Not Found"})),
            }
        }
        ("GET", ["repos", _, _, "pulls", _, "files"]) => paginate(addr, path, query, vec![]),
        ("POST", ["repos", _, _, "statuses", sha]) => {
            let s = body["state"].as_str().unwrap_or("").to_string();
            state.commit_statuses.push((sha.to_string(), s));
            answer(201, body)
        }
        ("GET", ["repos", _, _, "deployments"]) => {
            let found: Vec<Value> = state
                .deployments
                .iter()
                .rev()
                .filter(|d| {
                    query.get("ref").is_none_or(|r| &d.git_ref == r)
                        && query.get("environment").is_none_or(|e| &d.environment == e)
                })
                .map(|d| {
                    json!({"id": d.id, "ref": d.git_ref, "environment": d.environment,
                                "payload": {"pull_request": d.pull_request}})
                })
                .collect();
            paginate(addr, path, query, found)
        }
        ("POST", ["repos", _, _, "deployments"]) => {
            state.next_id += 1;
            let id = state.next_id;
            state.deployments.push(Deployment {
                id,
                git_ref: body["ref"].as_str().unwrap_or("").to_string(),
                environment: body["environment"].as_str().unwrap_or("").to_string(),
                pull_request: body["payload"]["pull_request"].as_u64(),
                statuses: vec![],
            });
            let mut created = body;
            created["id"] = json!(id);
            answer(201, created)
        }
        ("POST", ["repos", _, _, "deployments", id, "statuses"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let s = body["state"].as_str().unwrap_or("").to_string();
            match state.deployments.iter_mut().find(|d| d.id == id) {
                Some(d) => {
                    d.statuses.push(s);
                    answer(201, body)
                }
                None => answer(404, json!({"message": "Not Found"})),
            }
        }
        ("GET", ["repos", _, _, "issues", n, "comments"]) => {
            let issue: u64 = n.parse().unwrap_or(0);
            let items = state
                .comments
                .iter()
                .filter(|c| c.issue == issue)
                .map(|c| json!({"id": c.id, "body": c.body, "user": {"login": c.user}}))
                .collect();
            paginate(addr, path, query, items)
        }
        ("POST", ["repos", _, _, "issues", n, "comments"]) => {
            state.next_id += 1;
            let id = state.next_id;
            let text = body["body"].as_str().unwrap_or("").to_string();
            state.comments.push(Comment {
                id,
                issue: n.parse().unwrap_or(0),
                body: text.clone(),
                user: BOT.to_string(),
            });
            answer(201, json!({"id": id, "body": text, "user": {"login": BOT}}))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_without_numbers_or_shas() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            route_name(&Method::POST, &["repos", "acme", "shop", "statuses", sha]),
            "POST /repos/{repo}/{repo}/statuses/{sha}"
        );
        assert_eq!(
            route_name(
                &Method::GET,
                &["repos", "acme", "shop", "issues", "12", "comments"]
            ),
            "GET /repos/{repo}/{repo}/issues/{n}/comments"
        );
    }
}
