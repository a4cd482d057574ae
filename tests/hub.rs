//! The hub client against a local hub: a loopback HTTP server that serves a model
//! repository and a dataset repository with the endpoints and headers of the real hub
//! (revision listing, `resolve/` with `ETag` / `X-Linked-Etag` / `X-Linked-Size` /
//! `X-Repo-Commit`, a 302 to a CDN path for LFS files, `Range`), counting every request.
//! It can cut a file's first answer short or flip a byte of it.
//!
//! The dataset files are parquet written here from the real task files, and `qsched data
//! fetch` must turn them back into files the project's loader reads as the originals.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use qsched_hub::models::pull_model;
use qsched_hub::{Hub, HubConfig, RepoId};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use shared::TaskId;

use crate::procs::{bin, data_dir, text};

// ---------------------------------------------------------------------------------------
// The local hub.

struct HubFile {
    bytes: Vec<u8>,
    /// Stored in LFS: HEAD answers 302 to /cdn/<sha256> with X-Linked-* headers.
    lfs: bool,
}

struct HubRepo {
    /// `models` or `datasets`.
    kind: &'static str,
    id: String,
    commit: String,
    files: BTreeMap<String, HubFile>,
}

#[derive(Default)]
struct Faults {
    /// Files whose next GET sends only the first half of the body.
    truncate_once: HashSet<String>,
    /// Files served with one byte flipped (their digests stay the true ones).
    corrupt: HashSet<String>,
}

struct LocalHub {
    repos: Vec<HubRepo>,
    /// `METHOD path [range] [auth]`, one per request.
    log: Mutex<Vec<String>>,
    faults: Mutex<Faults>,
    base: Mutex<String>,
}

struct Server {
    state: Arc<LocalHub>,
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    fn start(repos: Vec<HubRepo>) -> Server {
        let state =
            Arc::new(LocalHub { repos, log: Mutex::default(), faults: Mutex::default(), base: Mutex::default() });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *state.base.lock().unwrap() = url.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new().fallback(serve).with_state(state.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Server { state, url, _shutdown: tx }
    }

    fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// GETs of `resolve/` URLs: one per file download (LFS ones then follow to /cdn/).
    fn file_gets(&self) -> usize {
        self.log().iter().filter(|l| l.starts_with("GET ") && l.contains("/resolve/")).count()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.state.faults.lock().unwrap()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn git_sha1(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

fn respond(status: StatusCode, headers: &[(&'static str, String)], body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    for (k, v) in headers {
        r.headers_mut().insert(*k, HeaderValue::from_str(v).unwrap());
    }
    r
}

fn not_found(code: &str) -> Response {
    respond(StatusCode::NOT_FOUND, &[("x-error-code", code.to_string())], b"not found".to_vec())
}

/// The bytes of a file as served (with a fault applied), honouring `Range: bytes=N-`.
fn content(state: &LocalHub, name: &str, bytes: &[u8], range: Option<&str>) -> Response {
    let mut bytes = bytes.to_vec();
    let mut faults = state.faults.lock().unwrap();
    if faults.corrupt.contains(name) {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
    }
    let start: usize = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .map_or(0, |n| n.parse().unwrap());
    if faults.truncate_once.remove(name) {
        // Half the body, streamed without a length: the client sees a clean end, short.
        let half = bytes[..bytes.len() / 2].to_vec();
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) });
        return Response::new(Body::from_stream(stream));
    }
    if start > 0 {
        let total = bytes.len();
        let headers = [("content-range", format!("bytes {start}-{}/{total}", total - 1))];
        return respond(StatusCode::PARTIAL_CONTENT, &headers, bytes[start..].to_vec());
    }
    respond(StatusCode::OK, &[], bytes)
}

async fn serve(State(state): State<Arc<LocalHub>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    state.log.lock().unwrap().push(format!(
        "{} {path}{query}{}{}",
        req.method(),
        range.as_deref().map(|r| format!(" range={r}")).unwrap_or_default(),
        auth.map(|a| format!(" auth={a}")).unwrap_or_default()
    ));
    let base = state.base.lock().unwrap().clone();
    let decoded = path.replace("%2F", "/");
    // /cdn/<sha256>: LFS content.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        for repo in &state.repos {
            for (name, f) in &repo.files {
                if f.lfs && sha256_hex(&f.bytes) == sha {
                    return content(&state, name, &f.bytes, range.as_deref());
                }
            }
        }
        return not_found("EntryNotFound");
    }
    for repo in &state.repos {
        let listing_prefix = format!("/api/{}/{}/revision/", repo.kind, repo.id);
        if let Some(rev) = decoded.strip_prefix(&listing_prefix) {
            if rev != "main" && rev != repo.commit {
                return not_found("RevisionNotFound");
            }
            let siblings: Vec<serde_json::Value> = repo
                .files
                .iter()
                .map(|(name, f)| {
                    let mut s = serde_json::json!({"rfilename": name, "size": f.bytes.len()});
                    if f.lfs {
                        s["lfs"] = serde_json::json!({"sha256": sha256_hex(&f.bytes), "size": f.bytes.len(), "pointerSize": 134});
                    }
                    s
                })
                .collect();
            let body = serde_json::json!({"id": repo.id, "sha": repo.commit, "siblings": siblings});
            return respond(
                StatusCode::OK,
                &[("content-type", "application/json".into())],
                body.to_string().into_bytes(),
            );
        }
        let url_prefix = if repo.kind == "datasets" { "/datasets/" } else { "/" };
        let resolve_prefix = format!("{url_prefix}{}/resolve/", repo.id);
        let Some(rest) = decoded.strip_prefix(&resolve_prefix) else { continue };
        let Some((_, name)) = rest.split_once('/').filter(|(rev, _)| *rev == repo.commit || *rev == "main") else {
            return not_found("RevisionNotFound");
        };
        let Some(f) = repo.files.get(name) else { return not_found("EntryNotFound") };
        let commit = ("x-repo-commit", repo.commit.clone());
        if f.lfs {
            let sha = sha256_hex(&f.bytes);
            let headers = [
                ("location", format!("{base}/cdn/{sha}")),
                ("x-linked-etag", format!("\"{sha}\"")),
                ("x-linked-size", f.bytes.len().to_string()),
                ("etag", "\"not-the-content-etag\"".to_string()),
                commit,
            ];
            return respond(StatusCode::FOUND, &headers, Vec::new());
        }
        let mut r = if req.method() == Method::HEAD {
            respond(StatusCode::OK, &[], f.bytes.clone())
        } else {
            content(&state, name, &f.bytes, range.as_deref())
        };
        r.headers_mut().insert("etag", HeaderValue::from_str(&format!("\"{}\"", git_sha1(&f.bytes))).unwrap());
        r.headers_mut().insert("x-repo-commit", HeaderValue::from_str(&repo.commit).unwrap());
        return r;
    }
    not_found("RepoNotFound")
}

