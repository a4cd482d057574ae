//! The harness: where the services are, unique names per test, fixtures that delete what
//! a test created even when it panics, and a private `redis-server` for fault tests.

use std::net::TcpListener;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shared::amqp::{AmqpBroker, AmqpConfig};
use shared::broker::Broker;
use shared::redis_store::{RedisConfig, RedisStore};

/// The RabbitMQ under test (`QSCHED_AMQP_URL`, default the CI broker).
pub fn amqp_url() -> String {
    std::env::var("QSCHED_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The Redis under test (`QSCHED_REDIS_URL`, default the CI server).
pub fn redis_url() -> String {
    std::env::var("QSCHED_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test (or concurrent run) uses: `t-<pid>-<nanos>-<name>`.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("t-{}-{nanos}-{name}", std::process::id())
}

/// Runs an async cleanup to completion from `Drop`, on a thread with its own runtime (the
/// test's runtime may be shutting down, or the test may have panicked).
fn cleanup_blocking<F, Fut>(what: String, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = shared::Result<()>>,
{
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
        if let Err(e) = rt.block_on(f()) {
            eprintln!("cleanup of {what} failed: {e}");
        }
    })
    .join();
    if joined.is_err() {
        eprintln!("cleanup thread panicked");
    }
}

/// A broker with its own prefix and declared topology; deleted on drop.
pub struct TestBroker {
    pub broker: AmqpBroker,
    pub config: AmqpConfig,
}

impl TestBroker {
    /// Delivery limit 3 and otherwise default settings.
    pub async fn new(name: &str) -> Self {
        Self::with(name, |_| {}).await
    }

    /// Adjust the configuration before connecting.
    pub async fn with(name: &str, adjust: impl FnOnce(&mut AmqpConfig)) -> Self {
        let mut config = AmqpConfig::new(amqp_url()).with_prefix(unique_prefix(name));
        adjust(&mut config);
        let broker = AmqpBroker::connect(config.clone()).await.expect("connect to RabbitMQ");
        broker.declare().await.expect("declare topology");
        TestBroker { broker, config }
    }

    /// Another connection to the same topology (an agent in another process).
    pub async fn another_connection(&self) -> AmqpBroker {
        AmqpBroker::connect(self.config.clone()).await.expect("second connection")
    }
}

impl Deref for TestBroker {
    type Target = AmqpBroker;
    fn deref(&self) -> &AmqpBroker {
        &self.broker
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let config = self.config.clone();
        cleanup_blocking(format!("AMQP prefix {}", config.prefix), move || async move {
            AmqpBroker::connect(config).await?.delete_topology().await
        });
    }
}

/// A store with its own key prefix; its keys are deleted on drop.
pub struct TestStore {
    pub store: RedisStore,
    pub config: RedisConfig,
}

impl TestStore {
    pub async fn new(name: &str) -> Self {
        let config = RedisConfig::new(redis_url()).with_prefix(unique_prefix(name));
        let store = RedisStore::connect_with(config.clone()).await.expect("connect to Redis");
        TestStore { store, config }
    }

    /// A plain connection for inspecting raw keys.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.config.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl Deref for TestStore {
    type Target = RedisStore;
    fn deref(&self) -> &RedisStore {
        &self.store
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let config = self.config.clone();
        cleanup_blocking(format!("Redis prefix {}", config.prefix), move || async move {
            RedisStore::connect_with(config).await?.delete_prefix().await.map(|_| ())
        });
    }
}

/// Every file below `dir` (path relative to it) with its contents, to show that nothing
/// there changed.
pub fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A free TCP port on loopback (bound and released; fine for a test that starts a server
/// on it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost` (made with the `openssl` command), as a lab's broker and Redis would use.
/// Files in its folder: `ca.pem`, `server.pem`, `server.key`.
#[derive(Clone)]
pub struct TestCa {
    dir: std::sync::Arc<tempfile::TempDir>,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=qsched test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        TestCa { dir: std::sync::Arc::new(dir) }
    }

    /// The CA certificate clients are told to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A `redis-server` of our own, killed on drop; without persistence unless started with
/// [`PrivateRedis::start_with_aof`].
pub struct PrivateRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    aof: bool,
    /// A TLS port beside the plain one, with the certificate of [`TestCa`].
    tls: Option<(u16, TestCa)>,
}

impl PrivateRedis {
    fn binary() -> PathBuf {
        std::env::var_os("QSCHED_REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
    }

    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Self {
        let mut r =
            PrivateRedis { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None, aof: false, tls: None };
        r.restart().await;
        r
    }

    /// Starts a server that also listens for TLS (`rediss://`, see [`PrivateRedis::tls_url`])
    /// with a server certificate signed by `ca`; clients present no certificate.
    pub async fn start_with_tls(ca: &TestCa) -> Self {
        let tls = Some((free_port(), ca.clone()));
        let mut r = PrivateRedis { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None, aof: false, tls };
        r.restart().await;
        r
    }

    /// The TLS endpoint of a server started with [`PrivateRedis::start_with_tls`].
    pub fn tls_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("started with TLS");
        format!("rediss://127.0.0.1:{port}")
    }

    /// Starts a server that appends every write to its AOF (fsync always), as production
    /// Redis is configured, so a kill loses nothing.
    pub async fn start_with_aof() -> Self {
        let mut r =
            PrivateRedis { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None, aof: true, tls: None };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no shutdown, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// (Re)starts the server on the same port and waits until it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new(Self::binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(if self.aof {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .args(self.tls.iter().flat_map(|(port, ca)| {
                let file = |name: &str| ca.file(name).display().to_string();
                [
                    "--tls-port".to_owned(),
                    port.to_string(),
                    "--tls-cert-file".to_owned(),
                    file("server.pem"),
                    "--tls-key-file".to_owned(),
                    file("server.key"),
                    "--tls-ca-cert-file".to_owned(),
                    file("ca.pem"),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ]
            }))
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (set QSCHED_REDIS_SERVER): {e}", Self::binary().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let client = redis::Client::open(self.url()).unwrap();
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "private redis-server did not come up on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A RabbitMQ node of our own (`rabbitmq-server` on free loopback ports, its own data
/// directory and Erlang cookie), for tests that stop and kill the broker. Killed on drop.
pub struct PrivateRabbit {
    pub port: u16,
    /// The `amqps://` port of a node started with [`PrivateRabbit::start_with_tls`].
    pub tls_port: Option<u16>,
    dist_port: u16,
    name: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRabbit {
    fn binary() -> PathBuf {
        std::env::var_os("QSCHED_RABBITMQ_SERVER")
            .map_or_else(|| PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server"), PathBuf::from)
    }

    /// Starts a node and waits until it accepts AMQP connections.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a node that also accepts `amqps://` (see [`PrivateRabbit::tls_url`]) with a
    /// server certificate signed by `ca`; clients present no certificate.
    pub async fn start_with_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca)).await
    }

    async fn start_with(ca: Option<&TestCa>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let port = free_port();
        let mut conf = format!("listeners.tcp.local = 127.0.0.1:{port}\n");
        let tls_port = ca.map(|ca| {
            let tls_port = free_port();
            conf.push_str(&format!(
                "listeners.ssl.local = 127.0.0.1:{tls_port}\nssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca.file("ca.pem").display(),
                ca.file("server.pem").display(),
                ca.file("server.key").display(),
            ));
            tls_port
        });
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        let name = format!("qsched-test-{}-{port}@localhost", std::process::id());
        let mut r = PrivateRabbit { port, tls_port, dist_port: free_port(), name, dir, child: None };
        r.restart().await;
        r
    }

    /// The TLS endpoint of a node started with [`PrivateRabbit::start_with_tls`].
    pub fn tls_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.tls_port.expect("started with TLS"))
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL of the node's process group: no shutdown, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // rabbitmq-server execs erl; its process group holds epmd-less beam and helpers.
            let _ =
                Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: the node shuts down cleanly (queues are closed, consumers cancelled).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ =
                Command::new("kill").args(["-TERM", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ =
                Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
            let _ = child.wait();
        }
    }

    /// (Re)starts the node with the same data directory and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        use std::os::unix::process::CommandExt;
        let base = self.dir.path();
        let child = Command::new(Self::binary())
            .env("HOME", base)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", base.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (set QSCHED_RABBITMQ_SERVER): {e}", Self::binary().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let config = AmqpConfig::new(self.url());
            if AmqpBroker::connect(config).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "private rabbitmq-server did not come up on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}
