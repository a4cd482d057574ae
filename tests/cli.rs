//! Bad input gets a clear error, a non-zero exit and nothing enqueued; every answer of
//! `qsched` (exit status, names it accepts, formats) is checked on the real binary.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared::DeviceClass;
use shared::broker::{Broker, BrokerAdmin};
use shared::shard::{AgentHeartbeat, MetricPoint, Shard, ShardMeasurements, ShardResult, ShardState, unix_now};
use shared::store::Store;

use crate::procs::{Fleet, bin, data_dir, text};

fn assert_fails(out: &std::process::Output, needle: &str) {
    let (stdout, stderr) = text(out);
    assert!(!out.status.success(), "expected failure, got success: {stdout}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_fail_clearly_and_enqueue_nothing() {
    let fleet = Fleet::new("badinput").await;
    let data = data_dir();
    let data = data.to_str().unwrap();
    assert_fails(&fleet.qsched(&["submit", "--models", "bogus"]), "unknown model 'bogus'");
    assert_fails(&fleet.qsched(&["submit", "--tasks", "sst3"]), "unknown task 'sst3'");
    assert_fails(&fleet.qsched(&["submit", "--scale", "huge"]), "unknown scale 'huge'");
    assert_fails(&fleet.qsched(&["submit", "--seeds", "1,x"]), "invalid seed 'x'");
    assert_fails(&fleet.qsched(&["submit", "--set", "first_order.max_stepz=3"]), "max_stepz");

    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(&spec, "models = [\"qwen3\"\nscale = 3\n").unwrap();
    assert_fails(&fleet.qsched(&["submit", "--spec", spec.to_str().unwrap()]), "malformed spec file");
    std::fs::write(&spec, "scale = \"tiny\"\ncolour = \"red\"\n").unwrap();
    assert_fails(&fleet.qsched(&["submit", "--spec", spec.to_str().unwrap()]), "colour");

    // A data directory without the task's files.
    std::fs::create_dir_all(dir.path().join("glue")).unwrap();
    let link = dir.path().join("tokenizers");
    std::os::unix::fs::symlink(std::path::Path::new(data).join("tokenizers"), &link).unwrap();
    assert_fails(
        &fleet.qsched(&["submit", "--models", "qwen3", "--data-dir", dir.path().to_str().unwrap()]),
        "SST-2/train.tsv",
    );
    // A task with no train split.
    assert_fails(&fleet.qsched(&["submit", "--tasks", "qnli", "--data-dir", data]), "QNLI/train.tsv");
    // A model × task pair the agents cannot run is refused by submit, not shard by shard.
    let out = fleet.qsched(&["submit", "--models", "qwen3,mezo-opt,dizo-opt", "--tasks", "sst2,stsb"]);
    assert_fails(&out, "mezo-opt × stsb, dizo-opt × stsb cannot run: STS-B is a regression task");
    assert_eq!(out.status.code(), Some(1));
    // No agent serves the cpu queue under this prefix: --require-agents refuses.
    let out = fleet.qsched(&["submit", "--models", "qwen3", "--seeds", "1", "--require-agents"]);
    assert_fails(&out, "no live cpu agent under prefix");
    assert!(text(&out).1.contains("nothing was submitted (--require-agents)"), "{}", text(&out).1);
    assert_eq!(out.status.code(), Some(1));

    // Unreachable services: the error names the (redacted) URL; the password never shows.
    let out = fleet.qsched(&["--amqp", "amqp://guest:s3cret@127.0.0.1:1/%2f", "submit", "--models", "qwen3"]);
    assert_fails(&out, "127.0.0.1:1");
    assert!(!text(&out).1.contains("s3cret"));
    let out = fleet.qsched(&["--redis", "redis://:s3cret@127.0.0.1:1", "submit", "--models", "qwen3"]);
    assert_fails(&out, "127.0.0.1:1");
    assert!(!text(&out).1.contains("s3cret"));

    // Passwords with raw reserved characters ('?', '/', '#') are redacted as well, from
    // every command and from a URL read from a file.
    for (flag, url, secret) in [
        ("--amqp", "amqp://guest:S1pa?ssX@127.0.0.1:5672/%2f", "ssX"),
        ("--amqp", "amqp://guest:S1pa/ssX@127.0.0.1:5672/%2f", "ssX"),
        ("--amqp", "amqp://guest:S1pa#ssX@127.0.0.1:5672/%2f", "ssX"),
        ("--redis", "redis://:S1pa/ssX@127.0.0.1:1", "ssX"),
        ("--redis", "redis://:S1pa#ssX@127.0.0.1:1", "ssX"),
    ] {
        for command in [&["dead-letters"][..], &["submit", "--models", "qwen3"][..], &["status", "r-1"][..]] {
            let mut args = vec![flag, url];
            args.extend_from_slice(command);
            let out = fleet.qsched(&args);
            let (stdout, stderr) = text(&out);
            assert!(!stdout.contains(secret) && !stderr.contains(secret), "{url} {command:?} leaked:\n{stderr}");
            assert!(!stderr.contains("S1pa"), "{url} {command:?} leaked:\n{stderr}");
        }
    }
    let secret_file = dir.path().join("amqp-url");
    std::fs::write(&secret_file, "amqp://guest:s3cret@127.0.0.1:1/%2f\n").unwrap();
    let out = fleet.qsched(&["--amqp-file", secret_file.to_str().unwrap(), "submit", "--models", "qwen3"]);
    assert_fails(&out, "127.0.0.1:1");
    assert!(!text(&out).1.contains("s3cret"));

    // Nothing reached the queues or the store.
    assert_eq!(fleet.broker().queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
    assert_eq!(fleet.broker().queue_depth(DeviceClass::Cuda).await.unwrap(), 0);
    assert!(fleet.store.list_runs(10).await.unwrap().is_empty());
}

#[test]
fn agent_refuses_devices_it_cannot_use() {
    let run = |device: &str| {
        std::process::Command::new(bin("qagent"))
            .args(["--device", device, "--data-dir"])
            .arg(data_dir())
            .output()
            .unwrap()
    };
    // No GPU on this host: it says so first (no Python traceback), never a CPU run.
    let out = run("cuda:0");
    assert_fails(&out, "cuda:0 requested but this host has no CUDA device");
    assert!(!text(&out).1.contains("Traceback"), "{}", text(&out).1);
    assert_fails(&run("gpu"), "expected 'cpu' or 'cuda:N'");
    assert_fails(&run("cuda"), "expected 'cpu' or 'cuda:N'");
}

#[test]
fn local_mode_without_a_cuda_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("local.redb");
    let out = std::process::Command::new(bin("qsched"))
        .args(["submit", "--local", "--devices", "cuda:0", "--models", "qwen3", "--data-dir"])
        .arg(data_dir())
        .env("QSCHED_LOCAL_STORE", &store)
        .output()
        .unwrap();
    assert_fails(&out, "need a cpu device but --devices lists only cuda:0");
    let out = std::process::Command::new(bin("qsched"))
        .args(["submit", "--local", "--device-class", "cuda", "--devices", "cuda:0", "--models", "qwen3", "--data-dir"])
        .arg(data_dir())
        .env("QSCHED_LOCAL_STORE", &store)
        .output()
        .unwrap();
    assert_fails(&out, "cuda:0 requested but this host has no CUDA device");
    assert!(!store.exists(), "a refused local run records nothing");
}

/// `submit --local` exits as `--wait` does: 3 when a shard failed (here at once: its
/// checkpoint directory does not exist), with the results and the run id still printed.
#[test]
fn local_mode_exits_3_when_a_shard_fails() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "models = [\"ft-opt\"]\ntasks = [\"sst2\"]\nseeds = [1]\n[model_dir]\nopt = \"/nonexistent/opt-checkpoint\"\n",
    )
    .unwrap();
    let out = Command::new(bin("qsched"))
        .args(["submit", "--local", "--threads", "1", "--format", "csv", "--spec"])
        .arg(&spec)
        .arg("--data-dir")
        .arg(data_dir())
        .env("RUST_LOG", "error")
        .env("QSCHED_LOCAL_STORE", dir.path().join("local.redb"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("\nft-opt,sst2,,,,0,1,"), "{stdout}");
    let run = stdout.lines().last().unwrap();
    assert!(run.starts_with("r-"), "{stdout}");
    let line = format!("qsched: run {run}: 1 of 1 shard(s) did not succeed (1 failed); exit status 3");
    assert!(stderr.contains(&line), "{stderr}");
}

