//! The web view: a read-only page of every environment, one page per environment, and
//! the same data as JSON, served by the operator on its own address
//! (`--dashboard-addr`, off unless set).
//!
//! Everything shown comes from the operator's watch caches ([`model::Source`]): a page
//! view makes no request to the API server beyond the (cached) access reviews of
//! [`auth`]. Pages are rendered on the server ([`pages`]) and work without JavaScript;
//! `GET /live` is a server-sent event stream that tells an open page when what it shows
//! changed, and the page's small script fetches it again.
//!
//! Routes (all relative, so the view works under a path prefix):
//!
//! | path | what |
//! |---|---|
//! | `/` | the list; query `repo`, `phase` (or `Asleep`), `author`, `sort` (`expiry`, `cost`, `age`, `repository`) |
//! | `/environments/{namespace}/{name}` | one environment |
//! | `/api/v1/environments` | the list as JSON, same query |
//! | `/api/v1/environments/{namespace}/{name}` | one environment as JSON |
//! | `/live` | server-sent events (`changed`) for the list, `?env=namespace/name` for one |
//! | `/login`, `/logout` | token sign-in (the cookie), sign-out |
//!
//! A replica that does not run the controller (a standby) watches environments, their
//! Deployments and Pods itself ([`watches::keep_standby_caches`]), so that every replica
//! behind the web view's Service answers; until its caches exist it answers 503.

pub mod auth;
pub mod model;
pub mod pages;
pub mod watches;

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use clap::Args;
use jiff::Timestamp;
use kube::Client;
use kube::ResourceExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::cli::parse_duration;
use auth::{AccessReview, AuthMode, CachedReview, KubeReview, TrustedProxy, User};
use model::{ListQuery, Source, Visible};
pub use watches::Scope;

/// Flags of the web view.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Address of the read-only web view of every environment (and its JSON API); off
    /// unless set.
    #[arg(long, env = "PREVIEWD_DASHBOARD_ADDR")]
    pub dashboard_addr: Option<SocketAddr>,
    /// Who may see the web view: `kubernetes` (a bearer token the API server accepts,
    /// for an identity allowed to list previewenvironments; each user sees the
    /// namespaces they may list) or `proxy` (an authenticating proxy names the user in
    /// --dashboard-user-header, trusted only from --dashboard-proxy-addresses; the same
    /// per-namespace check follows).
    #[arg(long, env = "PREVIEWD_DASHBOARD_AUTH", default_value = "kubernetes", value_parser = ["kubernetes", "proxy"])]
    pub dashboard_auth: String,
    /// Audience the web view's tokens must be issued for (`kubectl create token NAME
    /// --audience previewd`); empty: the API server's own audiences (any token kubectl
    /// uses, which the web view could then replay against the API server).
    #[arg(
        long,
        env = "PREVIEWD_DASHBOARD_TOKEN_AUDIENCE",
        default_value = "previewd"
    )]
    pub dashboard_token_audience: String,
    /// With `--dashboard-auth proxy`: the addresses (CIDRs, comma-separated) the
    /// authenticating proxy connects from; requests from anywhere else are refused.
    #[arg(long, env = "PREVIEWD_DASHBOARD_PROXY_ADDRESSES", default_value = "")]
    pub dashboard_proxy_addresses: String,
    /// With `--dashboard-auth proxy`: the header naming the user.
    #[arg(
        long,
        env = "PREVIEWD_DASHBOARD_USER_HEADER",
        default_value = "X-Remote-User"
    )]
    pub dashboard_user_header: String,
    /// With `--dashboard-auth proxy`: the header naming the user's groups (repeated or
    /// comma-separated).
    #[arg(
        long,
        env = "PREVIEWD_DASHBOARD_GROUP_HEADER",
        default_value = "X-Remote-Group"
    )]
    pub dashboard_group_header: String,
    /// How long the answers of TokenReviews and SubjectAccessReviews are reused (a
    /// revoked permission shows within this time).
    #[arg(long, env = "PREVIEWD_DASHBOARD_AUTH_CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub dashboard_auth_cache_ttl: Duration,
}

