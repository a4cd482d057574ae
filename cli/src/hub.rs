//! `qsched data fetch` and `qsched models pull`: thin commands over `qsched-hub`.
//!
//! Each returns the text for stdout; download progress goes to the writer given (stderr),
//! as a bar on a terminal and as one line per file elsewhere, so logs stay readable.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qsched_hub::datasets::{self, Benchmark, FetchEvent, FetchOptions};
use qsched_hub::{Hub, Progress, RepoId};
use shared::TaskId;

/// Shows download progress: a byte bar per file on a terminal, else a line per file.
pub struct Reporter {
    bar: Option<ProgressBar>,
    out: Box<dyn Write>,
    current: Option<String>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("current", &self.current).finish_non_exhaustive()
    }
}

impl Reporter {
    /// Progress on stderr: a bar when it is a terminal.
    pub fn stderr() -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Reporter { bar, out: Box::new(std::io::stderr()), current: None }
    }

    /// Progress as plain lines on `out` (tests).
    pub fn lines(out: Box<dyn Write>) -> Self {
        Reporter { bar: None, out, current: None }
    }

    /// One progress report of the hub client.
    pub fn progress(&mut self, p: Progress<'_>) {
        let new_file = self.current.as_deref() != Some(p.file);
        if new_file {
            self.current = Some(p.file.to_string());
        }
        match &self.bar {
            Some(bar) => {
                if new_file {
                    bar.set_message(p.file.to_string());
                    bar.set_length(p.total);
                }
                bar.set_position(p.done);
            }
            None if new_file => {
                let resumed = if p.done > 0 { format!(", resuming at {}", p.done) } else { String::new() };
                let _ = writeln!(self.out, "downloading {} ({} bytes{resumed})", p.file, p.total);
            }
            None => {}
        }
    }

    /// A line above the bar.
    pub fn line(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(self.out, "{text}");
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `qsched data fetch`: writes the tasks' files into `data_dir`; returns one line per file.
pub fn data_fetch(
    hub: &Hub,
    data_dir: &Path,
    benchmarks: &[Benchmark],
    only: Option<&[TaskId]>,
    options: &FetchOptions,
    reporter: &mut Reporter,
) -> Result<String> {
    let tasks = datasets::select_tasks(benchmarks, only)?;
    let result = datasets::fetch(hub, data_dir, &tasks, options, &mut |event| match event {
        FetchEvent::Resolved { repo, commit } => reporter.line(&format!("{repo}: commit {commit}")),
        FetchEvent::Download(p) => reporter.progress(p),
        FetchEvent::Wrote(f) => reporter.line(&format!("wrote {} ({} rows)", f.path, f.rows)),
    });
    reporter.finish();
    let written = result?;
    let mut out = String::new();
    for f in &written {
        out.push_str(&format!("{}\t{} rows\tsha256 {}\t{}@{}\n", f.path, f.rows, f.sha256, f.repo, f.commit));
    }
    out.push_str(&format!("manifest: {}\n", data_dir.join(datasets::MANIFEST).display()));
    Ok(out)
}

/// `qsched models pull`: the snapshot folder and the commit.
pub fn models_pull(hub: &Hub, repo: &RepoId, reporter: &mut Reporter) -> Result<String> {
    let result = qsched_hub::pull_model(hub, repo, &mut |p| reporter.progress(p));
    reporter.finish();
    let snapshot = result?;
    Ok(format!("snapshot {}\ncommit {}\n", snapshot.dir.display(), snapshot.commit))
}
