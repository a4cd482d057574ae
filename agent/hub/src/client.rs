//! The blocking HTTP client: list a revision, and download files into the cache.
//!
//! Hub endpoints and headers used (the ones `huggingface_hub`'s `file_download.py` and
//! `hf_api.py` use):
//! - `GET {endpoint}/api/{models|datasets}/{org}/{name}/revision/{rev}?blobs=true` →
//!   JSON `{"sha": <commit>, "siblings": [{"rfilename", "size", "lfs": {"sha256", "size"}}]}`.
//!   The revision is percent-encoded as one segment (`refs%2Fconvert%2Fparquet`).
//! - `HEAD {endpoint}/[datasets/]{org}/{name}/resolve/{commit}/{file}`, redirects not
//!   followed: a small file answers 200 with `ETag` (its git blob sha1) and
//!   `Content-Length`; an LFS file answers 302 to a CDN with `X-Linked-Etag` (its sha256)
//!   and `X-Linked-Size`. Both carry `X-Repo-Commit`. A relative redirect (a renamed
//!   repository) is followed, an absolute one is the CDN and is not.
//! - `GET` of the same URL, redirects followed, with `Range: bytes=N-` to resume.
//! - `Authorization: Bearer $HF_TOKEN` on every request to the endpoint; the client drops
//!   it on a redirect to another host (the CDN's URL is signed).
//!
//! Why not the `hf-hub` crate: in the version of its source read for this decision
//! (`src/api/sync.rs`), the blocking API reads neither `HF_HUB_OFFLINE` nor `HF_ENDPOINT`
//! (the endpoint is a builder setting), checks no downloaded byte against the hub's sha256
//! or size, downloads into a temporary file that is not resumed, has no lock between
//! processes, and brings `ureq` with a TLS stack of its own. Those are the properties this
//! crate exists for; on top of `reqwest`, which the workspace already builds, they fit in
//! this one module.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::cache::{RepoCache, check_repo_file};
use crate::config::HubConfig;
use crate::error::{Error, Result};
use crate::id::{RepoId, RepoKind, is_commit_hash};

/// How often one file's download is tried before its error is returned. Each retry
/// resumes from the bytes already on disk.
const ATTEMPTS: u32 = 4;

/// One file of a repository, as listed by the hub.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RepoFile {
    /// Path inside the repository, `/`-separated.
    pub rfilename: String,
    /// Size in bytes, when the listing says.
    #[serde(default)]
    pub size: Option<u64>,
    /// LFS pointer details, for files stored in LFS.
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

/// LFS details of a listed file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LfsInfo {
    /// sha256 of the file's content.
    pub sha256: String,
    /// Size of the file's content.
    pub size: u64,
}

/// A revision of a repository as listed by the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The commit the revision resolved to.
    pub commit: String,
    /// Every file at that commit.
    pub files: Vec<RepoFile>,
}

#[derive(Deserialize)]
struct ListingJson {
    sha: String,
    siblings: Vec<RepoFile>,
}

/// What the hub says about one file before it is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The blob name: `X-Linked-Etag` or `ETag`, without quotes and `W/`.
    pub etag: String,
    /// Size in bytes (`X-Linked-Size` or `Content-Length`).
    pub size: u64,
    /// The digest the bytes must have.
    pub digest: Checksum,
    /// The URL the file is downloaded from.
    pub url: String,
}

/// The digest a downloaded file is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// sha256 of the content (LFS files: the ETag or the listing's `lfs.sha256`).
    Sha256(String),
    /// The git blob id, sha1 of `blob <size>\0<content>` (small files' ETag).
    GitSha1(String),
    /// The hub gave nothing to check but the size.
    SizeOnly,
}

/// Progress of one file's download, handed to the caller's callback.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The file in the repository.
    pub file: &'a str,
    /// Bytes on disk so far (a resumed download starts above zero).
    pub done: u64,
    /// The file's size.
    pub total: u64,
}

/// The progress callback type.
pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress<'_>);

/// A hub client over one cache.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    /// Follows redirects: downloads (the CDN's 302).
    follow: Client,
    /// Follows none: HEAD, whose 302 carries the LFS headers.
    manual: Client,
}