impl DashboardArgs {
    /// How requests are authenticated, from the flags.
    pub fn auth_mode(&self) -> anyhow::Result<AuthMode> {
        match self.dashboard_auth.trim() {
            "kubernetes" => Ok(AuthMode::Kubernetes),
            "proxy" => {
                let addresses = self
                    .dashboard_proxy_addresses
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        a.parse::<ipnet::IpNet>()
                            .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .with_context(|| {
                                format!("--dashboard-proxy-addresses: {a:?} is no address or CIDR")
                            })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                anyhow::ensure!(
                    !addresses.is_empty(),
                    "--dashboard-auth proxy needs --dashboard-proxy-addresses (where the authenticating proxy connects from)"
                );
                Ok(AuthMode::Proxy(TrustedProxy {
                    addresses,
                    user_header: self.dashboard_user_header.trim().to_string(),
                    group_header: self.dashboard_group_header.trim().to_string(),
                }))
            }
            other => anyhow::bail!("invalid --dashboard-auth {other:?}: kubernetes or proxy"),
        }
    }

    /// The audience tokens must be issued for (`None`: the API server's).
    pub fn audience(&self) -> Option<String> {
        Some(self.dashboard_token_audience.trim().to_string()).filter(|a| !a.is_empty())
    }
}

/// The web view's state.
#[derive(Clone)]
pub struct DashboardState {
    /// What is shown.
    pub source: Source,
    /// Access reviews, cached.
    pub review: Arc<CachedReview>,
    /// How requests are authenticated.
    pub mode: AuthMode,
    /// Audience of tokens (for the sign-in page's advice).
    pub audience: Option<String>,
    /// Changes of anything shown: a fingerprint of the caches, recomputed every second.
    pub changes: tokio::sync::watch::Receiver<u64>,
}

impl DashboardState {
    /// A state over `source`, reviewing access with `review`; returns it with the task
    /// that publishes changes (until `shutdown`).
    pub fn new(
        source: Source,
        review: Arc<dyn AccessReview>,
        mode: AuthMode,
        audience: Option<String>,
        cache_ttl: Duration,
        shutdown: CancellationToken,
    ) -> DashboardState {
        let (sender, changes) = tokio::sync::watch::channel(0u64);
        let watched = source.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHANGE_POLL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        let now = global_fingerprint(&watched);
                        sender.send_if_modified(|old| {
                            let changed = *old != now;
                            *old = now;
                            changed
                        });
                    }
                }
            }
        });
        DashboardState {
            source,
            review: Arc::new(CachedReview::new(review, cache_ttl)),
            mode,
            audience,
            changes,
        }
    }
}

/// How often the caches are looked at for changes to push to open pages.
pub const CHANGE_POLL: Duration = Duration::from_secs(1);
/// How often an open event stream checks its user's access again (and, with nothing
/// changed, tells the page to refresh its relative times).
pub const LIVE_RECHECK: Duration = Duration::from_secs(60);

fn hash_rv<K: kube::Resource>(hasher: &mut DefaultHasher, obj: &K) {
    obj.meta().uid.hash(hasher);
    obj.meta().resource_version.hash(hasher);
}

/// [`hash_rv`] for a packed object (cached without its UID).
fn hash_packed_rv<K>(
    hasher: &mut DefaultHasher,
    obj: &previewd_kube::controller::caches::Packed<K>,
) {
    obj.name.hash(hasher);
    obj.resource_version.hash(hasher);
}

fn global_fingerprint(source: &Source) -> u64 {
    let mut h = DefaultHasher::new();
    if let Some(store) = source.store() {
        for env in store.state() {
            hash_rv(&mut h, env.as_ref());
        }
    }
    for e in source.events.state() {
        hash_rv(&mut h, e.as_ref());
    }
    for p in source.pods().state() {
        hash_packed_rv(&mut h, p.as_ref());
    }
    for d in source.deployments().state() {
        hash_packed_rv(&mut h, d.as_ref());
    }
    h.finish()
}