// ---------------------------------------------------------------------------------------
// Repositories.

const MODEL: &str = "test-org/tiny-opt";
const MODEL_COMMIT: &str = "1111111111111111111111111111111111111111";
const GLUE: &str = "test-org/glue";
const GLUE_COMMIT: &str = "2222222222222222222222222222222222222222";
const SUPERGLUE: &str = "test-org/super_glue";
const SUPERGLUE_COMMIT: &str = "3333333333333333333333333333333333333333";

fn small(bytes: Vec<u8>) -> HubFile {
    HubFile { bytes, lfs: false }
}

fn lfs(bytes: Vec<u8>) -> HubFile {
    HubFile { bytes, lfs: true }
}

/// A config, a safetensors file of 256 KiB, the OPT tokenizer files, and files that
/// must not be fetched (other weight formats, a README).
fn model_repo() -> HubRepo {
    let weights: Vec<f32> = (0..65_536).map(|i| i as f32 * 0.001).collect();
    let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![256, 256], &bytes).unwrap();
    let safetensors = safetensors::serialize(vec![("model.decoder.embed.weight", view)], None).unwrap();
    let tokenizers = data_dir().join("tokenizers/opt");
    let mut files = BTreeMap::new();
    files.insert("config.json".into(), small(br#"{"model_type": "opt", "hidden_size": 256}"#.to_vec()));
    files.insert("model.safetensors".into(), lfs(safetensors));
    files.insert("vocab.json".into(), small(std::fs::read(tokenizers.join("vocab.json")).unwrap()));
    files.insert("merges.txt".into(), small(std::fs::read(tokenizers.join("merges.txt")).unwrap()));
    files.insert("pytorch_model.bin".into(), lfs(vec![7; 1000]));
    files.insert("README.md".into(), small(b"# tiny".to_vec()));
    HubRepo { kind: "models", id: MODEL.into(), commit: MODEL_COMMIT.into(), files }
}

fn config(server: &Server, cache: &Path, offline: bool) -> HubConfig {
    HubConfig { endpoint: server.url.clone(), token: Some("hf_testtoken".into()), cache_dir: cache.into(), offline }
}

fn model_id() -> RepoId {
    MODEL.parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// Models.

#[test]
fn model_pull_fills_the_standard_cache_and_a_second_pull_downloads_nothing() {
    let server = Server::start(vec![model_repo()]);
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(config(&server, tmp.path(), false)).unwrap();
    let mut seen = Vec::new();
    let snap = pull_model(&hub, &model_id(), &mut |p| seen.push((p.file.to_string(), p.done, p.total))).unwrap();

    assert_eq!(snap.commit, MODEL_COMMIT);
    let repo_dir = tmp.path().join("models--test-org--tiny-opt");
    assert_eq!(snap.dir, repo_dir.join("snapshots").join(MODEL_COMMIT));
    assert_eq!(snap.files, vec!["config.json", "merges.txt", "model.safetensors", "vocab.json"]);
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), MODEL_COMMIT);
    let repo = model_repo();
    for name in &snap.files {
        let path = snap.dir.join(name);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, repo.files[name].bytes, "{name}");
        // Each snapshot entry is a relative link to blobs/<etag>: the sha256 of an LFS
        // file, the git blob sha1 of a small one.
        let etag = if repo.files[name].lfs { sha256_hex(&bytes) } else { git_sha1(&bytes) };
        assert_eq!(std::fs::read_link(&path).unwrap(), PathBuf::from("../../blobs").join(&etag), "{name}");
        assert!(repo_dir.join("blobs").join(&etag).is_file());
    }
    let st = std::fs::read(snap.dir.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(tensors.tensor("model.decoder.embed.weight").unwrap().shape(), &[256, 256]);
    // Progress reached the end of every file.
    for name in &snap.files {
        let total = repo.files[name].bytes.len() as u64;
        assert!(seen.iter().any(|(f, done, t)| f == name && *done == total && *t == total), "{name}: {seen:?}");
    }

    let log = server.log();
    assert!(log.iter().all(|l| !l.contains("pytorch_model.bin") && !l.contains("README")), "{log:#?}");
    assert!(
        log.iter().any(|l| l.starts_with("GET /api/models/test-org/tiny-opt/revision/main?blobs=true")),
        "{log:#?}"
    );
    // The token goes to the hub; the signed CDN URL is on the same host here, so it may too.
    assert!(log.iter().filter(|l| !l.contains("/cdn/")).all(|l| l.ends_with("auth=Bearer hf_testtoken")), "{log:#?}");
    assert_eq!(server.file_gets(), 4);

    // Everything is cached: the second pull lists the revision and downloads nothing.
    let before = server.log().len();
    let again = pull_model(&hub, &model_id(), &mut |_| {}).unwrap();
    assert_eq!(again, snap);
    let new: Vec<String> = server.log()[before..].to_vec();
    assert_eq!(new.len(), 1, "{new:#?}");
    assert!(new[0].starts_with("GET /api/models/"), "{new:#?}");
}