impl Hub {
    /// A client with `config`. Building it makes no request.
    pub fn new(config: HubConfig) -> Result<Self> {
        let build = |redirect: reqwest::redirect::Policy| -> Result<Client> {
            Client::builder()
                .user_agent(concat!("qsched-hub/", env!("CARGO_PKG_VERSION")))
                .tls_backend_preconfigured(tls_config())
                .redirect(redirect)
                .connect_timeout(Duration::from_secs(20))
                // Per read, not for the whole body: a multi-GB download only has to keep moving.
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|source| Error::Http { url: config.endpoint.clone(), source: source.without_url() })
        };
        Ok(Hub {
            follow: build(reqwest::redirect::Policy::limited(10))?,
            manual: build(reqwest::redirect::Policy::none())?,
            config,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The cache folder of `repo`.
    pub fn cache(&self, repo: &RepoId) -> RepoCache {
        RepoCache::new(&self.config.cache_dir, repo)
    }

    /// `GET /api/{kind}/{repo}/revision/{rev}`: the commit and the files. Records the
    /// revision's commit under `refs/`. Fails in offline mode.
    pub fn list(&self, repo: &RepoId) -> Result<Listing> {
        self.refuse_offline(repo, "the file listing")?;
        let url = format!(
            "{}/api/{}/{}/revision/{}?blobs=true",
            self.config.endpoint,
            repo.kind.plural(),
            repo.path(),
            encode_segment(repo.revision())
        );
        let response = self.send(self.manual.get(&url), &url)?;
        let body = response.bytes().map_err(|source| Error::Http { url: url.clone(), source: source.without_url() })?;
        let listing: ListingJson =
            serde_json::from_slice(&body).map_err(|source| Error::Json { what: url.clone(), source })?;
        if !is_commit_hash(&listing.sha) {
            return Err(Error::Protocol { url, message: format!("'sha' is not a commit id: {:?}", listing.sha) });
        }
        for f in &listing.siblings {
            check_repo_file(&repo.path(), &f.rfilename)?;
        }
        if repo.revision() != listing.sha {
            self.cache(repo).write_ref(repo.revision(), &listing.sha)?;
        }
        Ok(Listing { commit: listing.sha, files: listing.siblings })
    }

    /// The commit of `repo`'s revision from the cache alone: a commit id is itself, a
    /// branch or tag is read from `refs/`. Used in offline mode.
    pub fn cached_commit(&self, repo: &RepoId) -> Result<String> {
        let rev = repo.revision();
        if is_commit_hash(rev) {
            return Ok(rev.to_string());
        }
        let cache = self.cache(repo);
        cache.read_ref(rev)?.ok_or_else(|| Error::Offline {
            repo: repo.path(),
            revision: rev.to_string(),
            what: format!("the commit of the revision (no {})", cache.ref_file(rev).display()),
            cache: cache.dir().to_path_buf(),
        })
    }

    /// The file's path in the snapshot of `commit` if it is cached already.
    pub fn cached_file(&self, repo: &RepoId, commit: &str, file: &str) -> Result<Option<PathBuf>> {
        let path = self.cache(repo).snapshot_file(commit, file)?;
        // `exists` follows the symlink: a link whose blob was deleted is not a cached file.
        Ok(path.exists().then_some(path))
    }

    /// The cached file, or in offline mode an error naming it.
    pub fn require_cached(&self, repo: &RepoId, commit: &str, file: &str) -> Result<PathBuf> {
        self.cached_file(repo, commit, file)?.ok_or_else(|| Error::Offline {
            repo: repo.path(),
            revision: repo.revision().to_string(),
            what: format!("file '{file}' (commit {commit})"),
            cache: self.cache(repo).dir().to_path_buf(),
        })
    }

    /// Makes `file` of `repo` at `commit` available in the snapshot folder, downloading it
    /// unless it is cached, and returns its path there. The download is resumed from an
    /// earlier partial file, checked against the hub's size and digest, and renamed into
    /// `blobs/` only when it is whole; a per-blob lock lets several processes on one host
    /// share the cache (the second waits, then finds the blob).
    pub fn download(&self, repo: &RepoId, commit: &str, file: &str, progress: ProgressFn<'_>) -> Result<PathBuf> {
        if let Some(path) = self.cached_file(repo, commit, file)? {
            return Ok(path);
        }
        if self.config.offline {
            return self.require_cached(repo, commit, file);
        }
        let meta = self.file_meta(repo, commit, file)?;
        let cache = self.cache(repo);
        if !cache.blob(&meta.etag).is_file() {
            self.fetch_blob(&cache, file, &meta, progress)?;
        }
        cache.link(commit, file, &meta.etag)
    }

    /// `HEAD …/resolve/{commit}/{file}`: ETag, size and digest of one file.
    pub fn file_meta(&self, repo: &RepoId, commit: &str, file: &str) -> Result<FileMeta> {
        self.refuse_offline(repo, &format!("metadata of '{file}'"))?;
        check_repo_file(&repo.path(), file)?;
        let url = resolve_url(&self.config.endpoint, repo, commit, file);
        let mut head_url = url.clone();
        let mut redirects = 0;
        let response = loop {
            let response =
                self.send_any(self.manual.head(&head_url).header(header::ACCEPT_ENCODING, "identity"), &head_url)?;
            let status = response.status();
            if status.is_redirection() {
                let location = header_str(response.headers(), header::LOCATION.as_str());
                // A relative redirect stays on the hub (a renamed repository): follow it.
                // An absolute one is the CDN of an LFS file: its headers are the answer.
                if let Some(loc) = location.filter(|l| l.starts_with('/')) {
                    redirects += 1;
                    if redirects > 5 {
                        return Err(Error::Protocol { url, message: "more than 5 redirects".into() });
                    }
                    head_url = format!("{}{loc}", self.config.endpoint);
                    continue;
                }
                break response;
            }
            if !status.is_success() {
                return Err(status_error(&head_url, &response));
            }
            break response;
        };
        let headers = response.headers();
        let etag = header_str(headers, "x-linked-etag")
            .or_else(|| header_str(headers, header::ETAG.as_str()))
            .map(normalise_etag)
            .ok_or_else(|| Error::Protocol { url: url.clone(), message: "no ETag or X-Linked-Etag header".into() })?;
        if etag.is_empty() || etag.contains(['/', '\\', '.']) {
            return Err(Error::Protocol { url, message: format!("unusable ETag {etag:?}") });
        }
        let size = header_str(headers, "x-linked-size")
            .or_else(|| header_str(headers, header::CONTENT_LENGTH.as_str()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Error::Protocol {
                url: url.clone(),
                message: "no X-Linked-Size or Content-Length".into(),
            })?;
        if let Some(served) = header_str(headers, "x-repo-commit")
            && is_commit_hash(&served)
            && served != commit
        {
            return Err(Error::Protocol { url, message: format!("served commit {served}, asked for {commit}") });
        }
        let digest = digest_for(&etag);
        Ok(FileMeta { etag, size, digest, url })
    }

    fn fetch_blob(&self, cache: &RepoCache, file: &str, meta: &FileMeta, progress: ProgressFn<'_>) -> Result<()> {
        let lock_path = cache.lock(&meta.etag);
        let blob = cache.blob(&meta.etag);
        for dir in [lock_path.parent(), blob.parent()].into_iter().flatten() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("cannot open", &lock_path, e))?;
        // Blocks while another process downloads the same blob; released on drop.
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("cannot lock", &lock_path, e.into()))?;
        if blob.is_file() {
            return Ok(());
        }
        let partial = cache.incomplete(&meta.etag);
        let mut last_error = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 * u64::from(attempt)));
            }
            match self.fetch_once(&partial, file, meta, progress) {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(file, url = %meta.url, error = %e, attempt, "download interrupted; resuming");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last_error {
            return Err(e);
        }
        verify(&partial, file, meta)?;
        std::fs::rename(&partial, &blob).map_err(|e| Error::io("cannot rename", &partial, e))
    }

    /// One GET, appended to the partial file from its current length. Returns a transient
    /// error when the body ended early, so the caller resumes.
    fn fetch_once(&self, partial: &Path, file: &str, meta: &FileMeta, progress: ProgressFn<'_>) -> Result<()> {
        let mut out = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .map_err(|e| Error::io("cannot open", partial, e))?;
        let mut have = out.metadata().map_err(|e| Error::io("cannot stat", partial, e))?.len();
        if have > meta.size {
            out.set_len(0).map_err(|e| Error::io("cannot truncate", partial, e))?;
            have = 0;
        }
        if have == meta.size {
            return Ok(());
        }
        let mut request = self.follow.get(&meta.url).header(header::ACCEPT_ENCODING, "identity");
        if have > 0 {
            request = request.header(header::RANGE, format!("bytes={have}-"));
        }
        let mut response = self.send(request, &meta.url)?;
        match response.status().as_u16() {
            206 => {
                let start = header_str(response.headers(), header::CONTENT_RANGE.as_str())
                    .and_then(|r| content_range_start(&r));
                if start != Some(have) {
                    return Err(Error::Protocol {
                        url: meta.url.clone(),
                        message: format!("asked for bytes from {have}, the answer starts at {start:?}"),
                    });
                }
            }
            // The server ignored the range: start over.
            _ => {
                out.set_len(0).map_err(|e| Error::io("cannot truncate", partial, e))?;
                have = 0;
            }
        }
        out.seek(std::io::SeekFrom::Start(have)).map_err(|e| Error::io("cannot seek", partial, e))?;
        progress(Progress { file, done: have, total: meta.size });
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match response.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    out.flush().map_err(|e| Error::io("cannot write", partial, e))?;
                    return Err(read_error(&meta.url, have, meta.size, e));
                }
            };
            out.write_all(&buf[..n]).map_err(|e| Error::io("cannot write", partial, e))?;
            have += n as u64;
            progress(Progress { file, done: have, total: meta.size });
            if have > meta.size {
                break;
            }
        }
        out.sync_all().map_err(|e| Error::io("cannot sync", partial, e))?;
        if have < meta.size {
            return Err(Error::Interrupted {
                url: meta.url.clone(),
                got: have,
                expected: meta.size,
                reason: "the body ended early".into(),
            });
        }
        Ok(())
    }

    fn refuse_offline(&self, repo: &RepoId, what: &str) -> Result<()> {
        if self.config.offline {
            return Err(Error::Offline {
                repo: repo.path(),
                revision: repo.revision().to_string(),
                what: format!("{what} (it needs the network)"),
                cache: self.cache(repo).dir().to_path_buf(),
            });
        }
        Ok(())
    }

    fn authorised(&self, request: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.config.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends, and turns an error status into [`Error::Status`].
    fn send(&self, request: reqwest::blocking::RequestBuilder, url: &str) -> Result<Response> {
        let response = self.send_any(request, url)?;
        if response.status().is_success() { Ok(response) } else { Err(status_error(url, &response)) }
    }

    fn send_any(&self, request: reqwest::blocking::RequestBuilder, url: &str) -> Result<Response> {
        self.authorised(request)
            .send()
            .map_err(|source| Error::Http { url: url.to_string(), source: source.without_url() })
    }
}