/// What one open page depends on: the visible environments (the list), or one
/// environment with its Events, Pods and Deployments.
fn scoped_fingerprint(source: &Source, visible: &Visible, scope: Option<&(String, String)>) -> u64 {
    let mut h = DefaultHasher::new();
    let envs = source.store().map(|s| s.state()).unwrap_or_default();
    match scope {
        None => {
            for env in envs
                .iter()
                .filter(|e| visible.contains(&e.namespace().unwrap_or_default()))
            {
                hash_rv(&mut h, env.as_ref());
            }
        }
        Some((namespace, name)) => {
            let Some(env) = source.environment(visible, namespace, name) else {
                return 0;
            };
            hash_rv(&mut h, env.as_ref());
            let preview = env.status.as_ref().and_then(|s| s.namespace.clone());
            for e in source.events.state().iter().filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.name.as_deref() == Some(name.as_str())
                        && r.namespace.as_deref() == Some(namespace.as_str())
                })
            }) {
                hash_rv(&mut h, e.as_ref());
            }
            for p in source
                .pods()
                .state()
                .iter()
                .filter(|p| p.namespace.is_some() && p.namespace == preview)
            {
                hash_packed_rv(&mut h, p.as_ref());
            }
            for d in source
                .deployments()
                .state()
                .iter()
                .filter(|d| d.namespace.is_some() && d.namespace == preview)
            {
                hash_packed_rv(&mut h, d.as_ref());
            }
        }
    }
    h.finish()
}

/// Why a request is not granted.
enum Refusal {
    Unauthenticated(&'static str),
    Forbidden(User),
    Unavailable(String),
    Standby,
}

/// The user of a request and what they may see, or why not.
type Access = Result<(User, Visible), Refusal>;

async fn access(state: &DashboardState, peer: SocketAddr, headers: &HeaderMap) -> Access {
    if state.source.store().is_none() {
        return Err(Refusal::Standby);
    }
    let user = match &state.mode {
        AuthMode::Kubernetes => {
            let Some(token) = auth::bearer_token(headers) else {
                return Err(Refusal::Unauthenticated("sign in with a token"));
            };
            match state.review.authenticate(&token).await {
                Ok(Some(user)) => user,
                Ok(None) => {
                    return Err(Refusal::Unauthenticated(
                        "the API server did not accept the token",
                    ));
                }
                Err(e) => return Err(Refusal::Unavailable(e.to_string())),
            }
        }
        AuthMode::Proxy(proxy) => match proxy.user(peer.ip(), headers) {
            Ok(Some(user)) => user,
            Ok(None) => {
                return Err(Refusal::Unauthenticated(
                    "the authenticating proxy named no user",
                ));
            }
            Err(auth::NotFromProxy) => {
                return Err(Refusal::Unauthenticated(
                    "this view is served through its authenticating proxy only",
                ));
            }
        },
    };
    visible_for(state, user).await
}

async fn visible_for(state: &DashboardState, user: User) -> Access {
    match state.review.visible(&user, state.source.namespaces()).await {
        Ok(Visible::Namespaces(set)) if set.is_empty() => Err(Refusal::Forbidden(user)),
        Ok(visible) => Ok((user, visible)),
        Err(e) => Err(Refusal::Unavailable(e.to_string())),
    }
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"error": message}).to_string(),
    )
        .into_response()
}

/// The answer to a request that was not granted, as a page (`base`: the way back to
/// the root) or as JSON.
fn refused(state: &DashboardState, refusal: Refusal, base: &str, as_json: bool) -> Response {
    let (status, title, text, user) = match refusal {
        Refusal::Unauthenticated(why) => (StatusCode::UNAUTHORIZED, "Sign in", why.to_string(), None),
        Refusal::Forbidden(user) => (
            StatusCode::FORBIDDEN,
            "Not allowed",
            format!(
                "{} may not list preview environments in any namespace that holds one.",
                user.name
            ),
            Some(user.name),
        ),
        Refusal::Unavailable(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Cannot check access",
            format!("Access could not be checked, so nothing is shown: {why}"),
            None,
        ),
        Refusal::Standby => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Starting",
            "This replica is starting and has not read the environments yet; try again in a few seconds.".to_string(),
            None,
        ),
    };
    let mut response = if as_json {
        json_error(status, &text)
    } else if status == StatusCode::UNAUTHORIZED && state.mode == AuthMode::Kubernetes {
        html(
            status,
            pages::login_page(
                base,
                Some(&text)
                    .filter(|_| text != "sign in with a token")
                    .map(String::as_str),
                state.audience.as_deref(),
            ),
        )
    } else {
        html(
            status,
            pages::message_page(base, title, &text, user.as_deref()),
        )
    };
    if status == StatusCode::UNAUTHORIZED && state.mode == AuthMode::Kubernetes {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"previewd\""),
        );
    }
    response
}