#[test]
fn an_interrupted_download_resumes_from_where_it_stopped() {
    let server = Server::start(vec![model_repo()]);
    server.faults().truncate_once.insert("model.safetensors".into());
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(config(&server, tmp.path(), false)).unwrap();
    let snap = pull_model(&hub, &model_id(), &mut |_| {}).unwrap();
    let expected = &model_repo().files["model.safetensors"].bytes;
    assert_eq!(&std::fs::read(snap.dir.join("model.safetensors")).unwrap(), expected);
    let half = expected.len() / 2;
    let cdn: Vec<String> = server.log().into_iter().filter(|l| l.contains("/cdn/")).collect();
    assert_eq!(cdn.len(), 2, "{cdn:#?}");
    assert!(!cdn[0].contains("range="), "{cdn:#?}");
    assert!(cdn[1].contains(&format!("range=bytes={half}-")), "the second request resumes: {cdn:#?}");
    // No partial file is left behind.
    let blobs = tmp.path().join("models--test-org--tiny-opt/blobs");
    assert!(
        std::fs::read_dir(&blobs).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".incomplete"))
    );
}

#[test]
fn two_clients_on_one_cache_download_each_blob_once() {
    let server = Server::start(vec![model_repo()]);
    let tmp = tempfile::tempdir().unwrap();
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            let hub = Hub::new(config(&server, tmp.path(), false)).unwrap();
            std::thread::spawn(move || pull_model(&hub, &model_id(), &mut |_| {}))
        })
        .collect();
    let snaps: Vec<_> = pulls.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
    assert_eq!(snaps[0], snaps[1]);
    // The second client waits on the blob's lock and then finds the blob: one CDN GET.
    let cdn = server.log().into_iter().filter(|l| l.starts_with("GET /cdn/")).count();
    assert_eq!(cdn, 1, "{:#?}", server.log());
    assert_eq!(server.file_gets(), 4, "{:#?}", server.log());
    let expected = &model_repo().files["model.safetensors"].bytes;
    assert_eq!(&std::fs::read(snaps[0].dir.join("model.safetensors")).unwrap(), expected);
}