/// The workers of `submit --local` log at qsched's level (warnings by default) and their
/// lines reach qsched's stderr through the agent, which forwards them line by line (to be
/// printed above the progress bar): with `RUST_LOG=info` every worker's lines are there,
/// whole; without it, none of the info lines.
#[test]
fn local_workers_log_through_qsched_at_its_level() {
    let dir = tempfile::tempdir().unwrap();
    let run = |rust_log: Option<&str>| {
        let mut cmd = Command::new(bin("qsched"));
        cmd.args(["submit", "--local", "--models", "qwen3", "--tasks", "sst2", "--seeds", "1,2", "--threads", "1"])
            .args(["--set", "first_order.max_steps=2", "--set", "first_order.eval_every=2", "--data-dir"])
            .arg(data_dir())
            .env("QSCHED_LOCAL_STORE", dir.path().join("local.redb"))
            .env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stderr
    };
    let stderr = run(Some("info"));
    let pinned: Vec<&str> = stderr.lines().filter(|l| l.contains("worker pinned")).collect();
    assert_eq!(pinned.len(), 2, "one line per worker:\n{stderr}");
    assert!(pinned.iter().all(|l| l.contains("INFO") && l.contains("threads=1")), "{stderr}");
    assert!(stderr.contains("placement audit passed"), "{stderr}");
    let stderr = run(None);
    assert!(!stderr.contains("worker pinned") && !stderr.contains("INFO"), "{stderr}");
    assert!(stderr.contains("2 shard(s) on 1 local agent(s)"), "{stderr}");
}

