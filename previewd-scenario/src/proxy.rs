//! A counting proxy in front of the Kubernetes API server, on 127.0.0.1 over plain HTTP.
//! The operator is given a kubeconfig that points here; the proxy forwards every request
//! with the scenario's own credentials, so every request the operator makes is counted
//! by verb and resource. It can also end every open watch at once and answer the next
//! watches with `410 Gone` (an expired resourceVersion), as an API server does after a
//! compaction.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// User agent of the scenario's write probe: forwarded like the operator's requests (the
/// same path to the API server), not counted as the operator's.
pub const PROBE_AGENT: &str = "previewd-scenario-probe";

/// What kind of request it was, as the API server's audit and metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// A watch.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// Changes something.
    pub fn is_write(self) -> bool {
        !matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }

    fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// Verb and resource (`deployments`, `previewenvironments/status`, ...) of a request.
pub fn classify(method: &http::Method, path: &str, query: &str) -> (Verb, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => &[],
    };
    let (resource, name, sub) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (rest[2], rest.get(3), rest.get(4))
    } else {
        (
            rest.first().copied().unwrap_or("other"),
            rest.get(1),
            rest.get(2),
        )
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    let watch = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let verb = match *method {
        http::Method::GET if watch => Verb::Watch,
        http::Method::GET if name.is_none() => Verb::List,
        http::Method::GET => Verb::Get,
        http::Method::POST => Verb::Create,
        http::Method::PUT => Verb::Update,
        http::Method::PATCH => Verb::Patch,
        http::Method::DELETE if name.is_none() => Verb::DeleteCollection,
        _ => Verb::Delete,
    };
    (verb, resource)
}

/// Request counts by `verb resource`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// `"patch deployments"` → count.
    pub by_kind: BTreeMap<String, u64>,
}

impl Counts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// Requests that change something.
    pub fn writes(&self) -> u64 {
        self.sum(|verb| ["create", "update", "patch", "delete", "deletecollection"].contains(&verb))
    }

    /// Reads (get and list; watches are counted apart).
    pub fn reads(&self) -> u64 {
        self.sum(|verb| verb == "get" || verb == "list")
    }

    /// Watch requests (each opens a stream).
    pub fn watches(&self) -> u64 {
        self.sum(|verb| verb == "watch")
    }

    fn sum(&self, pick: impl Fn(&str) -> bool) -> u64 {
        self.by_kind
            .iter()
            .filter(|(k, _)| pick(k.split(' ').next().unwrap_or("")))
            .map(|(_, v)| v)
            .sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let by_kind = self
            .by_kind
            .iter()
            .map(|(k, v)| (k.clone(), v - earlier.by_kind.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        Counts { by_kind }
    }
}

struct Shared {
    client: kube::Client,
    counts: Mutex<Counts>,
    epoch: Mutex<CancellationToken>,
    expire_next: AtomicU64,
    watches_ended: AtomicU64,
    watches_expired: AtomicU64,
}

/// The running proxy. Stops when dropped.
pub struct ApiProxy {
    /// Address (plain HTTP).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl ApiProxy {
    /// Starts a proxy that forwards with `client`'s credentials.
    pub async fn start(client: kube::Client) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            client,
            counts: Mutex::new(Counts::default()),
            epoch: Mutex::new(CancellationToken::new()),
            expire_next: AtomicU64::new(0),
            watches_ended: AtomicU64::new(0),
            watches_expired: AtomicU64::new(0),
        });
        let state = shared.clone();
        let app = Router::new().fallback(move |req: Request<Body>| {
            let state = state.clone();
            async move { forward(state, req).await }
        });
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(ApiProxy {
            addr,
            shared,
            shutdown,
        })
    }

    /// A kubeconfig naming the proxy, without credentials (the proxy adds them).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: http://{}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: proxy\ncurrent-context: proxy\nusers:\n- name: proxy\n  user: {{}}\n",
            self.addr
        )
    }

    /// Counts so far.
    pub fn counts(&self) -> Counts {
        lock(&self.shared.counts).clone()
    }

    /// Ends every open watch now, and answers the next `expire` watch requests with
    /// `410 Gone` so the watchers must list again.
    pub fn expire_watches(&self, expire: u64) {
        let mut epoch = lock(&self.shared.epoch);
        epoch.cancel();
        *epoch = CancellationToken::new();
        self.shared.expire_next.store(expire, Ordering::SeqCst);
    }

    /// Watches ended by [`Self::expire_watches`] and watches answered `410 Gone`.
    pub fn watch_faults(&self) -> (u64, u64) {
        (
            self.shared.watches_ended.load(Ordering::SeqCst),
            self.shared.watches_expired.load(Ordering::SeqCst),
        )
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}