async fn list_page(
    State(state): State<DashboardState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
    uri: axum::http::Uri,
) -> Response {
    match access(&state, peer, &headers).await {
        Ok((user, visible)) => {
            let view = state.source.list(&visible, &query, Timestamp::now());
            let live = match uri.query() {
                Some(q) if !q.is_empty() => format!("live?{q}"),
                _ => "live".to_string(),
            };
            html(
                StatusCode::OK,
                pages::list_page(&view, &query, Some(&user.name), &live),
            )
        }
        Err(refusal) => refused(&state, refusal, "", false),
    }
}

async fn detail_page(
    State(state): State<DashboardState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let base = pages::DETAIL_BASE;
    match access(&state, peer, &headers).await {
        Ok((user, visible)) => {
            let now = Timestamp::now();
            match state.source.detail(&visible, &namespace, &name, now) {
                Some(detail) => {
                    let scope: String = form_urlencoded::Serializer::new(String::new())
                        .append_pair("env", &format!("{namespace}/{name}"))
                        .finish();
                    html(
                        StatusCode::OK,
                        pages::detail_page(
                            &detail,
                            now,
                            Some(&user.name),
                            &format!("{base}live?{scope}"),
                        ),
                    )
                }
                None => html(
                    StatusCode::NOT_FOUND,
                    pages::message_page(
                        base,
                        "Not found",
                        "There is no such environment, or you may not see it.",
                        Some(&user.name),
                    ),
                ),
            }
        }
        Err(refusal) => refused(&state, refusal, base, false),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn api_list(
    State(state): State<DashboardState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    match access(&state, peer, &headers).await {
        Ok((_, visible)) => json(&state.source.list(&visible, &query, Timestamp::now())),
        Err(refusal) => refused(&state, refusal, "", true),
    }
}

async fn api_detail(
    State(state): State<DashboardState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match access(&state, peer, &headers).await {
        Ok((_, visible)) => {
            match state
                .source
                .detail(&visible, &namespace, &name, Timestamp::now())
            {
                Some(detail) => json(&detail),
                None => json_error(
                    StatusCode::NOT_FOUND,
                    "no such environment, or you may not see it",
                ),
            }
        }
        Err(refusal) => refused(&state, refusal, "", true),
    }
}

/// `?env=namespace/name` of the event stream.
#[derive(Debug, Default, Deserialize)]
struct LiveQuery {
    #[serde(default)]
    env: Option<String>,
}

struct LiveStream {
    state: DashboardState,
    changes: tokio::sync::watch::Receiver<u64>,
    user: User,
    visible: Visible,
    scope: Option<(String, String)>,
    last: u64,
    checked: Instant,
}

async fn live(
    State(state): State<DashboardState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
) -> Response {
    let (user, visible) = match access(&state, peer, &headers).await {
        Ok((user, visible)) => (user, visible),
        Err(refusal) => return refused(&state, refusal, "", true),
    };
    let scope = query
        .env
        .as_deref()
        .and_then(|e| e.split_once('/'))
        .map(|(ns, name)| (ns.to_string(), name.to_string()));
    let last = scoped_fingerprint(&state.source, &visible, scope.as_ref());
    let mut changes = state.changes.clone();
    changes.borrow_and_update();
    let stream = LiveStream {
        state: state.clone(),
        changes,
        user,
        visible,
        scope,
        last,
        checked: Instant::now(),
    };
    let events = futures::stream::unfold(stream, |mut s| async move {
        loop {
            let timed_out = match tokio::time::timeout(LIVE_RECHECK, s.changes.changed()).await {
                Ok(Ok(())) => false,
                // The publisher stopped (shutdown): the stream ends.
                Ok(Err(_)) => return None,
                Err(_) => true,
            };
            if s.checked.elapsed() >= LIVE_RECHECK {
                // The user's access may have changed (or the token expired).
                match visible_for(&s.state, s.user.clone()).await {
                    Ok((_, visible)) => s.visible = visible,
                    _ => return None,
                }
                s.checked = Instant::now();
            }
            let now = scoped_fingerprint(&s.state.source, &s.visible, s.scope.as_ref());
            if now != s.last || timed_out {
                s.last = now;
                let event = SseEvent::default().event("changed").data(now.to_string());
                return Some((Ok::<_, Infallible>(event), s));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn login_form(State(state): State<DashboardState>) -> Response {
    match state.mode {
        AuthMode::Kubernetes => html(
            StatusCode::OK,
            pages::login_page("", None, state.audience.as_deref()),
        ),
        AuthMode::Proxy(_) => Redirect::to("./").into_response(),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// How long the login cookie lives.
pub const LOGIN_COOKIE_MAX_AGE: Duration = Duration::from_secs(8 * 3600);

async fn login(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if state.mode != AuthMode::Kubernetes {
        return Redirect::to("./").into_response();
    }
    let token = form.token.trim();
    let refused_with = |why: &str| {
        html(
            StatusCode::UNAUTHORIZED,
            pages::login_page("", Some(why), state.audience.as_deref()),
        )
    };
    if !auth::plausible_token(token) {
        return refused_with("That is not a token.");
    }
    match state.review.authenticate(token).await {
        Ok(Some(_)) => {
            // Secure when the browser reached the view over HTTPS (through a proxy
            // that says so); a forged header only makes the cookie stricter.
            let secure = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.eq_ignore_ascii_case("https"));
            let cookie = format!(
                "{}={token}; HttpOnly; SameSite=Strict; Max-Age={}{}",
                auth::TOKEN_COOKIE,
                LOGIN_COOKIE_MAX_AGE.as_secs(),
                if secure { "; Secure" } else { "" }
            );
            let mut response = Redirect::to("./").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Ok(None) => refused_with(&match &state.audience {
            Some(a) => format!("The API server did not accept this token for the audience {a}."),
            None => "The API server did not accept this token.".to_string(),
        }),
        Err(e) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::login_page("", Some(&e.to_string()), state.audience.as_deref()),
        ),
    }
}

async fn logout() -> Response {
    let mut response = Redirect::to("./").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("previewd_token=; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Headers every answer carries: no framing, no sniffing, no referrer, scripts and
/// styles from this origin only; pages are never cached.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The web view's router.
pub fn router(state: DashboardState) -> Router {
    Router::new()
        .route("/", get(list_page))
        .route("/environments/{namespace}/{name}", get(detail_page))
        .route("/api/v1/environments", get(api_list))
        .route("/api/v1/environments/{namespace}/{name}", get(api_detail))
        .route("/live", get(live))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", pages::APP_CSS) }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", pages::APP_JS) }),
        )
        .layer(axum::middleware::map_response(security_headers))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// Serves the web view on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: DashboardState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "web view listening");
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// Binds and starts the web view over the controller's caches; the Events watch starts
/// with it, and, on a replica that does not run the controller, watches of its own.
pub async fn start(
    args: &DashboardArgs,
    addr: SocketAddr,
    client: Client,
    mut source: Source,
    scope: Scope,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let mode = args.auth_mode()?;
    source.events =
        watches::watch_events(client.clone(), scope.namespace.as_deref(), shutdown.clone());
    watches::keep_standby_caches(client.clone(), source.clone(), scope, shutdown.clone());
    let review: Arc<dyn AccessReview> = Arc::new(KubeReview::new(client, args.audience()));
    let state = DashboardState::new(
        source,
        review,
        mode,
        args.audience(),
        args.dashboard_auth_cache_ttl,
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the web view to {addr}"))?;
    Ok(tokio::spawn(serve(listener, state, shutdown)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use async_trait::async_trait;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use http_body_util::BodyExt;
    use serde_json::json;
    use std::collections::BTreeSet;
    use tower::ServiceExt;

    /// Token `viewer` may list `team-a`; token `stranger` may list nothing.
    struct Fake;

    #[async_trait]
    impl AccessReview for Fake {
        async fn authenticate(&self, token: &str) -> Result<Option<User>, auth::ReviewError> {
            Ok(matches!(token, "viewer" | "stranger").then(|| User {
                name: token.into(),
                ..User::default()
            }))
        }
        async fn may_list(&self, user: &User, ns: Option<&str>) -> Result<bool, auth::ReviewError> {
            Ok(user.name == "viewer" && ns == Some("team-a"))
        }
    }

    const HOSTILE: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

    fn app() -> Router {
        let hostile = model::tests_support::env(
            "shop-pr-7",
            "team-a",
            json!({"metadata": {"annotations": {"previewd.io/pr-title": HOSTILE}},
                   "spec": {"branch": "feat/<b>bold</b>", "author": "mal\"lory"}}),
        );
        let hidden = model::tests_support::env(
            "secret-pr-9",
            "team-b",
            json!({"metadata": {"annotations": {"previewd.io/pr-title": "Top secret launch"}}}),
        );
        let state = DashboardState::new(
            model::tests_support::source(vec![hostile, hidden]),
            Arc::new(Fake),
            AuthMode::Kubernetes,
            Some("previewd".into()),
            Duration::from_secs(30),
            CancellationToken::new(),
        );
        router(state).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))))
    }

    async fn get(uri: &str, token: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = axum::http::Request::builder().uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let response = app()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn hostile_titles_branches_authors_and_query_strings_are_text() {
        let (status, headers, body) = get(
            "/?repo=%3Cscript%3Ealert(3)%3C/script%3E&author=%22%3E%3Cimg%20src=x%3E",
            Some("viewer"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        assert!(!body.contains("<script>alert"), "{body}");
        assert!(!body.contains("<img src=x"), "{body}");
        assert!(
            body.contains("&lt;script&gt;alert(3)&lt;/script&gt;"),
            "the query is echoed as text"
        );
        // The list itself, unfiltered: the title, the branch and the author as text.
        let (_, _, body) = get("/", Some("viewer")).await;
        assert!(
            body.contains(
                "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"
            ),
            "{body}"
        );
        assert!(body.contains("feat/&lt;b&gt;bold&lt;/b&gt;"));
        assert!(body.contains("mal&quot;lory"));
        assert!(!body.contains("<script>") && !body.contains("<b>bold"));
        // The JSON API escapes for JSON, and is served as JSON.
        let (status, headers, body) = get("/api/v1/environments", Some("viewer")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["items"][0]["title"], HOSTILE);
    }

    #[tokio::test]
    async fn users_see_only_namespaces_they_may_list() {
        let (_, _, body) = get("/", Some("viewer")).await;
        assert!(body.contains("shop-pr-7") || body.contains("acme/shop #7"));
        assert!(
            !body.contains("Top secret launch"),
            "another namespace leaked"
        );
        let (status, _, body) = get("/api/v1/environments", Some("viewer")).await;
        assert_eq!(status, StatusCode::OK);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: BTreeSet<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, BTreeSet::from(["shop-pr-7"]));
        // An environment of a namespace the user may not list is as good as absent.
        let (status, _, body) = get("/environments/team-b/secret-pr-9", Some("viewer")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!body.contains("Top secret launch"));
        let (status, _, _) = get("/api/v1/environments/team-b/secret-pr-9", Some("viewer")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, body) = get("/environments/team-a/shop-pr-7", Some("viewer")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("Conditions") && body.contains("Recent events"));
    }

    #[tokio::test]
    async fn strangers_get_403_and_the_unknown_get_401_and_nothing_either_way() {
        for uri in [
            "/",
            "/api/v1/environments",
            "/environments/team-a/shop-pr-7",
            "/live",
        ] {
            let (status, _, body) = get(uri, Some("stranger")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
            assert!(
                !body.contains("shop-pr-7") && !body.contains("alert"),
                "{uri}: {body}"
            );
            let (status, headers, body) = get(uri, Some("forged")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            assert!(headers.contains_key(header::WWW_AUTHENTICATE));
            assert!(!body.contains("shop-pr-7"), "{uri}: {body}");
            let (status, _, _) = get(uri, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        }
        let (_, _, body) = get("/", None).await;
        assert!(body.contains("name=\"token\""), "the sign-in form");
        assert!(body.contains("--audience previewd"));
    }

    #[tokio::test]
    async fn signing_in_sets_a_strict_cookie_that_later_requests_use() {
        let response = app()
            .oneshot(
                axum::http::Request::post("/login")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from("token=viewer"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(cookie.starts_with("previewd_token=viewer;"));
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let response = app()
            .oneshot(
                axum::http::Request::get("/")
                    .header(header::COOKIE, "previewd_token=viewer")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let refused = app()
            .oneshot(
                axum::http::Request::post("/login")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from("token=forged"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().get(header::SET_COOKIE).is_none());
    }

    #[tokio::test]
    async fn a_replica_without_caches_says_so() {
        let mut source = model::tests_support::source(vec![]);
        source.environments = Arc::new(std::sync::OnceLock::new());
        let state = DashboardState::new(
            source,
            Arc::new(Fake),
            AuthMode::Kubernetes,
            None,
            Duration::from_secs(1),
            CancellationToken::new(),
        );
        let response = router(state)
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))))
            .oneshot(
                axum::http::Request::get("/api/v1/environments")
                    .header(header::AUTHORIZATION, "Bearer viewer")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