/// TLS through rustls with the ring provider and the system's roots. An empty root store
/// (no CA bundle on the host) only fails https requests, with the TLS error in the chain.
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, errors = native.errors.len(), "system CA certificates");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    // The ring provider supports the default versions; `expect` guards that invariant.
    let mut config = builder
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn status_error(url: &str, response: &Response) -> Error {
    let mut err = Error::status(url, response.status().as_u16());
    // The hub names the cause (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).
    if let (Error::Status { hint, .. }, Some(code)) = (&mut err, header_str(response.headers(), "x-error-code")) {
        let message = header_str(response.headers(), "x-error-message").unwrap_or_default();
        *hint = format!("{hint} [{code}{}{message}]", if message.is_empty() { "" } else { ": " });
    }
    err
}

fn read_error(url: &str, got: u64, expected: u64, e: std::io::Error) -> Error {
    // reqwest wraps its own error in the io::Error of `Read`; keep it as the source.
    let reason = e.to_string();
    match e.into_inner().map(|inner| inner.downcast::<reqwest::Error>()) {
        Some(Ok(source)) => Error::Http { url: url.to_string(), source: source.without_url() },
        _ => Error::Interrupted { url: url.to_string(), got, expected, reason },
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `W/"abc"` → `abc`.
pub fn normalise_etag(raw: String) -> String {
    raw.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// What an ETag lets us check: 64 hex digits are a sha256, 40 a git blob sha1.
pub fn digest_for(etag: &str) -> Checksum {
    let hex = |n| etag.len() == n && etag.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(64) {
        Checksum::Sha256(etag.to_ascii_lowercase())
    } else if hex(40) {
        Checksum::GitSha1(etag.to_ascii_lowercase())
    } else {
        Checksum::SizeOnly
    }
}

/// `bytes 100-199/200` → 100.
fn content_range_start(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// The file's URL under `resolve/`, each path segment percent-encoded.
pub fn resolve_url(endpoint: &str, repo: &RepoId, revision: &str, file: &str) -> String {
    let prefix = match repo.kind {
        RepoKind::Model => "",
        RepoKind::Dataset => "datasets/",
    };
    let file: Vec<String> = file.split('/').map(encode_segment).collect();
    format!("{endpoint}/{prefix}{}/resolve/{}/{}", repo.path(), encode_segment(revision), file.join("/"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (so `/` too).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks size and digest of the finished partial file; deletes it when they are wrong.
fn verify(partial: &Path, file: &str, meta: &FileMeta) -> Result<()> {
    let fail = |e: Error| {
        let _ = std::fs::remove_file(partial);
        e
    };
    let size = std::fs::metadata(partial).map_err(|e| Error::io("cannot stat", partial, e))?.len();
    if size != meta.size {
        return Err(fail(Error::SizeMismatch {
            file: file.into(),
            url: meta.url.clone(),
            expected: meta.size,
            got: size,
        }));
    }
    let (algorithm, expected, got) = match &meta.digest {
        Checksum::SizeOnly => return Ok(()),
        Checksum::Sha256(expected) => ("sha256", expected, hash_file::<Sha256>(partial, None)?),
        Checksum::GitSha1(expected) => ("git-sha1", expected, hash_file::<Sha1>(partial, Some(size))?),
    };
    if &got != expected {
        return Err(fail(Error::ChecksumMismatch {
            file: file.into(),
            url: meta.url.clone(),
            algorithm,
            expected: expected.clone(),
            got,
        }));
    }
    Ok(())
}

/// Hex digest of a file; with `git_blob_size`, of git's `blob <size>\0` header and the file.
pub fn hash_file<D: Digest>(path: &Path, git_blob_size: Option<u64>) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut hasher = D::new();
    if let Some(size) = git_blob_size {
        hasher.update(format!("blob {size}\0").as_bytes());
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex sha256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_revisions_and_file_segments() {
        let model: RepoId = "Qwen/Qwen3-0.6B".parse().unwrap();
        assert_eq!(
            resolve_url("https://huggingface.co", &model, "main", "config.json"),
            "https://huggingface.co/Qwen/Qwen3-0.6B/resolve/main/config.json"
        );
        let ds = RepoId::parse("aps/super_glue", RepoKind::Dataset).unwrap();
        assert_eq!(
            resolve_url("http://h", &ds, "refs/convert/parquet", "wsc.fixed/train/0000.parquet"),
            "http://h/datasets/aps/super_glue/resolve/refs%2Fconvert%2Fparquet/wsc.fixed/train/0000.parquet"
        );
        assert_eq!(encode_segment("a b+c"), "a%20b%2Bc");
    }

    #[test]
    fn etags_and_digests() {
        assert_eq!(normalise_etag("W/\"abc\"".into()), "abc");
        let sha = "a".repeat(64);
        assert_eq!(digest_for(&sha), Checksum::Sha256(sha.clone()));
        assert_eq!(digest_for(&"b".repeat(40)), Checksum::GitSha1("b".repeat(40)));
        assert_eq!(digest_for("xyz-1"), Checksum::SizeOnly);
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("items 1-2"), None);
    }

    #[test]
    fn git_blob_sha1_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"hello\n").unwrap();
        assert_eq!(hash_file::<Sha1>(&path, Some(6)).unwrap(), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            hash_file::<Sha256>(&path, None).unwrap(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
    }

    #[test]
    fn offline_requests_fail_before_the_network() {
        let tmp = tempfile::tempdir().unwrap();
        let config = HubConfig {
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            cache_dir: tmp.path().into(),
            offline: true,
        };
        let hub = Hub::new(config).unwrap();
        let repo: RepoId = "o/n".parse().unwrap();
        let err = hub.list(&repo).unwrap_err().to_string();
        assert!(err.contains("offline mode is on") && err.contains("o/n") && err.contains("'main'"), "{err}");
        let err = hub.cached_commit(&repo).unwrap_err().to_string();
        assert!(err.contains("refs/main"), "{err}");
        let commit = "c".repeat(40);
        let err = hub.download(&repo, &commit, "config.json", &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("file 'config.json'") && err.contains("HF_HUB_OFFLINE=1"), "{err}");
    }
}