#[test]
fn a_corrupted_byte_is_rejected_and_nothing_is_cached() {
    let server = Server::start(vec![model_repo()]);
    let repo = model_repo();
    for (name, algorithm) in [("model.safetensors", "sha256"), ("config.json", "git-sha1")] {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::new(config(&server, tmp.path(), false)).unwrap();
        server.faults().corrupt.insert(name.into());
        let err = pull_model(&hub, &model_id(), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(algorithm) && err.contains("discarded"), "{err}");
        let etag =
            if repo.files[name].lfs { sha256_hex(&repo.files[name].bytes) } else { git_sha1(&repo.files[name].bytes) };
        let blobs = tmp.path().join("models--test-org--tiny-opt/blobs");
        assert!(!blobs.join(&etag).exists() && !blobs.join(format!("{etag}.incomplete")).exists(), "{name}");
        assert!(!tmp.path().join("models--test-org--tiny-opt/snapshots").join(MODEL_COMMIT).join(name).exists());
        server.faults().corrupt.clear();
        // With the fault gone the same cache completes.
        pull_model(&hub, &model_id(), &mut |_| {}).unwrap();
    }
}

#[test]
fn offline_mode_serves_the_cache_and_names_what_is_missing() {
    let server = Server::start(vec![model_repo()]);
    let tmp = tempfile::tempdir().unwrap();
    let online = Hub::new(config(&server, tmp.path(), false)).unwrap();
    let snap = pull_model(&online, &model_id(), &mut |_| {}).unwrap();

    let before = server.log().len();
    let offline = Hub::new(config(&server, tmp.path(), true)).unwrap();
    let cached = pull_model(&offline, &model_id(), &mut |_| {}).unwrap();
    assert_eq!(
        (cached.dir.clone(), cached.commit.clone(), cached.files.clone()),
        (snap.dir.clone(), snap.commit, snap.files)
    );
    // Also by commit, and from the binary with HF_HUB_OFFLINE=1.
    pull_model(&offline, &model_id().at(MODEL_COMMIT).unwrap(), &mut |_| {}).unwrap();
    let out = qsched_hub_cmd(&server, tmp.path(), true).args(["models", "pull", MODEL]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("snapshot {}\ncommit {MODEL_COMMIT}\n", snap.dir.display()));
    assert_eq!(server.log().len(), before, "offline mode made a request");

    // A file gone from the cache is an error naming repo, revision, file and the mode.
    std::fs::remove_file(snap.dir.join("model.safetensors")).unwrap();
    let err = pull_model(&offline, &model_id(), &mut |_| {}).unwrap_err().to_string();
    for needle in ["offline mode is on", "HF_HUB_OFFLINE=1", MODEL, "'main'", "'model.safetensors'"] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    let out = qsched_hub_cmd(&server, tmp.path(), true).args(["models", "pull", MODEL]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("'model.safetensors'") && text(&out).1.contains("offline mode is on"),
        "{}",
        text(&out).1
    );
    // An unknown revision has no ref in the cache.
    let err = pull_model(&offline, &model_id().at("v2").unwrap(), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("'v2'") && err.contains("refs/v2"), "{err}");
    assert_eq!(server.log().len(), before);
}

