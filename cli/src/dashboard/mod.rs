//! `qsched dashboard`: a read-only web UI over the fleet's Redis (or the local store).
//!
//! The server is axum; the page is one HTML file, a script and a stylesheet compiled into
//! the binary with the charting library (uPlot, `assets/vendor/`), so it works on a host
//! without internet access and never loads anything from elsewhere. The page polls the
//! JSON endpoints below and redraws in place; the numbers come from [`views`], which
//! reads the store with the functions the commands use.
//!
//! Routes: `/` (the page), `/assets/*`, `/api/runs`, `/api/runs/{run}`,
//! `/api/runs/{run}/curves`, `/api/runs/{run}/results?metric=&baseline=`,
//! `/api/runs/{run}/figures` and `/api/runs/{run}/figures/{name}` (the `qsched plot`
//! figures as SVG), `/api/fleet`, `/api/config`, and `/metrics` (Prometheus gauges,
//! [`gauges`]). Who may read them is [`access`]'s decision.

pub mod access;
pub mod gauges;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::Mutex;

use shared::ModelId;
use shared::broker::BrokerAdmin;
use shared::local_store::LocalStore;
use shared::store::Store;

use access::{Access, Decision};
use views::TraceLinks;

/// Default listen address: loopback, so nothing is exposed unless asked for.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// Runs listed on the runs page.
const RUNS_LISTED: usize = 50;

/// How long open connections get to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(2);

/// Where the dashboard reads.
pub enum Source {
    /// The fleet: Redis, and the broker for queue depths (connected on demand, so a broker
    /// that is down when the dashboard starts shows up once it is back).
    Fleet {
        /// The fleet's store.
        store: Arc<dyn Store>,
        /// Connects to the broker.
        connect: Box<dyn Fn() -> BrokerFuture + Send + Sync>,
        /// Words for the page header, e.g. `redis://127.0.0.1:6379, prefix qsched`.
        described: String,
    },
    /// The embedded store of `submit --local`, opened for each request and closed after,
    /// so a `submit --local` can take it between requests.
    Local {
        /// The store file.
        path: PathBuf,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A broker connection being made.
pub type BrokerFuture = std::pin::Pin<Box<dyn Future<Output = Result<Arc<dyn BrokerAdmin>>> + Send>>;

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Fleet { described, .. } => described.clone(),
            Source::Local { path } => format!("local store {}", path.display()),
        }
    }
}

/// How the dashboard is served.
#[derive(Debug)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The token policy (required off loopback).
    pub access: Access,
    /// Trace links.
    pub traces: TraceLinks,
    /// Seconds between the page's refreshes.
    pub refresh_secs: u64,
}

struct AppState {
    source: Source,
    broker: Mutex<Option<Arc<dyn BrokerAdmin>>>,
    access: Access,
    traces: TraceLinks,
    refresh_secs: u64,
}

/// An error answered as JSON `{error}` with its status: 404 for an unknown run, 503 when
/// the store cannot be read, 400 for the rest (an unknown metric or baseline, results
/// that cannot be pooled).
struct ApiError(StatusCode, String);

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let status = if e.downcast_ref::<shared::Error>().is_some() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError(status, format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, [(header::CACHE_CONTROL, "no-store")], axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = std::result::Result<Response, ApiError>;

fn json_response(value: serde_json::Value) -> ApiResult {
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(value)).into_response())
}

impl AppState {
    /// The store to read for one request.
    fn store(&self) -> Result<Arc<dyn Store>> {
        match &self.source {
            Source::Fleet { store, .. } => Ok(store.clone()),
            Source::Local { path } => Ok(Arc::new(LocalStore::open(path)?)),
        }
    }

    /// The store, with an unknown `run` answered 404.
    async fn store_with_run(&self, run: &str) -> std::result::Result<Arc<dyn Store>, ApiError> {
        let store = self.store()?;
        if store.get_run(run).await.map_err(anyhow::Error::from)?.is_none() {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("run '{run}' not found in {}", self.source.describe()),
            ));
        }
        Ok(store)
    }

    /// The broker for queue depths: `None` for the local store, `Err(why)` while it cannot
    /// be reached (tried again on the next request).
    async fn broker(&self) -> Option<std::result::Result<Arc<dyn BrokerAdmin>, String>> {
        let Source::Fleet { connect, .. } = &self.source else { return None };
        let mut held = self.broker.lock().await;
        if let Some(b) = held.as_ref() {
            return Some(Ok(b.clone()));
        }
        match connect().await {
            Ok(b) => {
                *held = Some(b.clone());
                Some(Ok(b))
            }
            Err(e) => Some(Err(format!("{e:#}"))),
        }
    }

    /// Forgets a broker whose call failed, so the next request connects again.
    async fn drop_broker(&self) {
        *self.broker.lock().await = None;
    }
}