/// `submit --local` keeps its run in the embedded store: `results`, `status`, `compare`,
/// `plot` and `runs` read it back with `--local` while Redis and RabbitMQ are unreachable
/// (port 1), and without `--local` nothing falls back to the file.
#[test]
fn a_local_run_is_kept_and_read_back_with_no_redis() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("x.redb");
    let store_arg = store.to_str().unwrap();
    let data = data_dir();
    let qsched = |args: &[&str], env: &[(&str, &std::path::Path)]| {
        let mut cmd = Command::new(bin("qsched"));
        cmd.args(["--redis", "redis://127.0.0.1:1", "--amqp", "amqp://guest:guest@127.0.0.1:1/%2f"]).args(args);
        cmd.env("RUST_LOG", "error").env_remove("QSCHED_LOCAL_STORE").env_remove("XDG_DATA_HOME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = qsched(
        &[
            "submit",
            "--local",
            "--local-store",
            store_arg,
            "--models",
            "qwen3",
            "--tasks",
            "sst2",
            "--seeds",
            "1,2",
            "--set",
            "first_order.max_steps=3",
            "--set",
            "first_order.eval_every=3",
            "--threads",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let run = stdout.lines().last().unwrap().to_owned();
    assert!(run.starts_with("r-"), "{stdout}");
    assert!(stderr.contains(&format!("`qsched results {run} --local --local-store {store_arg}`")), "{stderr}");

    // The table and the JSON of the run, from the file.
    let local = ["--local", "--local-store", store_arg];
    let read = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(local);
        let out = qsched(&all, &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let table = read(&["results", &run]);
    let row = table.lines().find(|l| l.contains("qwen3") && l.contains("sst2")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("accuracy") && row.contains("┆ 2 ┆ 0 "), "two seeds, none failed: {table}");
    let json: serde_json::Value = serde_json::from_str(&read(&["results", &run, "--format", "json"])).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    assert!(rows.iter().all(|r| r["run"] == run.as_str() && r["status"] == "succeeded" && r["steps"] == 3), "{json}");
    let status = read(&["status", &run]);
    assert!(status.contains("2/2 finished") && status.contains("states: succeeded 2"), "{status}");
    assert!(read(&["compare", &run]).contains("sst2"));
    assert!(read(&["runs"]).contains(&run));
    let figures = dir.path().join("figs");
    let plotted = read(&["plot", &run, "--out", figures.to_str().unwrap()]);
    assert!(plotted.contains("loss_qwen3_sst2.svg") && plotted.contains("metric_sst2.svg"), "{plotted}");
    assert!(figures.join("loss_qwen3_sst2.svg").is_file(), "the metric streams were kept too");

    // The file is found through the environment and the XDG / home defaults as well.
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("qsched")).unwrap();
    std::fs::copy(&store, xdg.join("qsched/local.redb")).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".local/share/qsched")).unwrap();
    std::fs::copy(&store, home.join(".local/share/qsched/local.redb")).unwrap();
    for env in [&[("QSCHED_LOCAL_STORE", store.as_path())][..], &[("XDG_DATA_HOME", &xdg)], &[("HOME", &home)]] {
        let out = qsched(&["results", &run, "--local"], env);
        assert!(out.status.success(), "{env:?}: {}", text(&out).1);
        assert!(text(&out).0.contains("qwen3"), "{env:?}");
    }

    // Explicit choice: without --local the read goes to (unreachable) Redis and fails.
    let out = qsched(&["results", &run], &[("QSCHED_LOCAL_STORE", store.as_path())]);
    assert_fails(&out, "127.0.0.1:1");
    assert_fails(&out, "a run of `qsched submit --local` is read with --local");
    // A run the file does not have, a file that is not there, no home to default to.
    assert_fails(
        &qsched(&["results", "r-nope", "--local", "--local-store", store_arg], &[]),
        "not found in the local store",
    );
    let missing = dir.path().join("none.redb");
    assert_fails(
        &qsched(&["status", &run, "--local", "--local-store", missing.to_str().unwrap()], &[]),
        "none.redb: no such file",
    );
    assert!(!missing.exists(), "reading never creates a store");
    let mut cmd = Command::new(bin("qsched"));
    cmd.args(["results", &run, "--local"]).env_remove("QSCHED_LOCAL_STORE").env_remove("XDG_DATA_HOME");
    assert_fails(&cmd.env_remove("HOME").output().unwrap(), "pass --local-store FILE");
    // Commands that need the broker say so.
    assert_fails(&qsched(&["cancel", &run, "--local"], &[]), "`qsched cancel` needs a fleet");
    assert_fails(&qsched(&["retry", &run, "--local"], &[]), "`qsched retry` needs a fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_counted_in_full_and_an_unused_prefix_has_none() {
    let fleet = Fleet::new("dlcount").await;
    // A prefix nothing was ever declared under: zero, not a broker error.
    let mut cmd = std::process::Command::new(bin("qsched"));
    fleet.env(&mut cmd);
    let out = cmd.env("QSCHED_PREFIX", crate::util::unique_prefix("never-used")).arg("dead-letters").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("0 message(s) in the dead-letter queue"), "{stdout}");
    // More dead letters than a listing shows: the count is the queue's, not the page's.
    for i in 0..7 {
        fleet.broker().dead_letter(format!("body {i}").into_bytes(), Default::default(), "test").await.unwrap();
    }
    let (stdout, stderr) = text(&fleet.qsched(&["dead-letters", "--limit", "3"]));
    assert!(stdout.starts_with("7 message(s) in the dead-letter queue, the first 3 shown"), "{stdout}{stderr}");
}