/// `qsched` with the hub's environment pointing at `server` and a cache under `home`.
fn qsched_hub_cmd(server: &Server, hf_home: &Path, offline: bool) -> Command {
    let mut cmd = Command::new(bin("qsched"));
    cmd.env("HF_ENDPOINT", &server.url)
        .env("HF_HUB_CACHE", hf_home)
        .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
        .env_remove("HF_TOKEN")
        .env_remove("HF_HOME");
    cmd
}

#[test]
fn models_pull_from_the_binary_and_its_errors() {
    let server = Server::start(vec![model_repo()]);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    // HF_HOME (not HF_HUB_CACHE) puts the cache under <HF_HOME>/hub.
    let out = Command::new(bin("qsched"))
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .args(["models", "pull", &format!("{MODEL}@main")])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let dir = home.join("hub/models--test-org--tiny-opt/snapshots").join(MODEL_COMMIT);
    assert_eq!(stdout, format!("snapshot {}\ncommit {MODEL_COMMIT}\n", dir.display()));
    assert!(dir.join("config.json").is_file());

    let fails = |args: &[&str], needle: &str| {
        let out = qsched_hub_cmd(&server, tmp.path(), false).args(args).output().unwrap();
        let (_, stderr) = text(&out);
        assert!(!out.status.success() && stderr.contains(needle), "{args:?}: {needle:?} not in {stderr}");
    };
    fails(&["models", "pull", "tiny-opt"], "invalid hub id 'tiny-opt'");
    fails(&["models", "pull", &format!("{MODEL}@nope")], "RevisionNotFound");
    fails(&["models", "pull", "test-org/absent"], "/api/models/test-org/absent/revision/main");
    // A hub that cannot be reached: the error names the URL.
    let out = qsched_hub_cmd(&server, tmp.path(), false)
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .args(["models", "pull", MODEL])
        .output()
        .unwrap();
    let stderr = text(&out).1;
    assert!(!out.status.success() && stderr.contains("request to http://127.0.0.1:1/api/models/"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// Datasets.

/// A parquet column, as `datasets` writes them (every column optional).
enum Col {
    Str(Vec<String>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    /// A struct of int32 fields (MultiRC's `idx`).
    Group(Vec<(&'static str, Vec<i32>)>),
}

fn parquet_bytes(columns: Vec<(&str, Col)>) -> Vec<u8> {
    let mut fields = String::new();
    for (name, col) in &columns {
        match col {
            Col::Str(_) => fields.push_str(&format!("optional binary {name} (UTF8); ")),
            Col::I64(_) => fields.push_str(&format!("optional int64 {name}; ")),
            Col::I32(_) => fields.push_str(&format!("optional int32 {name}; ")),
            Col::F32(_) => fields.push_str(&format!("optional float {name}; ")),
            Col::Group(members) => {
                let inner: String = members.iter().map(|(m, _)| format!("optional int32 {m}; ")).collect();
                fields.push_str(&format!("optional group {name} {{ {inner}}} "));
            }
        }
    }
    let schema =
        Arc::new(parquet::schema::parser::parse_message_type(&format!("message schema {{ {fields}}}")).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for (_, col) in columns {
        let leaves: Vec<(Col, i16)> = match col {
            Col::Group(members) => members.into_iter().map(|(_, v)| (Col::I32(v), 2)).collect(),
            other => vec![(other, 1)],
        };
        for (leaf, def) in leaves {
            let mut w = group.next_column().unwrap().unwrap();
            match leaf {
                Col::Str(v) => {
                    let values: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(s.as_str())).collect();
                    w.typed::<ByteArrayType>().write_batch(&values, Some(&vec![def; v.len()]), None).unwrap();
                }
                Col::I64(v) => {
                    w.typed::<Int64Type>().write_batch(&v, Some(&vec![def; v.len()]), None).unwrap();
                }
                Col::I32(v) => {
                    w.typed::<Int32Type>().write_batch(&v, Some(&vec![def; v.len()]), None).unwrap();
                }
                Col::F32(v) => {
                    w.typed::<FloatType>().write_batch(&v, Some(&vec![def; v.len()]), None).unwrap();
                }
                Col::Group(_) => unreachable!("flattened above"),
            }
            w.close().unwrap();
        }
    }
    group.close().unwrap();
    writer.close().unwrap();
    out
}

/// The data rows of a GLUE TSV file (header dropped), split on tabs.
fn tsv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|l| l.split('\t').map(str::to_string).collect()).collect()
}

fn sst2_parquet(path: &Path) -> Vec<u8> {
    let rows = tsv_rows(path);
    parquet_bytes(vec![
        ("sentence", Col::Str(rows.iter().map(|r| r[0].clone()).collect())),
        ("label", Col::I64(rows.iter().map(|r| r[1].parse().unwrap()).collect())),
        ("idx", Col::I32((0..rows.len() as i32).collect())),
    ])
}

fn rte_parquet(path: &Path) -> Vec<u8> {
    let rows = tsv_rows(path);
    let label = |s: &str| match s {
        "entailment" => 0,
        "not_entailment" => 1,
        other => panic!("{other}"),
    };
    parquet_bytes(vec![
        ("sentence1", Col::Str(rows.iter().map(|r| r[1].clone()).collect())),
        ("sentence2", Col::Str(rows.iter().map(|r| r[2].clone()).collect())),
        ("label", Col::I64(rows.iter().map(|r| label(&r[3])).collect())),
        ("idx", Col::I32(rows.iter().map(|r| r[0].parse().unwrap()).collect())),
    ])
}

fn stsb_parquet(path: &Path) -> Vec<u8> {
    let rows = tsv_rows(path);
    parquet_bytes(vec![
        ("sentence1", Col::Str(rows.iter().map(|r| r[7].clone()).collect())),
        ("sentence2", Col::Str(rows.iter().map(|r| r[8].clone()).collect())),
        ("label", Col::F32(rows.iter().map(|r| r[9].parse().unwrap()).collect())),
        ("idx", Col::I32(rows.iter().map(|r| r[0].parse().unwrap()).collect())),
    ])
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn cb_parquet(path: &Path) -> Vec<u8> {
    let rows = jsonl(path);
    let s = |k: &str| Col::Str(rows.iter().map(|r| r[k].as_str().unwrap().to_string()).collect());
    let names = ["entailment", "contradiction", "neutral"];
    parquet_bytes(vec![
        ("premise", s("premise")),
        ("hypothesis", s("hypothesis")),
        ("idx", Col::I32(rows.iter().map(|r| r["idx"].as_i64().unwrap() as i32).collect())),
        ("label", Col::I64(rows.iter().map(|r| names.iter().position(|n| r["label"] == *n).unwrap() as i64).collect())),
    ])
}

/// MultiRC flattened as `super_glue` stores it: one row per answer option.
fn multirc_parquet(path: &Path) -> Vec<u8> {
    let (mut paragraph, mut question, mut answer, mut label) = (vec![], vec![], vec![], vec![]);
    let (mut pi, mut qi, mut ai) = (vec![], vec![], vec![]);
    for p in jsonl(path) {
        for q in p["passage"]["questions"].as_array().unwrap() {
            for a in q["answers"].as_array().unwrap() {
                paragraph.push(p["passage"]["text"].as_str().unwrap().to_string());
                question.push(q["question"].as_str().unwrap().to_string());
                answer.push(a["text"].as_str().unwrap().to_string());
                label.push(a["label"].as_i64().unwrap());
                pi.push(p["idx"].as_i64().unwrap() as i32);
                qi.push(q["idx"].as_i64().unwrap() as i32);
                ai.push(a["idx"].as_i64().unwrap() as i32);
            }
        }
    }
    parquet_bytes(vec![
        ("paragraph", Col::Str(paragraph)),
        ("question", Col::Str(question)),
        ("answer", Col::Str(answer)),
        ("idx", Col::Group(vec![("paragraph", pi), ("question", qi), ("answer", ai)])),
        ("label", Col::I64(label)),
    ])
}

/// GLUE in `nyu-mll/glue`'s layout and SuperGLUE in the parquet-conversion layout, from
/// the real files. Train splits that the shared data lacks reuse the validation rows.
fn dataset_repos() -> Vec<HubRepo> {
    let glue = data_dir().join("glue");
    let mut g = BTreeMap::new();
    g.insert("README.md".into(), small(b"# glue".to_vec()));
    g.insert("sst2/train-00000-of-00001.parquet".into(), lfs(sst2_parquet(&glue.join("SST-2/train.tsv"))));
    g.insert("sst2/validation-00000-of-00001.parquet".into(), lfs(sst2_parquet(&glue.join("SST-2/dev.tsv"))));
    g.insert("sst2/test-00000-of-00001.parquet".into(), lfs(vec![0; 10]));
    g.insert("rte/train-00000-of-00001.parquet".into(), lfs(rte_parquet(&glue.join("RTE/train.tsv"))));
    g.insert("rte/validation-00000-of-00001.parquet".into(), lfs(rte_parquet(&glue.join("RTE/dev.tsv"))));
    g.insert("stsb/train-00000-of-00001.parquet".into(), lfs(stsb_parquet(&glue.join("STS-B/train.tsv"))));
    g.insert("stsb/validation-00000-of-00001.parquet".into(), lfs(stsb_parquet(&glue.join("STS-B/dev.tsv"))));
    let mut s = BTreeMap::new();
    s.insert("cb/train/0000.parquet".into(), lfs(cb_parquet(&glue.join("CB/train.jsonl"))));
    s.insert("cb/validation/0000.parquet".into(), lfs(cb_parquet(&glue.join("CB/dev.jsonl"))));
    s.insert("multirc/train/0000.parquet".into(), lfs(multirc_parquet(&glue.join("MultiRC/dev.jsonl"))));
    s.insert("multirc/validation/0000.parquet".into(), lfs(multirc_parquet(&glue.join("MultiRC/dev.jsonl"))));
    vec![
        HubRepo { kind: "datasets", id: GLUE.into(), commit: GLUE_COMMIT.into(), files: g },
        HubRepo { kind: "datasets", id: SUPERGLUE.into(), commit: SUPERGLUE_COMMIT.into(), files: s },
    ]
}

fn fetch_cmd(server: &Server, cache: &Path, data: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = qsched_hub_cmd(server, cache, false);
    cmd.args(["data", "fetch"]).args(args).args([
        "--data-dir",
        data.to_str().unwrap(),
        "--glue",
        GLUE,
        "--superglue",
        &format!("{SUPERGLUE}@main"),
    ]);
    cmd.output().unwrap()
}

#[test]
fn data_fetch_writes_files_the_loaders_read_as_the_originals() {
    use qsched_data::tasks::load_file;
    let server = Server::start(dataset_repos());
    let tmp = tempfile::tempdir().unwrap();
    let (cache, data) = (tmp.path().join("cache"), tmp.path().join("data"));
    let out = fetch_cmd(&server, &cache, &data, &["glue", "superglue", "--tasks", "sst2,rte,stsb,cb,multirc"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("wrote glue/SST-2/dev.tsv (872 rows)"), "{stderr}");
    assert!(stdout.contains("glue/MultiRC/dev.jsonl\t83 rows"), "{stdout}");

    let original = data_dir().join("glue");
    let fetched = data.join("glue");
    // (task, fetched file, the original it must load as)
    let pairs = [
        (TaskId::Sst2, "SST-2/dev.tsv", "SST-2/dev.tsv"),
        (TaskId::Sst2, "SST-2/train.tsv", "SST-2/train.tsv"),
        (TaskId::Rte, "RTE/dev.tsv", "RTE/dev.tsv"),
        (TaskId::Rte, "RTE/train.tsv", "RTE/train.tsv"),
        (TaskId::Cb, "CB/dev.jsonl", "CB/dev.jsonl"),
        (TaskId::Cb, "CB/train.jsonl", "CB/train.jsonl"),
        (TaskId::Multirc, "MultiRC/dev.jsonl", "MultiRC/dev.jsonl"),
        (TaskId::Multirc, "MultiRC/train.jsonl", "MultiRC/dev.jsonl"),
    ];
    for (task, got, want) in pairs {
        let got_examples = load_file(task, &fetched.join(got)).unwrap();
        let want_examples = load_file(task, &original.join(want)).unwrap();
        assert_eq!(got_examples.len(), want_examples.len(), "{got}");
        assert!(got_examples == want_examples, "{got}: examples differ from {want}");
    }
    // STS-B scores are float32 on the hub (as in `nyu-mll/glue`): a score with more
    // digits than float32 holds comes back rounded (dev line 1277: 2.33333333333333 →
    // 2.3333333). Everything else is equal.
    let got = load_file(TaskId::Stsb, &fetched.join("STS-B/dev.tsv")).unwrap();
    let want = load_file(TaskId::Stsb, &original.join("STS-B/dev.tsv")).unwrap();
    assert_eq!(got.len(), want.len());
    let mut rounded = 0;
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.line, &g.input), (w.line, &w.input));
        let (qsched_data::tasks::Label::Score(a), qsched_data::tasks::Label::Score(b)) = (g.label, w.label) else {
            panic!("{g:?}")
        };
        assert!((a - b).abs() < 1e-6, "line {}: {a} vs {b}", g.line);
        rounded += usize::from(a != b);
    }
    assert_eq!(rounded, 1, "only the one long score differs");
    // SST-2 is byte-identical (its two columns are all GLUE has).
    assert_eq!(
        std::fs::read(fetched.join("SST-2/dev.tsv")).unwrap(),
        std::fs::read(original.join("SST-2/dev.tsv")).unwrap()
    );
    // The whole task loads through the public loader.
    let task = qsched_data::tasks::load_task(TaskId::Rte, &data).unwrap();
    assert_eq!((task.train().unwrap().examples.len(), task.validation.len()), (2490, 277));

    // The manifest lists every file with its hash, rows and source.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("MANIFEST.json")).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), 10);
    for f in files {
        let bytes = std::fs::read(data.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(&bytes), "{f}");
        assert_eq!(f["bytes"].as_u64().unwrap(), bytes.len() as u64);
    }
    let dev = files.iter().find(|f| f["path"] == "glue/SST-2/dev.tsv").unwrap();
    assert_eq!(
        (&dev["rows"], &dev["repo"], &dev["revision"], &dev["commit"], &dev["split"]),
        (
            &serde_json::json!(872),
            &serde_json::json!(GLUE),
            &serde_json::json!("main"),
            &serde_json::json!(GLUE_COMMIT),
            &serde_json::json!("validation")
        )
    );
    assert_eq!(dev["parquet"], serde_json::json!(["sst2/validation-00000-of-00001.parquet"]));
    assert!(server.log().iter().all(|l| !l.contains("test-0000")), "the test split is never fetched");

    // Fetching again downloads no parquet file and rewrites the same files.
    let gets = server.file_gets();
    let out = fetch_cmd(&server, &cache, &data, &["glue", "--tasks", "sst2"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(server.file_gets(), gets);
    // Offline, from the cache alone.
    let mut cmd = qsched_hub_cmd(&server, &cache, true);
    let out = cmd
        .args(["data", "fetch", "glue", "--tasks", "rte", "--glue", GLUE, "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn data_fetch_refuses_what_it_cannot_do() {
    let server = Server::start(dataset_repos());
    let tmp = tempfile::tempdir().unwrap();
    let (cache, data) = (tmp.path().join("cache"), tmp.path().join("data"));
    let fails = |args: &[&str], needle: &str| {
        let out = fetch_cmd(&server, &cache, &data, args);
        let stderr = text(&out).1;
        assert!(!out.status.success() && stderr.contains(needle), "{args:?}: {needle:?} not in {stderr}");
    };
    fails(&["glue", "--tasks", "sst3"], "unknown task 'sst3'");
    fails(&["glu"], "unknown benchmark 'glu'");
    fails(&["glue", "--tasks", "cb"], "it is a superglue task");
    // The repository lacks the task's files.
    fails(&["glue", "--tasks", "qnli"], "has no parquet file for qnli train");
    // A file that was not fetched is not overwritten.
    std::fs::create_dir_all(data.join("glue/SST-2")).unwrap();
    std::fs::write(data.join("glue/SST-2/dev.tsv"), "sentence\tlabel\nmine .\t1\n").unwrap();
    fails(&["glue", "--tasks", "sst2"], "refusing to overwrite");
    assert_eq!(std::fs::read_to_string(data.join("glue/SST-2/dev.tsv")).unwrap(), "sentence\tlabel\nmine .\t1\n");
    // Offline with nothing cached names the repository and the mode.
    let fresh = tmp.path().join("data2");
    let mut cmd = qsched_hub_cmd(&server, &cache, true);
    let out =
        cmd.args(["data", "fetch", "glue", "--glue", GLUE, "--data-dir", fresh.to_str().unwrap()]).output().unwrap();
    let stderr = text(&out).1;
    assert!(!out.status.success() && stderr.contains("offline mode is on") && stderr.contains(GLUE), "{stderr}");
    // Without a data directory.
    let out = qsched_hub_cmd(&server, &cache, false)
        .env_remove("QSCHED_DATA_DIR")
        .args(["data", "fetch", "glue"])
        .output()
        .unwrap();
    assert!(text(&out).1.contains("pass --data-dir or set QSCHED_DATA_DIR"), "{}", text(&out).1);
}