/// A bound dashboard, not yet serving.
#[derive(Debug)]
pub struct Dashboard {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    state: Arc<AppStateDebug>,
}

/// [`AppState`] behind a `Debug` that shows no token.
struct AppStateDebug(AppState);

impl std::fmt::Debug for AppStateDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").field("source", &self.0.source).field("access", &self.0.access).finish()
    }
}

impl Dashboard {
    /// Binds the address at once, so a taken port is an error before anything else.
    pub async fn bind(config: Config, source: Source) -> Result<Dashboard> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} for the dashboard", config.listen))?;
        let address = listener.local_addr().unwrap_or(config.listen);
        let state = AppState {
            source,
            broker: Mutex::new(None),
            access: config.access,
            traces: config.traces,
            refresh_secs: config.refresh_secs.max(1),
        };
        Ok(Dashboard { listener, address, state: Arc::new(AppStateDebug(state)) })
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` resolves, then gives open connections [`DRAIN`] to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let app = router(self.state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let server = std::future::IntoFuture::into_future(server);
        tokio::pin!(server, shutdown);
        let served = tokio::select! {
            served = &mut server => served,
            () = &mut shutdown => {
                let _ = stop.send(());
                tokio::time::timeout(DRAIN, &mut server).await.unwrap_or(Ok(()))
            }
        };
        served.with_context(|| format!("the dashboard on {} stopped", self.address))
    }
}

fn router(state: Arc<AppStateDebug>) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/config", get(config))
        .route("/api/runs", get(runs))
        .route("/api/runs/{run}", get(run))
        .route("/api/runs/{run}/curves", get(curves))
        .route("/api/runs/{run}/results", get(results))
        .route("/api/runs/{run}/figures", get(figures))
        .route("/api/runs/{run}/figures/{name}", get(figure))
        .route("/api/fleet", get(fleet))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Applies [`Access::decide`] to every request.
async fn authorize(State(state): State<Arc<AppStateDebug>>, request: Request, next: Next) -> Response {
    let access = &state.0.access;
    if !access.requires_token() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let bearer = text(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
    let cookie = text(header::COOKIE).and_then(|c| access::cookie_value(c, access::COOKIE));
    let query = request.uri().query().unwrap_or("");
    match access.decide(bearer, cookie, access::query_value(query, "token")) {
        Decision::Allow => next.run(request).await,
        Decision::SetCookie => {
            let rest = access::query_without(query, "token");
            let location = if rest.is_empty() {
                request.uri().path().to_owned()
            } else {
                format!("{}?{rest}", request.uri().path())
            };
            let mut response = StatusCode::SEE_OTHER.into_response();
            let headers = response.headers_mut();
            if let (Ok(loc), Some(Ok(cookie))) =
                (HeaderValue::from_str(&location), access.cookie().map(|c| HeaderValue::from_str(&c)))
            {
                headers.insert(header::LOCATION, loc);
                headers.insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Decision::Deny => (
            StatusCode::UNAUTHORIZED,
            "this dashboard needs its token: open it once as /?token=TOKEN (or send Authorization: Bearer TOKEN)\n",
        )
            .into_response(),
    }
}

/// The page and its assets, compiled in.
const INDEX_HTML: &str = include_str!("assets/index.html");
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("assets/app.js")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("assets/app.css")),
    ("uPlot.iife.min.js", "text/javascript; charset=utf-8", include_bytes!("assets/vendor/uPlot.iife.min.js")),
    ("uPlot.min.css", "text/css; charset=utf-8", include_bytes!("assets/vendor/uPlot.min.css")),
];

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX_HTML)
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, bytes)) => {
            ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, "no-cache")], *bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

async fn config(State(state): State<Arc<AppStateDebug>>) -> ApiResult {
    let s = &state.0;
    json_response(json!({
        "source": s.source.describe(),
        "local": matches!(s.source, Source::Local { .. }),
        "refresh_seconds": s.refresh_secs,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn runs(State(state): State<Arc<AppStateDebug>>) -> ApiResult {
    json_response(views::runs(state.0.store()?.as_ref(), RUNS_LISTED).await?)
}

async fn run(State(state): State<Arc<AppStateDebug>>, Path(run): Path<String>) -> ApiResult {
    let store = state.0.store_with_run(&run).await?;
    json_response(views::run(store.as_ref(), &run, &state.0.traces).await?)
}

async fn curves(State(state): State<Arc<AppStateDebug>>, Path(run): Path<String>) -> ApiResult {
    let store = state.0.store_with_run(&run).await?;
    json_response(views::curves(store.as_ref(), &run).await?)
}

/// Query of the results endpoint: the metric and the baseline, as `qsched compare` takes them.
#[derive(Debug, serde::Deserialize)]
struct ResultsQuery {
    metric: Option<String>,
    baseline: Option<String>,
}

async fn results(
    State(state): State<Arc<AppStateDebug>>,
    Path(run): Path<String>,
    Query(q): Query<ResultsQuery>,
) -> ApiResult {
    let store = state.0.store_with_run(&run).await?;
    let baseline = match q.baseline.as_deref().filter(|b| !b.is_empty()) {
        Some(b) => Some(b.parse::<ModelId>().map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?),
        None => None,
    };
    let metric = q.metric.as_deref().filter(|m| !m.is_empty());
    json_response(views::results(store.as_ref(), &run, metric, baseline).await?)
}

async fn figures(State(state): State<Arc<AppStateDebug>>, Path(run): Path<String>) -> ApiResult {
    let store = state.0.store_with_run(&run).await?;
    let (figures, skipped) = match crate::plot::figures_of_runs(store.as_ref(), &[run], None).await {
        Ok(drawn) => drawn,
        // A run without results has no figures yet: say why rather than fail.
        Err(e) => return json_response(json!({"figures": [], "skipped": [format!("{e:#}")]})),
    };
    let listed: Vec<_> = figures.iter().map(|f| json!({"name": f.name, "title": f.title})).collect();
    json_response(json!({"figures": listed, "skipped": skipped}))
}

async fn figure(State(state): State<Arc<AppStateDebug>>, Path((run, name)): Path<(String, String)>) -> ApiResult {
    let store = state.0.store_with_run(&run).await?;
    let name = name.strip_suffix(".svg").unwrap_or(&name).to_owned();
    let (figures, _) = crate::plot::figures_of_runs(store.as_ref(), std::slice::from_ref(&run), None).await?;
    let Some(figure) = figures.iter().find(|f| f.name == name) else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("run '{run}' has no figure '{name}'")));
    };
    let svg = crate::plot::draw::svg(figure)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-store")], svg).into_response())
}

async fn fleet(State(state): State<Arc<AppStateDebug>>) -> ApiResult {
    let s = &state.0;
    let store = s.store()?;
    let broker = s.broker().await;
    let view = views::fleet(
        store.as_ref(),
        broker.as_ref().map(|b| b.as_ref().map(|b| b.as_ref() as &dyn BrokerAdmin).map_err(Clone::clone)),
    )
    .await?;
    if view["queues"].get("error").is_some() {
        s.drop_broker().await;
    }
    json_response(view)
}

async fn metrics(State(state): State<Arc<AppStateDebug>>) -> ApiResult {
    let s = &state.0;
    let store = s.store()?;
    let broker = s.broker().await;
    let counts =
        gauges::count(store.as_ref(), broker.as_ref().and_then(|b| b.as_ref().ok()).map(|b| b.as_ref())).await?;
    if broker.as_ref().is_some_and(|b| b.is_ok()) && counts.queues.is_empty() {
        s.drop_broker().await;
    }
    Ok(([(header::CONTENT_TYPE, gauges::CONTENT_TYPE)], gauges::encode(&counts)?).into_response())
}

/// The headers of a response (for tests of the router without a socket).
#[cfg(test)]
fn header_of(headers: &axum::http::HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::HeaderMap;
    use shared::shard::{RunRecord, ShardResult, ShardState, unix_now};
    use shared::store::MemoryStore;
    use tower::ServiceExt;

    fn app(store: MemoryStore, token: Option<&str>) -> axum::Router {
        let listen: SocketAddr = if token.is_some() { "0.0.0.0:0" } else { "127.0.0.1:0" }.parse().unwrap();
        let state = AppState {
            source: Source::Fleet {
                store: Arc::new(store),
                connect: Box::new(|| Box::pin(async { anyhow::bail!("no broker in this test") })),
                described: "memory".into(),
            },
            broker: Mutex::new(None),
            access: Access::new(listen, token.map(str::to_owned)).unwrap(),
            traces: TraceLinks::default(),
            refresh_secs: 2,
        };
        router(Arc::new(AppStateDebug(state)))
    }

    async fn get(app: &axum::Router, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::builder().uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 24).await.unwrap();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn serves_the_page_the_assets_and_the_api() {
        let store = MemoryStore::new();
        store.put_run(&RunRecord::sample("r-20261201-dash", unix_now(), &["s1", "s2"])).await.unwrap();
        store.mark_published("r-20261201-dash", &["s2".to_owned()]).await.unwrap();
        store.set_state("r-20261201-dash", "s1", ShardState::Succeeded).await.unwrap();
        store.put_result(&ShardResult::sample("r-20261201-dash", "s1", "h:cpu:1")).await.unwrap();
        let app = app(store, None);

        let (status, headers, body) = get(&app, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(header_of(&headers, header::CONTENT_TYPE).unwrap().starts_with("text/html"));
        assert!(body.contains("/assets/app.js") && body.contains("/assets/uPlot.iife.min.js"));
        // Nothing is loaded from elsewhere.
        assert!(!body.contains("http://") && !body.contains("https://"), "{body}");
        for (name, _, _) in ASSETS {
            let (status, _, body) = get(&app, &format!("/assets/{name}"), &[]).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert!(!body.is_empty());
        }
        assert_eq!(get(&app, "/assets/nope.js", &[]).await.0, StatusCode::NOT_FOUND);

        let (status, _, body) = get(&app, "/api/runs", &[]).await;
        assert_eq!(status, StatusCode::OK);
        let runs: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(runs["runs"][0]["run"], "r-20261201-dash");
        assert_eq!(runs["runs"][0]["finished"], 1);

        let (status, _, body) = get(&app, "/api/runs/r-20261201-dash/results", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let results: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(results["rows"][0]["value"]["mean"], 0.1 + 0.2);
        assert_eq!(results["comparison"]["baseline"], "qwen3");

        let (status, _, body) = get(&app, "/api/runs/r-20261201-dash/results?metric=nosuch", &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("nosuch") && body.contains("accuracy"), "{body}");
        let (status, _, body) = get(&app, "/api/runs/r-20261201-dash/results?baseline=ft-opt", &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("ft-opt") && body.contains("qwen3"), "{body}");

        let (status, _, body) = get(&app, "/api/runs/r-nope", &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("r-nope"), "{body}");

        // The broker is unreachable: the fleet page says so rather than showing zeros.
        let (status, _, body) = get(&app, "/api/fleet", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("no broker in this test"), "{body}");

        let (status, headers, body) = get(&app, "/metrics", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header_of(&headers, header::CONTENT_TYPE), Some(gauges::CONTENT_TYPE));
        assert!(body.contains("qsched_shards{state=\"queued\"} 1"), "{body}");
    }

    #[tokio::test]
    async fn a_token_guards_every_route_and_moves_from_the_url_to_a_cookie() {
        let token = "0123456789abcdef0123";
        let app = app(MemoryStore::new(), Some(token));
        for uri in ["/", "/api/runs", "/metrics", "/assets/app.js"] {
            assert_eq!(get(&app, uri, &[]).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        }
        let (status, headers, _) = get(&app, &format!("/?token={token}"), &[]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(header_of(&headers, header::LOCATION), Some("/"));
        let cookie = header_of(&headers, header::SET_COOKIE).unwrap().split(';').next().unwrap().to_owned();
        assert_eq!(get(&app, "/api/runs", &[("cookie", &cookie)]).await.0, StatusCode::OK);
        let bearer = format!("Bearer {token}");
        assert_eq!(get(&app, "/metrics", &[("authorization", &bearer)]).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/api/runs", &[("authorization", "Bearer wrong")]).await.0, StatusCode::UNAUTHORIZED);
    }
}
