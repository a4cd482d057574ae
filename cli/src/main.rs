//! `qsched`: submit benchmark runs to the fleet and read them back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use cli::commands::{self, SpecFlags};
use cli::console::{Console, ConsoleLog, ShownBar};
use cli::plot::{self, ImageFormat};
use cli::render::Format;
use shared::amqp::AmqpBroker;
use shared::endpoints::Endpoints;
use shared::local_store::LocalStore;
use shared::redis_store::RedisStore;
use shared::store::Store;
use shared::{DeviceSpec, ModelId};

#[derive(Parser, Debug)]
#[command(name = "qsched", version, about = "Fleet scheduler for ML training benchmarks")]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Conn {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Prefix of queue names and Redis keys.
    #[arg(long, global = true, env = "QSCHED_PREFIX", default_value = "qsched")]
    prefix: String,
}

/// Which store a command reads: Redis (the fleet's), or with `--local` the embedded one
/// that `submit --local` keeps its runs in. Chosen explicitly: nothing falls back from
/// one to the other.
#[derive(Args, Debug, Clone, Default)]
struct StoreChoice {
    /// Read the runs `qsched submit --local` kept on this machine (its embedded store)
    /// instead of Redis; no broker or Redis is contacted.
    #[arg(long)]
    local: bool,
    /// The embedded store file (with --local). Default: $QSCHED_LOCAL_STORE, else
    /// $XDG_DATA_HOME/qsched/local.redb, else ~/.local/share/qsched/local.redb.
    #[arg(long, value_name = "FILE", requires = "local")]
    local_store: Option<PathBuf>,
}

/// `--local` on a command only a fleet can serve: accepted, unlisted, so that the answer
/// says why rather than clap's "unexpected argument".
#[derive(Args, Debug, Clone, Default)]
struct FleetOnly {
    #[arg(long, hide = true)]
    local: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Expand a benchmark into shards and publish them (or run them here with --local).
    #[command(after_help = commands::SUBMIT_EXIT_STATUS_HELP)]
    Submit(Box<SubmitArgs>),
    /// Shard counts by state and live progress of a run.
    Status {
        /// Run id.
        run: String,
        /// Refresh every SECS seconds (default 2) until the run finishes or is cancelled:
        /// redrawn in place on a terminal, appended blocks otherwise.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        #[command(flatten)]
        from: StoreChoice,
    },
    /// Results of a run: mean ± std over seeds per model × task (JSON: one object per shard).
    Results {
        /// Run id.
        run: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Summarise this metric instead of each task's primary one (e.g. accuracy).
        #[arg(long)]
        metric: Option<String>,
        #[command(flatten)]
        from: StoreChoice,
    },
    /// Compare models against a baseline model, per task, over one or more runs.
    Compare {
        /// Run ids.
        #[arg(required = true)]
        runs: Vec<String>,
        /// Baseline model (default: the first model in the results).
        #[arg(long)]
        baseline: Option<ModelId>,
        /// Compare this metric instead of each task's primary one.
        #[arg(long)]
        metric: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        from: StoreChoice,
    },
    /// Draw figures of one or more runs as PNG or SVG files: loss and dev-metric curves per
    /// model × task (mean over seeds, ± 1 std band), and per task the test metric, peak
    /// memory and wall time per model (mean, 95 % CI whiskers). Prints the files written;
    /// figures without data are skipped with a note on stderr.
    Plot {
        /// Run ids (pooled as `compare` pools them).
        #[arg(required = true)]
        runs: Vec<String>,
        /// Directory the files go to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// File formats, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "svg")]
        format: Vec<ImageFormat>,
        /// Plot this metric instead of each task's primary one.
        #[arg(long)]
        metric: Option<String>,
        #[command(flatten)]
        from: StoreChoice,
    },
    /// Draw the curve figures of JSON curve files (such as docs/figures/*.json, the
    /// BENCHMARKS.md figures); needs no broker or Redis. Prints the files written.
    PlotJson {
        /// Curve files (format: `cli/src/plot/curves.rs`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Directory the files go to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// File formats, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "svg")]
        format: Vec<ImageFormat>,
    },
    /// Live agents: device, current shard, last heartbeat.
    Agents {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        from: FleetOnly,
    },
    /// Recent runs.
    Runs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        from: StoreChoice,
    },
    /// Cancel a run: queued shards are skipped, running shards are stopped.
    Cancel {
        /// Run id.
        run: String,
        #[command(flatten)]
        from: FleetOnly,
    },
    /// Publish a run's failed, dead-lettered and cancelled shards again.
    Retry {
        /// Run id.
        run: String,
        /// Only failed and dead-lettered shards (not cancelled ones).
        #[arg(long)]
        failed_only: bool,
        #[command(flatten)]
        from: FleetOnly,
    },
    /// Messages in the dead-letter queue and the reasons agents gave.
    DeadLetters {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        from: FleetOnly,
    },
    /// Serve a read-only web dashboard of the fleet (or, with --local, of the runs
    /// `submit --local` kept): runs with progress and ETA, each run's shards, live loss
    /// and dev-metric curves, results and comparison, figures; agents, queues and dead
    /// letters. Also `GET /metrics` for Prometheus (run, shard, queue and agent gauges).
    Dashboard(DashboardArgs),
    /// The scale presets.
    Scales {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Benchmark datasets by name from the Hugging Face hub.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Model checkpoints by name from the Hugging Face hub.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `qsched completions bash > ~/.local/share/bash-completion/completions/qsched`.
    Completions {
        /// Shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run one shard from stdin (embedded mode's worker; not for direct use).
    #[command(hide = true)]
    Worker,
}

/// `qsched data ...`.
#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Fetch the train and validation splits of GLUE / SuperGLUE tasks from the hub's
    /// parquet files and write them as the files the task loaders read
    /// (<DATA_DIR>/glue/<Task>/{train,dev}.{tsv,jsonl}), listed in <DATA_DIR>/MANIFEST.json.
    /// Honours HF_ENDPOINT, HF_TOKEN, HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE.
    Fetch(DataFetchArgs),
}

