//! Bad input gets a clear error, a non-zero exit and nothing enqueued.

use shared::DeviceClass;
use shared::broker::Broker;
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
    // No CUDA on this host: a clear error naming what was looked for, never a CPU run.
    assert_fails(&run("cuda:0"), "libtorch_cuda.so");
    assert_fails(&run("gpu"), "expected 'cpu' or 'cuda:N'");
    assert_fails(&run("cuda"), "expected 'cpu' or 'cuda:N'");
}

#[test]
fn local_mode_without_a_cuda_device_is_refused() {
    let out = std::process::Command::new(bin("qsched"))
        .args(["submit", "--local", "--devices", "cuda:0", "--models", "qwen3", "--data-dir"])
        .arg(data_dir())
        .output()
        .unwrap();
    assert_fails(&out, "need a cpu device but --devices lists only cuda:0");
    let out = std::process::Command::new(bin("qsched"))
        .args(["submit", "--local", "--device-class", "cuda", "--devices", "cuda:0", "--models", "qwen3", "--data-dir"])
        .arg(data_dir())
        .output()
        .unwrap();
    assert_fails(&out, "libtorch_cuda.so");
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