/// A result for `shard` as an agent stores it (the shard under `config.shard`).
fn result_for(shard: &Shard, status: ShardState, accuracy: f64) -> ShardResult {
    let ok = status == ShardState::Succeeded;
    ShardResult {
        run: shard.run_id.to_string(),
        shard: shard.shard_id.to_string(),
        model: shard.model,
        task: shard.task,
        seed: shard.seed,
        scale: shard.scale.clone(),
        host: "host-a".into(),
        agent: "host-a:cpu:1".into(),
        status,
        error: (!ok).then(|| "boom".to_owned()),
        measured: ShardMeasurements {
            device: "cpu".into(),
            gpu_name: None,
            metrics: if ok { BTreeMap::from([("accuracy".to_owned(), accuracy)]) } else { BTreeMap::new() },
            dev_metrics: BTreeMap::new(),
            primary_metric: ok.then(|| "accuracy".to_owned()),
            best_step: Some(10),
            steps: 10,
            peak_memory_bytes: 100 << 20,
            peak_memory_kind: "host_rss_peak".into(),
            wall_seconds: 2.0,
            train_seconds: 1.0,
            steps_per_second: 10.0,
            tokens_per_second: 1000.0,
            skipped_steps: 0,
            precision: "fp32".into(),
            threads: 1,
            parameters: 1,
            split_sizes: BTreeMap::new(),
            data_checksums: BTreeMap::new(),
            config: serde_json::json!({ "shard": shard, "evaluations": [] }),
            resumed_from_step: None,
        },
        attempt: 1,
        started_at: 0.0,
        finished_at: 0.0,
        traceparent: None,
    }
}