#[derive(Args, Debug)]
struct DataFetchArgs {
    /// Benchmarks: glue, superglue.
    #[arg(required = true)]
    benchmarks: Vec<qsched_hub::datasets::Benchmark>,
    /// Only these tasks, comma-separated (e.g. sst2,rte,cb).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<shared::TaskId>>,
    /// Data directory to write into (default: $QSCHED_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The GLUE dataset repository (default nyu-mll/glue@main).
    #[arg(long, value_name = "ORG/NAME[@REV]")]
    glue: Option<String>,
    /// The SuperGLUE dataset repository (default aps/super_glue@refs/convert/parquet).
    #[arg(long, value_name = "ORG/NAME[@REV]")]
    superglue: Option<String>,
    /// Overwrite task files that MANIFEST.json does not list as fetched.
    #[arg(long)]
    force: bool,
}

/// `qsched models ...`.
#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Download a model's config, tokenizer files and safetensors weights into the Hugging
    /// Face cache; prints the snapshot folder and the commit. Honours HF_ENDPOINT,
    /// HF_TOKEN, HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE.
    Pull {
        /// The model: org/name[@revision], e.g. facebook/opt-125m or Qwen/Qwen3-0.6B@main.
        id: qsched_hub::RepoId,
    },
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// Spec file (TOML); flags override its fields.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Scale preset: tiny, demo (the default), small, medium, large.
    #[arg(long)]
    scale: Option<String>,
    /// Models (methods), comma-separated: qwen3, qwen3-ckpt, rev-qwen3, ft-opt, mezo-opt, dizo-opt.
    #[arg(long)]
    models: Option<String>,
    /// Tasks, comma-separated: sst2 cola mrpc stsb qnli rte wnli mnli qqp cb copa boolq wic wsc multirc.
    #[arg(long)]
    tasks: Option<String>,
    /// Seeds, comma-separated.
    #[arg(long)]
    seeds: Option<String>,
    /// Device class of the shards (cpu or cuda); default from the scale preset.
    #[arg(long)]
    device_class: Option<String>,
    /// Override a preset field, e.g. --set first_order.max_steps=500 (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Data directory holding glue/ and tokenizers/ (checked before anything is queued).
    #[arg(long, env = "QSCHED_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Run here instead of on the fleet: an in-process broker, and the embedded store
    /// (see --local-store) instead of Redis, which keeps the run for `results RUN --local`.
    #[arg(long)]
    local: bool,
    /// The embedded store file (with --local). Default: $QSCHED_LOCAL_STORE, else
    /// $XDG_DATA_HOME/qsched/local.redb, else ~/.local/share/qsched/local.redb.
    #[arg(long, value_name = "FILE", requires = "local")]
    local_store: Option<PathBuf>,
    /// Local devices, one agent each (with --local), e.g. cpu or cpu,cuda:0.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    devices: Vec<DeviceSpec>,
    /// Intra-op CPU threads per local worker (default: cores divided among CPU agents).
    #[arg(long)]
    threads: Option<u32>,
    /// Checkpoint directory for local workers.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Publish the shards an interrupted submit of RUN left unpublished (nothing else is
    /// resolved or recorded).
    #[arg(long, value_name = "RUN", conflicts_with_all = ["spec", "scale", "models", "tasks", "seeds", "device_class", "set", "local"])]
    resume: Option<String>,
    /// Block until the run ends, then print its results; the exit status says how it ended
    /// (see below).
    #[arg(long)]
    wait: bool,
    /// Refuse the submit (exit 1, nothing recorded or enqueued) when no live agent serves
    /// the run's device class; without it that is a warning.
    #[arg(long, conflicts_with = "local")]
    require_agents: bool,
    /// Results format (with --wait or --local).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// No progress bar with --wait or --local, and no "submitted run" line: only warnings,
    /// errors, the results and the run id print (for scripts).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct DashboardArgs {
    /// Address to serve on. Anything but loopback requires a token.
    #[arg(long, value_name = "ADDR", default_value = cli::dashboard::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// File whose first line is the access token (at least 16 characters). Open the
    /// dashboard once as http://HOST:PORT/?token=TOKEN (a cookie keeps it), or send
    /// `Authorization: Bearer TOKEN` (Prometheus: `authorization` in the scrape config).
    /// Or the token itself in QSCHED_DASHBOARD_TOKEN (never as an argument, where the
    /// process list would show it).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Link each shard to its trace: a URL with `{trace_id}`, e.g.
    /// http://localhost:16686/trace/{trace_id} (Jaeger).
    #[arg(long, value_name = "TEMPLATE", env = "QSCHED_TRACE_URL")]
    trace_url: Option<String>,
    /// Seconds between the page's refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    refresh: u64,
    #[command(flatten)]
    from: StoreChoice,
}