async fn forward(shared: Arc<Shared>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let (verb, resource) = classify(
        &parts.method,
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
    );
    // The scenario's own write probe takes the operator's path but is not the operator.
    let probe = parts
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with(PROBE_AGENT));
    if !probe {
        *lock(&shared.counts)
            .by_kind
            .entry(format!("{} {resource}", verb.name()))
            .or_default() += 1;
    }

    if verb == Verb::Watch {
        let pending = shared.expire_next.load(Ordering::SeqCst);
        if pending > 0
            && shared
                .expire_next
                .compare_exchange(pending, pending - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            shared.watches_expired.fetch_add(1, Ordering::SeqCst);
            // What the API server streams when the requested resourceVersion is compacted.
            let event = serde_json::json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}});
            let mut r = Response::new(Body::from(format!("{event}\n")));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return r;
        }
    }

    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    let mut builder = http::Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query);
    for name in [
        http::header::CONTENT_TYPE,
        http::header::ACCEPT,
        http::header::USER_AGENT,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            builder = builder.header(name, v);
        }
    }
    let request = match builder.body(kube::client::Body::from(bytes.to_vec())) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("request: {e}")),
    };
    let response = match shared.client.send(request).await {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("API server: {e}")),
    };
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream();
    let body = if verb == Verb::Watch {
        let epoch = lock(&shared.epoch).clone();
        let shared = shared.clone();
        let ended = async move {
            epoch.cancelled().await;
            shared.watches_ended.fetch_add(1, Ordering::SeqCst);
        };
        Body::from_stream(stream.take_until(Box::pin(ended)))
    } else {
        Body::from_stream(stream)
    };
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        if k != http::header::TRANSFER_ENCODING && k != http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_the_api_server() {
        use http::Method;
        let c = |m: Method, p: &str, q: &str| {
            let (v, r) = classify(&m, p, q);
            format!("{} {r}", v.name())
        };
        assert_eq!(c(Method::GET, "/api/v1/namespaces/x", ""), "get namespaces");
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces", "labelSelector=a"),
            "list namespaces"
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/apps/v1/deployments",
                "watch=true&resourceVersion=1"
            ),
            "watch deployments"
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/previewd.io/v1alpha1/namespaces/a/previewenvironments/b/status",
                ""
            ),
            "patch previewenvironments/status"
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/apps/v1/namespaces/a/deployments/web",
                "fieldManager=previewd"
            ),
            "patch deployments"
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/namespaces/a", ""),
            "delete namespaces"
        );
        assert_eq!(
            c(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/a/events",
                ""
            ),
            "create events"
        );
    }

    #[test]
    fn counts_split_reads_writes_and_watches() {
        let mut a = Counts::default();
        a.by_kind.insert("get namespaces".into(), 3);
        a.by_kind.insert("patch deployments".into(), 2);
        a.by_kind.insert("watch deployments".into(), 1);
        let mut b = a.clone();
        *b.by_kind.entry("patch deployments".into()).or_default() += 5;
        let d = b.since(&a);
        assert_eq!(d.writes(), 5);
        assert_eq!(d.reads(), 0);
        assert_eq!(a.reads(), 3);
        assert_eq!(a.watches(), 1);
        assert_eq!(a.total(), 6);
    }
}