/// Records and publishes a tiny qwen3 × SST-2 run (seeds 1, 2) of `steps` steps under the
/// fleet's prefix, and stores a succeeded result per shard.
async fn run_with_results(fleet: &Fleet, steps: u32) -> String {
    let spec = crate::procs::tiny_qwen3(vec![1, 2], steps, steps);
    let run = scheduler::new_run_id();
    let record = scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    for (i, shard) in scheduler::shards_of(&record).unwrap().iter().enumerate() {
        assert!(fleet.store.put_result(&result_for(shard, ShardState::Succeeded, 0.5 + 0.1 * i as f64)).await.unwrap());
    }
    run.to_string()
}

/// `submit --wait` exits 0 when every shard succeeded, 3 when one failed, 4 when one was
/// cancelled and 5 when one was dead-lettered; the shards' ends are written by the test,
/// as agents would write them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_exits_with_how_the_run_ended() {
    let fleet = Fleet::new("waitexit").await;
    let mut seen: Vec<String> = Vec::new();
    for (last, code) in
        [(ShardState::Succeeded, 0), (ShardState::Failed, 3), (ShardState::Cancelled, 4), (ShardState::Dead, 5)]
    {
        let mut cmd = Command::new(bin("qsched"));
        fleet.env(&mut cmd);
        let child = cmd
            .args(["submit", "--wait", "--scale", "tiny", "--models", "qwen3", "--seeds", "1,2", "--format", "csv"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The run qsched recorded.
        let deadline = Instant::now() + Duration::from_secs(60);
        let run = loop {
            let runs = fleet.store.list_runs(10).await.unwrap();
            if let Some(run) = runs.into_iter().find(|r| !seen.contains(r)) {
                break run;
            }
            assert!(Instant::now() < deadline, "qsched recorded no run");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        seen.push(run.clone());
        let record = fleet.store.get_run(&run).await.unwrap().unwrap();
        let shards = scheduler::shards_of(&record).unwrap();
        assert!(fleet.store.put_result(&result_for(&shards[0], ShardState::Succeeded, 0.75)).await.unwrap());
        match last {
            ShardState::Succeeded | ShardState::Failed => {
                assert!(fleet.store.put_result(&result_for(&shards[1], last, 0.8)).await.unwrap());
            }
            _ => fleet.store.force_state(&run, shards[1].shard_id.as_str(), last).await.unwrap(),
        }
        let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{last:?}: {stdout}\n{stderr}");
        // Nobody serves the cpu queue under this prefix: a warning, not an error.
        assert!(stderr.contains("warning: no live cpu agent under prefix"), "{stderr}");
        // The results, then the run id as the last line.
        assert!(stdout.starts_with("model,task,metric,mean,std,n,failed,"), "{stdout}");
        assert_eq!(stdout.lines().last(), Some(run.as_str()), "{stdout}");
        if code == 0 {
            assert!(!stderr.contains("did not succeed"), "{stderr}");
        } else {
            let word = match last {
                ShardState::Failed => "failed",
                ShardState::Cancelled => "cancelled",
                _ => "dead-lettered",
            };
            let line = format!("qsched: run {run}: 1 of 2 shard(s) did not succeed (1 {word}); exit status {code}");
            assert!(stderr.contains(&line), "{stderr}");
        }
    }
    let help = text(&fleet.qsched(&["submit", "--help"])).0;
    for line in ["Exit status:", "3  with --wait or --local: the run finished and at least one shard failed"] {
        assert!(help.contains(line), "{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_metrics_and_baselines_and_mixed_settings_are_refused() {
    let fleet = Fleet::new("cmpnames").await;
    let short = run_with_results(&fleet, 10).await;
    let long = run_with_results(&fleet, 400).await;

    let out = fleet.qsched(&["results", &short, "--metric", "acuracy"]);
    assert_fails(&out, &format!("no result of run {short} has a metric named 'acuracy'; the results have: accuracy"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.is_empty(), "no table: {}", text(&out).0);
    let out = fleet.qsched(&["compare", &short, "--metric", "f1"]);
    assert_fails(&out, "has a metric named 'f1'; the results have: accuracy");
    let out = fleet.qsched(&["compare", &short, "--baseline", "ft-opt"]);
    assert_fails(
        &out,
        &format!("baseline model 'ft-opt' has no succeeded result in run {short}; models with results: qwen3"),
    );
    assert_eq!(out.status.code(), Some(1));

    // A 10-step and a 400-step run of qwen3 × SST-2 are not pooled into one mean.
    let out = fleet.qsched(&["compare", &short, &long]);
    assert_fails(&out, "refusing to compare: results of the same model × task ran with different settings");
    let (lo, hi) = if short < long { (("10", &short), ("400", &long)) } else { (("400", &long), ("10", &short)) };
    let wanted = format!("train.max_steps = {} in run {} but {} in run {}", lo.0, lo.1, hi.0, hi.1);
    let stderr = text(&out).1;
    assert!(stderr.contains("\n  qwen3 × sst2: ") && stderr.contains(&wanted), "{stderr}");
    assert_eq!(out.status.code(), Some(1));

    // Each run alone compares, and its metric is accepted.
    let out = fleet.qsched(&["compare", &long, "--metric", "accuracy", "--baseline", "qwen3", "--format", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows[0]["n"], 2);
}

/// `agents` and `scales` print what `--format` asks for, and the scales table fits 120 columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_scales_honour_every_format() {
    let fleet = Fleet::new("formats").await;
    let now = unix_now();
    let beat = AgentHeartbeat {
        agent: "host-a:cpu:7".into(),
        host: "host-a".into(),
        device: "cpu".into(),
        gpu_name: None,
        current: Some(("r-1".into(), "abc".into())),
        step: Some(3),
        total_steps: Some(40),
        progress_at: Some(now),
        started_at: now - 60.0,
        at: now,
        shards_done: 1,
        worker_memory_bytes: None,
    };
    fleet.store.heartbeat(&beat, Duration::from_secs(120)).await.unwrap();
    let run = |args: &[&str]| {
        let out = fleet.qsched(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let csv = run(&["agents", "--format", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("agent,host,device,gpu_name,run,shard,step,total_steps,"), "{csv}");
    assert!(lines[1].starts_with("host-a:cpu:7,host-a,cpu,,r-1,abc,3,40,"), "{csv}");
    let md = run(&["agents", "--format", "markdown"]);
    assert!(md.starts_with("| agent | host | device |") && md.contains("| host-a:cpu:7 | host-a | cpu |"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&run(&["agents", "--format", "json"])).unwrap();
    assert_eq!(json[0]["agent"], "host-a:cpu:7");
    assert!(run(&["agents"]).contains("│ host-a:cpu:7"));

    let table = run(&["scales"]);
    assert!(table.contains("large") && table.contains('│'), "{table}");
    assert!(table.lines().all(|l| l.chars().count() <= 120), "{table}");
    let csv = run(&["scales", "--format", "csv"]);
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv.lines().nth(1).unwrap().starts_with("tiny,cpu,\"2 × 64, 4/2 × 16, 192\","), "{csv}");
    assert!(csv.lines().nth(2).unwrap().starts_with("demo,cpu,\"2 × 64, 4/2 × 16, 192\","), "{csv}");
    let md = run(&["scales", "--format", "markdown"]);
    assert!(md.starts_with("| scale | device |") && md.contains("\n| large | cuda |"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&run(&["scales", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 5);
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [("bash", "_qsched()"), ("zsh", "#compdef qsched"), ("fish", "complete -c qsched")] {
        let out = Command::new(bin("qsched")).args(["completions", shell]).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{shell}: {stderr}");
        assert!(stdout.contains(marker) && stdout.contains("submit"), "{shell}: {stdout}");
    }
    let out = Command::new(bin("qsched")).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
}

/// A broker that accepts the connection and never answers: the submit gives up after the
/// connect timeout (5 s) with an error naming host and port, and nothing is recorded.
/// (A listener on the loopback stands in for a black-holed address.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_times_out_naming_where_it_is() {
    let fleet = Fleet::new("silent").await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    let out = fleet.qsched(&["--amqp", &url, "submit", "--models", "qwen3", "--seeds", "1"]);
    let took = started.elapsed();
    assert_fails(&out, &format!("127.0.0.1:{port}"));
    let stderr = text(&out).1;
    assert!(stderr.contains(&format!("cannot reach the broker at 127.0.0.1:{port} (timed out after 5 s)")), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(fleet.store.list_runs(10).await.unwrap().is_empty());
    drop(silent);
}

/// `status --watch` on a run nobody serves ends when the run is cancelled: the final
/// block, then a line naming the cancellation, exit status 0. Its stdout is a pipe, so
/// the blocks are appended with no escape codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_exits_when_the_run_is_cancelled() {
    let fleet = Fleet::new("watchcancel").await;
    let spec = crate::procs::tiny_qwen3(vec![1, 2], 10, 10);
    let run = scheduler::new_run_id();
    scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    let run = run.to_string();

    let mut cmd = Command::new(bin("qsched"));
    fleet.env(&mut cmd);
    let mut child =
        cmd.args(["status", &run, "--watch", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // A couple of refreshes with nothing to stop for.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(child.try_wait().unwrap().is_none(), "the watch ended before the run did");

    let out = fleet.qsched(&["cancel", &run]);
    assert!(out.status.success(), "{}", text(&out).1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qsched status --watch did not exit after the run was cancelled");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let stopped = format!("watch stopped: run {run} was cancelled");
    assert!(stdout.lines().last().unwrap().starts_with(&stopped), "{stdout}");
    // Appended blocks (more than one), the last marked cancelled; no escape codes in a pipe.
    assert!(stdout.matches(&format!("run {run} (")).count() >= 2, "{stdout}");
    assert!(stdout.contains("0/2 finished (cancelled)"), "{stdout}");
    assert!(stdout.contains("eta: — (no shard has finished yet to time the 2 queued)"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
}

/// Train loss at steps 5 and 10 and dev evaluations at both, per shard of `run`, as an
/// agent streams them (seed i: loss 0.7 + 0.1 i falling by half, dev accuracy 0.5 + 0.1 i).
async fn stream_metrics(fleet: &Fleet, run: &str) {
    let record = fleet.store.get_run(run).await.unwrap().unwrap();
    for (i, s) in record.shards.iter().enumerate() {
        let (loss, acc) = (0.7 + 0.1 * i as f64, 0.5 + 0.1 * i as f64);
        let point = |step: u64, kind: &str, values: &[(&str, f64)]| MetricPoint {
            step,
            kind: kind.into(),
            values: values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            at: unix_now(),
        };
        let points = [
            point(5, "train", &[("loss", loss)]),
            point(5, "dev", &[("loss", loss), ("accuracy", acc - 0.1)]),
            point(10, "train", &[("loss", loss / 2.0)]),
            point(10, "dev", &[("loss", loss / 2.0), ("accuracy", acc)]),
        ];
        fleet.store.append_metrics(run, &s.shard, &points).await.unwrap();
    }
}

/// `qsched plot` draws a stored run's figures in each format; the tests open each file:
/// the PNG decoded (size, ink in the plot area), the SVG parsed (size, a polyline of every
/// curve's points).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plot_draws_a_runs_figures_as_png_and_svg() {
    let fleet = Fleet::new("plot").await;
    let run = run_with_results(&fleet, 10).await;
    stream_metrics(&fleet, &run).await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("figures");
    let names = ["loss_qwen3_sst2", "dev_qwen3_sst2", "metric_sst2", "memory_sst2", "wall_sst2"];
    for format in ["png", "svg"] {
        let out = fleet.qsched(&["plot", &run, "--out", out_dir.to_str().unwrap(), "--format", format]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("skipped"), "{stderr}");
        let wanted: Vec<String> =
            names.iter().map(|n| out_dir.join(format!("{n}.{format}")).display().to_string()).collect();
        assert_eq!(stdout.lines().collect::<Vec<_>>(), wanted, "the paths written, one a line");
        for (name, path) in names.iter().zip(&wanted) {
            let bytes = std::fs::read(path).unwrap();
            if format == "png" {
                let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
                let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
                let info = reader.next_frame(&mut rgb).unwrap();
                assert_eq!((info.width, info.height, info.color_type), (1024, 640, png::ColorType::Rgb), "{name}");
                let (w, h) = (info.width as usize, info.height as usize);
                let inked = (h / 5..h * 4 / 5)
                    .flat_map(|y| (w / 5..w * 4 / 5).map(move |x| (y * w + x) * 3))
                    .filter(|&i| rgb[i..i + 3] != [255, 255, 255])
                    .count();
                assert!(inked > 1000, "{name}: {inked} non-background pixels in the plot area");
            } else {
                let text = String::from_utf8(bytes).unwrap();
                let doc = roxmltree::Document::parse(&text).unwrap();
                let svg = doc.root_element();
                assert_eq!((svg.attribute("width"), svg.attribute("height")), (Some("1024"), Some("640")), "{name}");
                let longest_polyline = doc
                    .descendants()
                    .filter(|n| n.has_tag_name("polyline"))
                    .map(|n| n.attribute("points").unwrap_or("").split_whitespace().count())
                    .max()
                    .unwrap_or(0);
                let bars = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
                if name.starts_with("loss") || name.starts_with("dev") {
                    // Every curve has two steps (5 and 10): a line through both.
                    assert!(longest_polyline >= 2, "{name}: no line of 2 points");
                    assert!(text.contains("(mean ± 1 std over 2 seed(s))"), "{name}: legend");
                } else {
                    assert!(bars >= 2, "{name}: {bars} rect elements");
                    assert!(text.contains("qwen3 (n=2)"), "{name}: bar label");
                }
            }
        }
    }
}

/// Unknown runs and pooled runs with different settings are errors (exit 1); a run with
/// results but no metric stream still gets its bar figures, the curves skipped on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plot_refuses_unknown_runs_and_mixed_settings_and_skips_missing_curves() {
    let fleet = Fleet::new("plotbad").await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let out = fleet.qsched(&["plot", "no-such-run", "--out", out_dir]);
    assert_fails(&out, "run 'no-such-run' not found");
    assert_eq!(out.status.code(), Some(1));

    let short = run_with_results(&fleet, 10).await;
    let long = run_with_results(&fleet, 400).await;
    let out = fleet.qsched(&["plot", &short, &long, "--out", out_dir]);
    assert_fails(&out, "refusing to plot: results of the same model × task ran with different settings");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");

    let out = fleet.qsched(&["plot", &short, "--out", out_dir, "--format", "svg,png"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "skipped loss_qwen3_sst2: no train or dev loss in the metric streams of qwen3 × sst2 (run {short})"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("skipped dev_qwen3_sst2: no dev accuracy"), "{stderr}");
    let files: Vec<String> =
        stdout.lines().map(|l| std::path::Path::new(l).file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        files,
        ["metric_sst2.svg", "metric_sst2.png", "memory_sst2.svg", "memory_sst2.png", "wall_sst2.svg", "wall_sst2.png"]
    );
}