/// The stderr that log lines and the progress bar of `submit --wait | --local` share
/// (`cli::console` says why they must). Process-wide because the log writer is installed
/// once, before any command runs, while the bar exists only inside `submit`.
static CONSOLE: LazyLock<Arc<Console>> = LazyLock::new(|| Arc::new(Console::stderr()));

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Worker) {
        return worker();
    }
    if let Command::Completions { shell } = cli.command {
        // Needs no service: printed before the runtime and telemetry start.
        clap_complete::generate(shell, &mut Cli::command(), "qsched", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // The hub client blocks (reqwest's blocking client), which must not run inside the
    // async runtime; these commands need no broker or store, so they run before it starts.
    let command = match cli.command {
        Command::Data { command: DataCommand::Fetch(args) } => return print_hub_result(data_fetch(args)),
        Command::Models { command: ModelsCommand::Pull { id } } => return print_hub_result(models_pull(&id)),
        other => other,
    };
    let cli = Cli { conn: cli.conn, command };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _telemetry = shared::telemetry::init_with_writer("qsched", "warn", ConsoleLog(CONSOLE.clone()), ansi);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qsched: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A run that ended with failed, cancelled or dead-lettered shards: its own status.
        Err(e) => match e.downcast_ref::<commands::RunEnded>() {
            Some(ended) => {
                eprintln!("qsched: {ended}");
                ExitCode::from(ended.outcome.exit_code())
            }
            None => {
                eprintln!("qsched: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn print_hub_result(result: Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qsched: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hub_client() -> Result<qsched_hub::Hub> {
    Ok(qsched_hub::Hub::new(qsched_hub::HubConfig::from_env()?)?)
}

fn data_fetch(args: DataFetchArgs) -> Result<String> {
    let Some(data_dir) = shared::spec::data_dir_from(args.data_dir) else {
        bail!("no data directory: pass --data-dir or set QSCHED_DATA_DIR");
    };
    let kind = qsched_hub::RepoKind::Dataset;
    let mut options = qsched_hub::datasets::FetchOptions { force: args.force, ..Default::default() };
    if let Some(id) = &args.glue {
        options.glue = qsched_hub::RepoId::parse(id, kind)?;
    }
    if let Some(id) = &args.superglue {
        options.superglue = qsched_hub::RepoId::parse(id, kind)?;
    }
    let mut reporter = cli::hub::Reporter::stderr();
    cli::hub::data_fetch(&hub_client()?, &data_dir, &args.benchmarks, args.tasks.as_deref(), &options, &mut reporter)
}

fn models_pull(id: &qsched_hub::RepoId) -> Result<String> {
    cli::hub::models_pull(&hub_client()?, id, &mut cli::hub::Reporter::stderr())
}

#[cfg(feature = "embedded")]
fn worker() -> ExitCode {
    // Logs at qsched's own level: `RUST_LOG=info` shows every worker's progress lines.
    ExitCode::from(agent::worker::main_stdio_logging("warn") as u8)
}

#[cfg(not(feature = "embedded"))]
fn worker() -> ExitCode {
    eprintln!("qsched: this build has no embedded mode (built without the `embedded` feature)");
    ExitCode::FAILURE
}

async fn broker(conn: &Conn) -> Result<AmqpBroker> {
    Ok(AmqpBroker::connect(conn.endpoints.amqp_config(&conn.prefix)?).await?)
}

async fn store(conn: &Conn) -> Result<RedisStore> {
    Ok(RedisStore::connect_with(conn.endpoints.redis_config(&conn.prefix)?).await?)
}

/// The embedded store file: `--local-store`, else the environment's or the default one.
fn local_store_path(flag: Option<&Path>) -> Result<PathBuf> {
    Ok(shared::local_store::store_path(flag, |name| std::env::var_os(name))?)
}

/// The store a read command reads: Redis, or with `--local` the embedded store (which
/// must exist already: reading never creates one). Never one for the other: a Redis that
/// cannot be reached is an error, with a hint for runs of `submit --local`.
async fn read_store(conn: &Conn, from: &StoreChoice) -> Result<Box<dyn Store>> {
    if from.local {
        return Ok(Box::new(LocalStore::open(&local_store_path(from.local_store.as_deref())?)?));
    }
    match store(conn).await {
        Ok(store) => Ok(Box::new(store)),
        Err(e) => Err(e.context("cannot read Redis (a run of `qsched submit --local` is read with --local)")),
    }
}

/// Every run asked for must be in the store read; the error says where it looked ("run
/// 'x' not found" alone would not).
async fn check_runs(store: &dyn Store, conn: &Conn, from: &StoreChoice, runs: &[String]) -> Result<()> {
    for run in runs {
        if store.get_run(run).await?.is_some() {
            continue;
        }
        if from.local {
            let path = local_store_path(from.local_store.as_deref())?;
            bail!(
                "run '{run}' not found in the local store {} (`qsched runs --local` lists the runs in it)",
                path.display()
            );
        }
        bail!(
            "run '{run}' not found in Redis under prefix '{}' (a run of `qsched submit --local` is read with --local)",
            conn.prefix
        );
    }
    Ok(())
}

/// Refuses `--local` on a command that only a fleet can serve.
fn fleet_only(from: &FleetOnly, command: &str, why: &str) -> Result<()> {
    if from.local {
        bail!("`qsched {command}` needs a fleet (RabbitMQ and Redis); it has no --local form: {why}");
    }
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<()> {
    let conn = cli.conn;
    match cli.command {
        Command::Submit(args) => submit(&conn, *args).await,
        Command::Status { run, watch, from } => {
            let store = read_store(&conn, &from).await?;
            check_runs(store.as_ref(), &conn, &from, std::slice::from_ref(&run)).await?;
            // A local run has no broker: its queue lived and died in its own process.
            let broker = if from.local { None } else { broker(&conn).await.ok() };
            let broker = broker.as_ref().map(|b| b as &dyn shared::broker::BrokerAdmin);
            let Some(secs) = watch else {
                print!("{}", commands::status(store.as_ref(), broker, &run).await?);
                return Ok(());
            };
            watch_status(store.as_ref(), broker, &run, Duration::from_secs(secs.max(1))).await
        }
        Command::Results { run, format, metric, from } => {
            let store = read_store(&conn, &from).await?;
            check_runs(store.as_ref(), &conn, &from, std::slice::from_ref(&run)).await?;
            let (text, results, record) = commands::results(store.as_ref(), &run, format, metric.as_deref()).await?;
            println!("{text}");
            if format != Format::Json && results.len() < record.shard_count as usize {
                eprintln!("{} of {} shards have results so far", results.len(), record.shard_count);
            }
            Ok(())
        }
        Command::Compare { runs, baseline, metric, format, from } => {
            let store = read_store(&conn, &from).await?;
            check_runs(store.as_ref(), &conn, &from, &runs).await?;
            print!("{}", commands::compare(store.as_ref(), &runs, baseline, metric.as_deref(), format).await?);
            Ok(())
        }
        Command::Plot { runs, out, format, metric, from } => {
            let store = read_store(&conn, &from).await?;
            check_runs(store.as_ref(), &conn, &from, &runs).await?;
            report_plotted(plot::plot_runs(store.as_ref(), &runs, metric.as_deref(), &out, &format).await?);
            Ok(())
        }
        Command::PlotJson { files, out, format } => {
            report_plotted(plot::plot_json(&files, &out, &format)?);
            Ok(())
        }
        Command::Agents { format, from } => {
            fleet_only(
                &from,
                "agents",
                "the agents of `submit --local` live inside that process and stop with it; \
                 `qsched status RUN --local` shows which agent ran each shard",
            )?;
            let store = store(&conn).await?;
            print!("{}", commands::agents(&store, format).await?);
            Ok(())
        }
        Command::Runs { limit, from } => {
            let store = read_store(&conn, &from).await?;
            print!("{}", commands::runs(store.as_ref(), limit).await?);
            Ok(())
        }
        Command::Cancel { run, from } => {
            fleet_only(&from, "cancel", "a local run is stopped by interrupting its `submit --local` (Ctrl-C)")?;
            let store = store(&conn).await?;
            let counts = scheduler::cancel(&run, &store).await?;
            let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{} {n}", s.as_str())).collect();
            println!("run {run} cancelled ({})", parts.join(", "));
            Ok(())
        }
        Command::Retry { run, failed_only, from } => {
            fleet_only(&from, "retry", "run the spec again with `submit --local` (same spec, same shard ids)")?;
            let store = store(&conn).await?;
            let broker = broker(&conn).await?;
            let selection = if failed_only {
                scheduler::RetrySelection::FailedOnly
            } else {
                scheduler::RetrySelection::Unsuccessful
            };
            let ids = scheduler::retry(&run, selection, &broker, &store).await?;
            println!("run {run}: {} shard(s) published again", ids.len());
            Ok(())
        }
        Command::DeadLetters { limit, from } => {
            fleet_only(
                &from,
                "dead-letters",
                "a local run's broker lives in its own process; its dead-lettered shards show in \
                 `qsched status RUN --local` and `results RUN --local`",
            )?;
            let store = store(&conn).await?;
            let broker = broker(&conn).await?;
            print!("{}", commands::dead_letters(&store, &broker, limit).await?);
            Ok(())
        }
        Command::Dashboard(args) => dashboard(&conn, args).await,
        Command::Scales { format } => {
            print!("{}", commands::scales(format)?);
            Ok(())
        }
        Command::Worker | Command::Completions { .. } | Command::Data { .. } | Command::Models { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// `qsched dashboard`: binds, says where, serves until Ctrl-C or SIGTERM.
async fn dashboard(conn: &Conn, args: DashboardArgs) -> Result<()> {
    use cli::dashboard::{self, Source, access::Access, views::TraceLinks};
    let from_env = std::env::var("QSCHED_DASHBOARD_TOKEN").ok().filter(|t| !t.is_empty());
    let token = match (&args.token_file, from_env) {
        (Some(_), Some(_)) => {
            bail!("the dashboard token is given twice: --token-file and QSCHED_DASHBOARD_TOKEN; keep one")
        }
        (Some(file), None) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", file.display()))?;
            Some(text.lines().next().unwrap_or("").to_owned())
        }
        (None, token) => token,
    };
    let config = dashboard::Config {
        listen: args.listen,
        access: Access::new(args.listen, token)?,
        traces: TraceLinks::new(args.trace_url)?,
        refresh_secs: args.refresh,
    };
    let source = if args.from.local {
        let path = local_store_path(args.from.local_store.as_deref())?;
        // Reading never creates the file: open it once now so a wrong path fails here.
        drop(LocalStore::open(&path)?);
        Source::Local { path }
    } else {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
            store(conn)
                .await
                .map_err(|e| e.context("cannot read Redis (the runs of `submit --local` are served with --local)"))?,
        );
        let for_broker = conn.clone();
        Source::Fleet {
            store,
            connect: Box::new(move || {
                let conn = for_broker.clone();
                Box::pin(async move {
                    let b: std::sync::Arc<dyn shared::broker::BrokerAdmin> = std::sync::Arc::new(broker(&conn).await?);
                    Ok(b)
                })
            }),
            described: format!("Redis, prefix {}", conn.prefix),
        }
    };
    let server = dashboard::Dashboard::bind(config, source).await?;
    let address = server.local_addr();
    eprintln!("qsched dashboard at http://{address}/ (Ctrl-C stops it)");
    server.run(shared::shutdown::signal()).await
}

/// The files a plot command wrote, one path a line on stdout; what it skipped on stderr.
fn report_plotted(plotted: plot::Plotted) {
    for line in &plotted.skipped {
        eprintln!("skipped {line}");
    }
    for path in &plotted.written {
        println!("{}", path.display());
    }
}

/// `qsched status RUN --watch`: a block every `every` until the run finishes or is
/// cancelled, then the final block and why the watch stopped (exit status 0).
async fn watch_status(
    store: &dyn Store,
    broker: Option<&dyn shared::broker::BrokerAdmin>,
    run: &str,
    every: Duration,
) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let record = commands::get_run(store, run).await?;
    let stdout = std::io::stdout();
    let mode = cli::live::WatchMode::choose(stdout.is_terminal(), std::env::var("TERM").ok().as_deref());
    let mut screen = cli::live::WatchScreen::new(mode);
    loop {
        // Decided before the block is read, so the final block shows the end it names.
        let stop = commands::watch_stop(store, &record).await?;
        let block = commands::status(store, broker, run).await?;
        let mut out = stdout.lock();
        out.write_all(screen.frame(&block).as_bytes())?;
        if let Some(why) = &stop {
            writeln!(out, "watch stopped: {why}")?;
        }
        out.flush()?;
        drop(out);
        if stop.is_some() {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

/// The progress bar of `submit --wait` / `--local` on stderr, with log lines written
/// above it until it is dropped; hidden with `--quiet`.
fn progress_bar(total: usize, quiet: bool) -> ShownBar<'static> {
    if quiet {
        return CONSOLE.show(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} shards {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    CONSOLE.show(bar)
}

fn progress_message(counts: &std::collections::BTreeMap<shared::shard::ShardState, usize>) -> String {
    counts.iter().map(|(s, n)| format!("{} {n}", s.as_str())).collect::<Vec<_>>().join(", ")
}

async fn submit(conn: &Conn, args: SubmitArgs) -> Result<()> {
    if let Some(run) = &args.resume {
        let broker = broker(conn).await?;
        let store = store(conn).await?;
        if let Some(class) = commands::get_run(&store, run).await?.shards.first().map(|s| s.device_class)
            && let Some(warning) = commands::check_agents(&store, class, &conn.prefix, args.require_agents).await?
        {
            eprintln!("{warning}");
        }
        let published = scheduler::resume(run, &broker, &store).await?;
        if published.is_empty() {
            eprintln!("run {run} was fully published; nothing to resume");
        } else {
            eprintln!("run {run}: published the {} shard(s) the interrupted submit had not", published.len());
        }
        return finish_submit(&store, &broker, run, &args).await;
    }
    let flags = SpecFlags {
        spec: args.spec.clone(),
        scale: args.scale.clone(),
        models: args.models.clone(),
        tasks: args.tasks.clone(),
        seeds: args.seeds.clone(),
        device_class: args.device_class.clone(),
        set: args.set.clone(),
    };
    let spec = commands::resolve_spec(&flags)?;
    if let Some(dir) = &args.data_dir {
        spec.check_data(dir)?;
    }
    if args.local {
        return submit_local(spec, args).await;
    }
    // Connect to both services before publishing anything.
    let broker = broker(conn).await?;
    let store = store(conn).await?;
    // With --require-agents this refuses before anything is recorded.
    if let Some(warning) = commands::check_agents(&store, spec.device_class, &conn.prefix, args.require_agents).await? {
        eprintln!("{warning}");
    }
    let run_id = scheduler::new_run_id();
    let record = match scheduler::submit(&spec, &run_id, &broker, &store).await {
        Ok(record) => record,
        Err(e) => {
            use shared::store::Store as _;
            if matches!(store.get_run(&run_id).await, Ok(Some(_))) {
                bail!(
                    "{e}\nrun {run_id} is recorded but not every shard was published: \
                     `qsched submit --resume {run_id}` publishes the rest"
                );
            }
            return Err(e.into());
        }
    };
    if !args.quiet {
        eprintln!(
            "submitted run {run_id}: {} shard(s) ({} on {} agents)",
            record.shard_count, spec.name, spec.device_class
        );
    }
    finish_submit(&store, &broker, &run_id, &args).await
}

/// After publishing: with `--wait`, follow the run and print its results; then the run
/// id. A waited-for run with shards that did not succeed ends in [`commands::RunEnded`].
async fn finish_submit(store: &RedisStore, broker: &AmqpBroker, run_id: &str, args: &SubmitArgs) -> Result<()> {
    if args.wait {
        let record = commands::get_run(store, run_id).await?;
        let shown = progress_bar(record.shard_count as usize, args.quiet);
        let counts = commands::wait_for_run(store, Some(broker), run_id, Duration::from_secs(1), |done, _, counts| {
            shown.bar().set_position(done as u64);
            shown.bar().set_message(progress_message(counts));
        })
        .await?;
        drop(shown);
        let (text, _, _) = commands::results(store, run_id, args.format, None).await?;
        println!("{text}");
        if args.format != Format::Json {
            println!("{run_id}");
        }
        return Ok(commands::run_result(run_id, &counts)?);
    }
    println!("{run_id}");
    Ok(())
}

#[cfg(feature = "embedded")]
async fn submit_local(spec: shared::spec::BenchmarkSpec, args: SubmitArgs) -> Result<()> {
    use anyhow::Context;
    use cli::render;
    let data_dir =
        args.data_dir.clone().context("--local needs a data directory: pass --data-dir or set QSCHED_DATA_DIR")?;
    spec.check_data(&data_dir)?;
    let exe = agent::supervisor::self_exe()?;
    let store = local_store_path(args.local_store.as_deref())?;
    let opts = cli::embedded::LocalOptions {
        devices: args.devices.clone(),
        data_dir,
        checkpoint_dir: args.checkpoint_dir.clone(),
        threads: args.threads,
        worker_command: vec![exe.into_os_string(), "worker".into()],
        store: store.clone(),
        log: agent::supervisor::WorkerStderr::Lines(Arc::new(|line: &str| CONSOLE.line(line))),
    };
    let total = spec.models.len() * spec.tasks.len() * spec.seeds.len();
    let shown = progress_bar(total, args.quiet);
    let (run_id, results, counts) = cli::embedded::run_local(&spec, opts, |done, _, counts| {
        shown.bar().set_position(done as u64);
        shown.bar().set_message(progress_message(counts));
    })
    .await?;
    drop(shown);
    println!("{}", render::render_results(&results, args.format));
    if !args.quiet {
        let from =
            if args.local_store.is_some() { format!(" --local-store {}", store.display()) } else { String::new() };
        eprintln!(
            "run {run_id} is kept in {}: `qsched results {run_id} --local{from}` shows it again",
            store.display()
        );
    }
    if args.format != Format::Json {
        println!("{run_id}");
    } else {
        eprintln!("run {run_id}");
    }
    Ok(commands::run_result(&run_id, &counts)?)
}

#[cfg(not(feature = "embedded"))]
async fn submit_local(_spec: shared::spec::BenchmarkSpec, _args: SubmitArgs) -> Result<()> {
    bail!("this qsched was built without the `embedded` feature; --local is unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_commands_parse() {
        let cli = Cli::try_parse_from(["qsched", "data", "fetch", "glue", "superglue", "--tasks", "sst2,cb"]).unwrap();
        let Command::Data { command: DataCommand::Fetch(args) } = cli.command else { panic!() };
        assert_eq!(args.benchmarks.len(), 2);
        assert_eq!(args.tasks, Some(vec![shared::TaskId::Sst2, shared::TaskId::Cb]));
        let err = Cli::try_parse_from(["qsched", "data", "fetch"]).unwrap_err().to_string();
        assert!(err.contains("<BENCHMARKS>"), "{err}");
        let cli = Cli::try_parse_from(["qsched", "models", "pull", "Qwen/Qwen3-0.6B@main"]).unwrap();
        let Command::Models { command: ModelsCommand::Pull { id } } = cli.command else { panic!() };
        assert_eq!((id.path(), id.revision()), ("Qwen/Qwen3-0.6B".to_string(), "main"));
        let err = Cli::try_parse_from(["qsched", "models", "pull", "gpt2"]).unwrap_err().to_string();
        assert!(err.contains("invalid hub id 'gpt2'"), "{err}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Each shell's script names the binary and the subcommands.
    #[test]
    fn completions_for_each_shell() {
        for (shell, marker) in [
            (clap_complete::Shell::Bash, "_qsched()"),
            (clap_complete::Shell::Zsh, "#compdef qsched"),
            (clap_complete::Shell::Fish, "complete -c qsched"),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "qsched", &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains(marker), "{shell}: {script}");
            for sub in ["submit", "results", "compare", "scales", "completions"] {
                assert!(script.contains(sub), "{shell} lacks {sub}");
            }
        }
    }

    #[test]
    fn submit_help_documents_the_exit_statuses_and_require_agents() {
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("submit").unwrap().render_long_help().to_string();
        assert!(help.contains(commands::SUBMIT_EXIT_STATUS_HELP.lines().next().unwrap()), "{help}");
        assert!(help.contains("5  with --wait or --local: at least one shard was dead-lettered"), "{help}");
        assert!(help.contains("--require-agents"), "{help}");
        let cli = Cli::try_parse_from(["qsched", "submit", "--local", "--require-agents"]);
        assert!(cli.is_err(), "--require-agents with --local");
        let cli = Cli::try_parse_from(["qsched", "scales", "--format", "csv"]).unwrap();
        assert!(matches!(cli.command, Command::Scales { format: Format::Csv }));
    }

    #[test]
    fn plot_takes_runs_an_output_directory_and_formats() {
        let cli = Cli::try_parse_from(["qsched", "plot", "r1", "r2", "--out", "figs", "--format", "png,svg"]).unwrap();
        let Command::Plot { runs, out, format, metric, .. } = cli.command else { panic!() };
        assert_eq!((runs, out, metric), (vec!["r1".to_owned(), "r2".to_owned()], PathBuf::from("figs"), None));
        assert_eq!(format, [ImageFormat::Png, ImageFormat::Svg]);
        let Command::Plot { format, .. } = Cli::try_parse_from(["qsched", "plot", "r1", "--out", "d"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(format, [ImageFormat::Svg]);
        assert!(Cli::try_parse_from(["qsched", "plot", "--out", "d"]).is_err(), "a run is required");
        assert!(Cli::try_parse_from(["qsched", "plot", "r1"]).is_err(), "--out is required");
        assert!(Cli::try_parse_from(["qsched", "plot", "r1", "--out", "d", "--format", "jpg"]).is_err());
        let cli = Cli::try_parse_from(["qsched", "plot-json", "a.json", "--out", "d", "--format", "png"]).unwrap();
        assert!(matches!(cli.command, Command::PlotJson { files, format, .. }
            if files == [PathBuf::from("a.json")] && format == [ImageFormat::Png]));
    }

    /// `--local` picks the embedded store on the read commands; `--local-store` only
    /// names its file, so it needs `--local` (the environment variable does not).
    #[test]
    fn read_commands_take_local_and_a_store_file() {
        for command in [&["results", "r-1"][..], &["status", "r-1"], &["compare", "r-1", "r-2"], &["runs"]] {
            let parse = |extra: &[&str]| Cli::try_parse_from(["qsched"].iter().chain(command).chain(extra));
            assert!(parse(&["--local"]).is_ok(), "{command:?}");
            assert!(parse(&["--local", "--local-store", "/tmp/x.redb"]).is_ok(), "{command:?}");
            let err = parse(&["--local-store", "/tmp/x.redb"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{command:?}");
        }
        let cli =
            Cli::try_parse_from(["qsched", "plot", "r-1", "--out", "d", "--local", "--local-store", "s.redb"]).unwrap();
        let Command::Plot { from, .. } = cli.command else { panic!() };
        assert!(from.local && from.local_store == Some(PathBuf::from("s.redb")));
        let cli = Cli::try_parse_from(["qsched", "submit", "--local", "--local-store", "s.redb"]).unwrap();
        assert!(matches!(cli.command, Command::Submit(a) if a.local_store == Some(PathBuf::from("s.redb"))));
        assert!(Cli::try_parse_from(["qsched", "submit", "--local-store", "s.redb"]).is_err(), "without --local");
    }

    #[test]
    fn fleet_only_commands_refuse_local_with_the_reason() {
        for command in [&["cancel", "r-1"][..], &["retry", "r-1"], &["dead-letters"], &["agents"]] {
            let cli = Cli::try_parse_from(["qsched"].iter().chain(command).chain(&["--local"]));
            assert!(cli.is_ok(), "{command:?}: --local is accepted, to be refused with the reason");
        }
        let err = fleet_only(&FleetOnly { local: true }, "cancel", "stop it with Ctrl-C").unwrap_err().to_string();
        assert!(err.contains("`qsched cancel` needs a fleet") && err.contains("Ctrl-C"), "{err}");
        assert!(fleet_only(&FleetOnly::default(), "cancel", "").is_ok());
        let help = Cli::command().find_subcommand_mut("cancel").unwrap().render_long_help().to_string();
        assert!(!help.contains("--local"), "not listed: {help}");
    }

    #[test]
    fn status_watch_takes_an_optional_period_and_submit_a_quiet_flag() {
        let watch = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Status { watch, .. } => watch,
            other => panic!("{other:?}"),
        };
        assert_eq!(watch(&["qsched", "status", "r-1"]), None);
        assert_eq!(watch(&["qsched", "status", "r-1", "--watch"]), Some(2));
        assert_eq!(watch(&["qsched", "status", "r-1", "--watch", "5"]), Some(5));
        let cli = Cli::try_parse_from(["qsched", "submit", "--wait", "--quiet"]).unwrap();
        assert!(matches!(cli.command, Command::Submit(args) if args.quiet && args.wait));
    }
}
