//! `qsched dashboard` in a real headless Chromium, against the real Redis and RabbitMQ
//! with a run in flight on a real `qagent`: one shard fails at once (its checkpoint
//! directory does not exist), another trains. The run page renders the shard table with
//! the failure's error, its loss curve grows without the page reloading, and the runs and
//! fleet pages show the run and the agent. Each page's screenshot is written to
//! `QSCHED_SCREENSHOT_DIR` (the README's images are made this way: `docs/dashboard/`),
//! else to a temporary folder, and checked to be a PNG of the page's size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shared::shard::ShardState;
use shared::spec::{SpecFile, SpecInput};
use shared::store::Store;

use crate::browser::Browser;
use crate::procs::{Fleet, bin};
use crate::util::free_port;

/// The page size of the screenshots.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;

/// A `qsched dashboard` process of the fleet; killed on drop.
struct DashboardProcess {
    child: Child,
    address: SocketAddr,
}

impl DashboardProcess {
    fn start(fleet: &Fleet) -> Self {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(bin("qsched"));
        fleet.env(&mut cmd);
        cmd.args(["dashboard", "--listen", &address.to_string(), "--refresh", "1"])
            .args(["--trace-url", "http://127.0.0.1:16686/trace/{trace_id}"])
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("start qsched dashboard");
        let dashboard = DashboardProcess { child, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(address, "/api/config").is_none() {
            assert!(Instant::now() < deadline, "the dashboard did not answer on {address} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        dashboard
    }

    fn url(&self, fragment: &str) -> String {
        format!("http://{}/{fragment}", self.address)
    }
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of `GET path` when it answers 200.
fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}

/// Where the screenshots go.
fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("QSCHED_SCREENSHOT_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            (PathBuf::from(dir), None)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            (tmp.path().to_owned(), Some(tmp))
        }
    }
}

/// A screenshot of the page as `name.png`, checked to be a PNG at least the viewport's size.
fn screenshot(browser: &mut Browser, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}.png"));
    browser.screenshot(&path);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let info = decoder.read_info().unwrap();
    let (w, h) = (info.info().width, info.info().height);
    assert!(w == WIDTH && h >= HEIGHT, "{name}.png is {w} × {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_run_in_flight_with_a_failed_shard_in_a_real_browser() {
    let fleet = Fleet::new("dashboard").await;
    let models = tempfile::tempdir().unwrap();
    let missing = models.path().join("opt-that-is-not-there");
    // ft-opt first: its shard fails as soon as the agent reads the checkpoint; then the
    // qwen3 shard trains long enough to be watched (the test ends before it does).
    let spec = SpecInput {
        file: SpecFile {
            model_dir: Some([("opt".to_owned(), missing.display().to_string())].into()),
            ..Default::default()
        },
        scale: Some("tiny".into()),
        models: Some(vec!["ft-opt".into(), "qwen3".into()]),
        tasks: Some(vec!["sst2".into()]),
        seeds: Some(vec![1]),
        set: vec!["first_order.max_steps=100000".into(), "first_order.eval_every=40".into()],
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let run = scheduler::new_run_id();
    let record = scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    let _agent = fleet.agent(&["--model-root", models.path().to_str().unwrap()]);
    let dashboard = DashboardProcess::start(&fleet);
    let (shots, _keep) = screenshot_dir();

    let mut browser = tokio::task::block_in_place(|| Browser::start(WIDTH, HEIGHT));
    let run_page = dashboard.url(&format!("#/run/{run}"));
    tokio::task::block_in_place(|| {
        browser.navigate(&run_page);
        // The failed shard's row carries its error, as stored in its result.
        let error = browser.wait_for(
            "document.querySelector('#shard-table tr[data-state=\"failed\"] .error-text')?.textContent",
            Duration::from_secs(240),
            "the failed shard's error in the shard table",
        );
        let error = error.as_str().unwrap().to_owned();
        assert!(error.contains("opt-that-is-not-there"), "{error}");
        // The training shard's loss curve appears and then grows, with the page never
        // reloaded (a reload would drop the marker).
        browser.eval("window.__notReloaded = true");
        let points = |b: &mut Browser| -> u64 {
            let charts = b.eval("window.qschedDashboard.charts()");
            charts
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["title"] == "sst2: train loss")
                .map(|c| c["points"].as_u64().unwrap())
                .sum()
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        let first = loop {
            let n = points(&mut browser);
            if n >= 2 {
                break n;
            }
            assert!(Instant::now() < deadline, "no train loss curve on the run page");
            std::thread::sleep(Duration::from_millis(250));
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n = points(&mut browser);
            if n > first {
                break;
            }
            assert!(Instant::now() < deadline, "the loss curve stayed at {first} points");
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(browser.eval("window.__notReloaded === true"), Value::Bool(true), "the page reloaded");
        // The running shard shows its step and the agent running it.
        let running = browser.wait_for(
            "document.querySelector('#shard-table tr[data-state=\"running\"]')?.textContent",
            Duration::from_secs(30),
            "the running shard's row",
        );
        assert!(running.as_str().unwrap().contains("qwen3"), "{running}");
        // Shards link to their trace with the configured template.
        let link = browser.eval("document.querySelector('#shard-table a[href*=\"16686/trace/\"]')?.href");
        assert!(link.as_str().is_some_and(|l| l.len() > "http://127.0.0.1:16686/trace/".len()), "{link}");
        screenshot(&mut browser, &shots, "run");

        browser.navigate(&dashboard.url("#/"));
        let listed = browser.wait_for(
            &format!("document.querySelector('tr[data-run=\"{run}\"]')?.textContent"),
            Duration::from_secs(30),
            "the run on the runs page",
        );
        assert!(listed.as_str().unwrap().contains("failed 1"), "{listed}");
        screenshot(&mut browser, &shots, "runs");

        browser.navigate(&dashboard.url("#/fleet"));
        // With its worker's memory, from the heartbeat (one every 5 s).
        let agent = browser.wait_for(
            "[...document.querySelectorAll('#agent-table tbody tr')].map(r => r.textContent).find(t => t.includes('MiB'))",
            Duration::from_secs(30),
            "the agent on the fleet page, with its worker's memory",
        );
        assert!(agent.as_str().unwrap().contains(run.as_str()), "the agent's current shard: {agent}");
        let queues =
            browser.wait_for("document.querySelector('#queues')?.textContent", Duration::from_secs(10), "queues");
        assert!(queues.as_str().unwrap().contains("cpu queue ready"), "{queues}");
        screenshot(&mut browser, &shots, "fleet");
    });

    // The failure the page showed is the stored one.
    let states = fleet.store.states(&run).await.unwrap();
    assert_eq!(states.values().filter(|s| **s == ShardState::Failed).count(), 1, "{states:?}");
    assert_eq!(record.shard_count, 2);
    // Stop the training shard; the fleet's queues and keys are cleaned up on drop.
    scheduler::cancel(&run, &*fleet.store).await.unwrap();
}
