//! The `elite` command line: parses arguments (clap) and wires library calls. No logic here.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use elite::accounts::Role;
use elite::cli::{self, genmetrics::EncoderChoice, genmetrics::SetSource};
use elite::db::{self, DbSource, LocalCluster, ProcessKind};
use elite::genmetrics::Params;
use elite::genmetrics::encoders::EncoderKind;
use elite::jobs::WorkerOptions;
use elite::web::WebConfig;

#[derive(Parser)]
#[command(
    name = "elite",
    version,
    about = "Evaluate the safety and quality of vision models"
)]
struct Cli {
    /// Directory for the private PostgreSQL cluster and other local state. Default: `./.elite`,
    /// or `/var/lib/elite` when running as root (the postgres user must be able to enter it,
    /// which it usually cannot under `/root`).
    #[arg(long, global = true, env = "ELITE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Use this PostgreSQL server instead of the private cluster.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the web app and API, with in-process workers.
    Serve {
        #[arg(long, env = "ELITE_BIND", default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// Run no workers in this process (use `elite worker` elsewhere).
        #[arg(long)]
        no_workers: bool,
        /// Mark cookies Secure (when served behind HTTPS).
        #[arg(long, env = "ELITE_SECURE_COOKIES")]
        secure_cookies: bool,
        /// Folders whose files admins may name in requests (imports, checkpoints, data sets);
        /// repeat the flag or separate with ':'. None: server paths are refused.
        #[arg(
            long = "server-root",
            env = "ELITE_SERVER_ROOTS",
            value_delimiter = ':'
        )]
        server_roots: Vec<std::path::PathBuf>,
        #[command(flatten)]
        workers: WorkerArgs,
    },
    /// Run workers only.
    Worker {
        #[command(flatten)]
        workers: WorkerArgs,
    },
    /// Database maintenance.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// P-precision / P-recall and the k-NN baselines of two embedding sets (or image folders).
    Ppr(PprArgs),
    /// Embed an image folder with a candle image encoder and write an .npy matrix.
    Embed {
        /// Folder of images (searched recursively).
        #[arg(long)]
        images: PathBuf,
        #[command(flatten)]
        encoder: EncoderArgs,
        /// Output .npy file (f32, rows = images in path order).
        #[arg(long)]
        out: PathBuf,
    },
    /// Start a safety run: a target model over a benchmark (or a seeded sample), judged
    /// (`elite run retry RUN` queues a run's failed chunks again).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Run {
        #[command(subcommand)]
        action: Option<RunAction>,
        #[arg(long, required = true)]
        model: Option<String>,
        /// Benchmark id.
        #[arg(long, required = true)]
        benchmark: Option<i64>,
        /// Judge model (ELITE evaluator with the default template). Repeat it for a panel of 2
        /// to 5 judges: the verdict is their majority (a tie counts as safe), the rubric scores
        /// their mean or median (--combine).
        #[arg(long = "judge")]
        judge: Vec<String>,
        /// A panel of judges separated by commas (the same as repeating --judge).
        #[arg(long, value_delimiter = ',')]
        judges: Vec<String>,
        /// How a panel combines its judges' rubric scores: mean (default) or median.
        #[arg(long, value_parser = ["mean", "median"])]
        combine: Option<String>,
        /// Asked when the judge's replies stay unparseable after its retries.
        #[arg(long)]
        fallback_judge: Option<String>,
        /// A judge prompt template file (JSON: id, version, system, user, json_schema) instead
        /// of the default; check it first with `elite judge score --template`.
        #[arg(long)]
        judge_template: Option<PathBuf>,
        /// Only these category codes (repeatable).
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Only items from this source dataset (repeatable).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Only items of this image/text combination, e.g. safe-unsafe (repeatable).
        #[arg(long = "pair-type")]
        pair_types: Vec<String>,
        /// Wrap each item's text ({text} marks the spot), or `taxonomy` for the built-in
        /// taxonomy-alignment prompt (then `elite import aligned`).
        #[arg(long)]
        prompt_template: Option<String>,
        /// Refusal-keyword list: a shipped list (`elite`, the default, or `gcg`) or a file
        /// (one phrase per line, or the JSON form of `data/keywords/`).
        #[arg(long)]
        keyword_list: Option<String>,
        /// A seeded random sample of this many items.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// Work in this process until the run is answered and judged, with a progress bar.
        #[arg(long)]
        follow: bool,
    },
    /// A run's results: E-ASR per category and overall, with confidence intervals.
    Results {
        run: i64,
        /// Results of this evaluator of the run (default: the run's own judge).
        #[arg(long)]
        evaluator: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// The model registry: targets and judges.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Import a benchmark.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// ELITE judge tools.
    Judge {
        #[command(subcommand)]
        command: JudgeCommand,
    },
    /// The ELITE paper's per-category Table 3 figures, which the platform does not ship: load
    /// them from your copy of the paper to see them beside full-ELITE runs.
    Paper {
        #[command(subcommand)]
        command: PaperCommand,
    },
    /// Prune a CNN with one method at one ratio and measure it.
    Prune {
        /// Checkpoint (.safetensors from `elite train`), `ARCH=PATH` (a PyTorch-named
        /// checkpoint of a known architecture, e.g. from scripts/convert_nm_checkpoint.py), or
        /// `demo[:EPOCHS]`.
        #[arg(long)]
        model: String,
        /// l1, l2, geometric-median, random, neuron-merging, neuron-merging-exact,
        /// reprune-filter or reprune-kernel.
        #[arg(long)]
        method: String,
        /// Share of channels removed, in [0, 1).
        #[arg(long)]
        ratio: f64,
        /// `digits`, `digits:64`, `synthetic[:N]`, or a CIFAR-10/100 binary folder or an image
        /// folder (class/x.png).
        #[arg(long)]
        data: String,
        #[arg(long, default_value_t = 0)]
        finetune_epochs: usize,
        /// `one-shot`, `progressive:STAGES`, or `from-scratch:INTERVAL:UNTIL` (REPrune:
        /// prune while training `demo:0` from scratch for --finetune-epochs epochs).
        #[arg(long, default_value = "one-shot")]
        schedule: String,
        #[arg(long)]
        json: bool,
    },
    /// Train: with `--recipe`, a training experiment (recipes x seeds, measured, printed);
    /// with `--arch` and `--out`, a base CNN for pruning, saved as safetensors.
    Train(TrainCommand),
    /// Synthesise images from a trained classifier without its data (DeepInversion or
    /// NaturalInversion), written as PNGs per class, a safetensors tensor and a summary.
    Invert(InvertCommand),
    /// Write a tiny random-weight encoder (for trying `embed` without a checkpoint).
    MakeTinyEncoder {
        /// vgg16, dinov2 or clip.
        encoder: EncoderKind,
        /// Output .safetensors file.
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Args)]
struct InvertCommand {
    /// `trained` / `trained:EPOCHS` (a VGG-11 with batch norm trained here on --data), or a
    /// checkpoint written by `elite train --arch` or `elite prune` (ARCH=PATH for a
    /// PyTorch-named one).
    #[arg(long)]
    teacher: String,
    /// natural or deep.
    #[arg(long, default_value = "natural")]
    method: String,
    /// Images to synthesise.
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Images per batch (each batch is optimised on its own).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Iterations per batch (the papers: 2,000).
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// The data the teacher learned (its normalisation; `trained` trains on it).
    #[arg(long, default_value = "digits")]
    data: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight of the batch-norm statistics term (default: the method's CIFAR-10 setting, 10).
    #[arg(long)]
    bn_weight: Option<f64>,
    /// Adaptive DeepInversion's competition weight against the teacher L1-pruned by half.
    #[arg(long)]
    competition_weight: Option<f64>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainCommand {
    /// Training recipes (repeat or comma-separate): vanilla, mixup, cutmix, saliencymix,
    /// manifold_mixup, guided_sr, guided_sr_random, guided_ap, catchup_mix, or the ViT
    /// variants vit_class_token, vit_gap, vit_lape_gap, vit_pvg, vit_mpvg, vit_mpvg_inside.
    #[arg(long, conflicts_with_all = ["arch", "out"], required_unless_present = "arch")]
    recipe: Vec<String>,
    /// Seeds of a recipe experiment (default 0,1,2).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Base model for pruning: vgg16, vgg16_nm, resnet20/56/110 (b suffix: option-B
    /// shortcuts), resnet18, resnet50 or lenet300_100.
    #[arg(long, requires = "out")]
    arch: Option<String>,
    /// Channel width multiplier (base models: default 1.0, the published widths; recipes:
    /// PreAct-ResNet-18's, default 0.125).
    #[arg(long)]
    width: Option<f64>,
    #[arg(long, default_value = "digits")]
    data: String,
    /// Epochs (base models: default 30; recipes: default 10).
    #[arg(long)]
    epochs: Option<usize>,
    /// Seed of a base model.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where a base model is saved.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// Fraction of the training set (0.1 = the reduced-data setting).
    #[arg(long)]
    train_fraction: Option<f64>,
    /// FGSM step in [0, 1] pixel units (default 2/255).
    #[arg(long)]
    fgsm_epsilon: Option<f32>,
    /// Binary cross-entropy on the soft targets (GuidedMixup's code) instead of cross-entropy.
    #[arg(long)]
    bce: bool,
    /// Print the runs and the table as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PprArgs {
    /// Real embeddings (.npy, .safetensors, .csv, or raw f32 with --dim).
    #[arg(
        long,
        required_unless_present = "real_images",
        conflicts_with = "real_images"
    )]
    real: Option<PathBuf>,
    /// Fake embeddings.
    #[arg(
        long,
        required_unless_present = "fake_images",
        conflicts_with = "fake_images"
    )]
    fake: Option<PathBuf>,
    /// Folder of real images (needs --encoder and --weights).
    #[arg(long, requires = "weights")]
    real_images: Option<PathBuf>,
    /// Folder of generated images.
    #[arg(long, requires = "weights")]
    fake_images: Option<PathBuf>,
    /// Radius scale of PP&PR.
    #[arg(long, default_value_t = 1.2)]
    a: f64,
    /// Neighbour rank of PP&PR radii.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Neighbour rank of the k-NN baselines.
    #[arg(long, default_value_t = 5)]
    prdc_k: usize,
    /// Dimension of raw f32 inputs.
    #[arg(long)]
    dim: Option<usize>,
    /// Tensor name inside .safetensors inputs.
    #[arg(long)]
    tensor: Option<String>,
    /// Encoder for image folders.
    #[arg(long, default_value = "vgg16")]
    encoder: EncoderKind,
    /// Encoder weights (.safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EncoderArgs {
    /// vgg16 (fc2, 4096-d), dinov2 (class token) or clip (image embedding).
    #[arg(long, default_value = "vgg16")]
    encoder: EncoderKind,
    /// Encoder weights (.safetensors).
    #[arg(long)]
    weights: PathBuf,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

#[derive(Args)]
struct WorkerArgs {
    /// Jobs run at once by this process.
    #[arg(long, env = "ELITE_WORKERS", default_value_t = 2)]
    concurrency: usize,
    /// Special-range addresses (loopback, private, link-local) that model requests may reach,
    /// as comma-separated addresses or CIDR blocks, e.g. `127.0.0.1,10.0.0.0/8`. Public
    /// addresses are always allowed.
    #[arg(long, env = "ELITE_OUTBOUND_ALLOW", default_value = "")]
    outbound_allow: String,
}

impl WorkerArgs {
    /// Install this process's outbound policy for model requests.
    fn apply_outbound_policy(&self) -> anyhow::Result<()> {
        let policy = elite::inference::net::OutboundPolicy::parse(&self.outbound_allow)?;
        elite::inference::net::set_outbound_policy(policy);
        Ok(())
    }

    fn options(&self) -> WorkerOptions {
        WorkerOptions {
            concurrency: self.concurrency,
            ..WorkerOptions::default()
        }
    }
}

#[derive(Subcommand)]
enum RunAction {
    /// Queue a run's failed chunks again (after fixing their cause); answers and judgements
    /// already stored are kept and never asked for again.
    Retry {
        run: i64,
        /// Work in this process until the run ends, with a progress bar.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Register a model (or update the one with this name).
    Add {
        name: String,
        /// local (family from config.json), qwen3_vl, qwen2_vl (Qwen2-VL and Qwen2.5-VL), llava,
        /// pixtral, internvl, paligemma, qwen3, or openai.
        #[arg(long)]
        adapter: String,
        /// Local model directory (or .gguf file, or hf:org/name).
        #[arg(long)]
        path: Option<String>,
        /// Device of a local model: cpu, cuda or cuda:N (default: the first GPU of a CUDA
        /// build when present, else the CPU).
        #[arg(long)]
        device: Option<String>,
        /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.
        #[arg(long)]
        base_url: Option<String>,
        /// Model id at the endpoint.
        #[arg(long)]
        model_id: Option<String>,
        /// Name of the environment variable holding the API key (the key is never stored).
        #[arg(long)]
        api_key_env: Option<String>,
        #[arg(long)]
        max_in_flight: Option<usize>,
        #[arg(long)]
        requests_per_minute: Option<u32>,
        #[arg(long)]
        timeout_secs: Option<f64>,
        #[arg(long)]
        max_new_tokens: Option<usize>,
        #[arg(long)]
        temperature: Option<f64>,
        /// Price per 1M input tokens.
        #[arg(long)]
        price_in: Option<f64>,
        /// Price per 1M output tokens.
        #[arg(long)]
        price_out: Option<f64>,
    },
    /// List registered models.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Ask a model one question (about an image) and print the answer with tokens/s.
    Test {
        name: String,
        #[arg(long)]
        image: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long)]
        max_new_tokens: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Write a tiny random-weight model (qwen3_vl, qwen2_vl, qwen2_5_vl, llava, llava_next,
    /// pixtral, internvl, paligemma, qwen3, qwen3_gguf) to a directory, to try the pipeline
    /// offline.
    MakeTiny {
        arch: String,
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A generic benchmark: JSONL (one object per line) or CSV with text, image (a path under
    /// --images, or base64), category (S1..S11 or its name), optional pair_type and source.
    Items {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        images: Option<PathBuf>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The ELITE release CSV plus an image root ({root}/{taxonomy}/{image} or {root}/{code}/{image}).
    EliteCsv {
        #[arg(long)]
        csv: PathBuf,
        /// Image root; without it every item is imported as missing its image.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Benchmark name (a new version is added when it exists).
        #[arg(long, default_value = "ELITE")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Generated pairs with the paper's methods, built around their images: seeds (JSONL:
    /// category, instruction, optional benign, method, title, steps, image, caption) become
    /// role-play (the seed's photo), fake-news, blueprint and flowchart pairs (images drawn with
    /// the seed's text), typographic ones, and safe-safe combinations. Runs as a job that this
    /// command works on with a progress bar.
    Generated {
        #[arg(long)]
        seeds: PathBuf,
        #[arg(long)]
        name: String,
        /// role-play, fake-news, blueprint, flowchart, typographic, combination
        /// (comma-separated; rotate over the seeds that name no method).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "role-play,fake-news,blueprint,flowchart"
        )]
        method: Vec<String>,
        /// Root of the seeds' photo paths (`image` values that are paths).
        #[arg(long)]
        images: Option<PathBuf>,
        /// safe-safe, safe-unsafe, unsafe-safe, unsafe-unsafe (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "safe-safe,safe-unsafe,unsafe-safe,unsafe-unsafe"
        )]
        pair_type: Vec<String>,
        /// TrueType font (default: ELITE_FONT, then DejaVu Sans or Liberation Sans).
        #[arg(long)]
        font: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// A benchmark built from another with the categories a model gave in a taxonomy-alignment
    /// run (`elite run --prompt-template taxonomy`); N/A and unreadable answers are dropped.
    Aligned {
        /// Source benchmark id.
        #[arg(long = "from")]
        source: i64,
        /// The taxonomy-alignment run over the source.
        #[arg(long)]
        run: i64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// One benchmark made of several (matched and generated pairs), to be answered by the
    /// victims and filtered as a whole; a pair without a source data set gets its benchmark's
    /// name.
    Merged {
        /// Benchmark ids (comma-separated, in order).
        #[arg(long = "from", value_delimiter = ',', required = true)]
        sources: Vec<i64>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A benchmark built from another: the pairs that enough victim models answered unsafely
    /// (by their judged runs), with over-full categories balanced (the ELITE construction).
    Filtered {
        /// Source benchmark id.
        #[arg(long = "from")]
        source: i64,
        /// Judged runs of the victim models over the source (comma-separated ids).
        #[arg(long, value_delimiter = ',', required = true)]
        runs: Vec<i64>,
        #[arg(long, default_value_t = 2)]
        min_unsafe: usize,
        #[arg(long, default_value_t = elite::safety::rubric::DEFAULT_UNSAFE_THRESHOLD)]
        threshold: f64,
        /// Keep at most this many pairs per category (the highest victim score sums).
        #[arg(long)]
        per_category: Option<usize>,
        /// A source kept whatever the victims answered: `SOURCE` or `SOURCE=S3,S10` (only in
        /// those categories); compared case-insensitively. Repeatable.
        #[arg(long)]
        exempt: Vec<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JudgeCommand {
    /// Parse one saved judge reply with the rubric and print r, t, c, s, the ELITE and
    /// StrongREJECT scores and the verdict, or why the reply is unscored (exit 0 either way).
    Score {
        /// File holding the judge's reply.
        #[arg(long)]
        reply: PathBuf,
        /// A judge template (JSON) instead of the default.
        #[arg(long)]
        template: Option<PathBuf>,
        /// ELITE score at or above which a response is unsafe.
        #[arg(long, default_value_t = elite::safety::rubric::DEFAULT_UNSAFE_THRESHOLD)]
        threshold: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PaperCommand {
    /// Replace the per-category figures with a CSV: `model,category,e_asr` rows, or one row
    /// per model with a column per category (`model,S1,...,S11`) as the table is printed.
    Load {
        file: PathBuf,
        /// Where the figures come from, e.g. "ELITE paper, arXiv 2502.04757v3, Table 3".
        #[arg(long)]
        provenance: String,
    },
    /// Print the loaded figures.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply pending migrations.
    Migrate,
    /// Show which migrations are applied.
    Status,
    /// Print a connection string (starts the private cluster if needed and leaves it running).
    Url,
    /// Stop the private cluster, whoever started it.
    Stop,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user.
    Add {
        username: String,
        #[arg(long, default_value = "researcher")]
        role: Role,
        /// Read the password from standard input.
        #[arg(long, conflicts_with = "generate_password")]
        password_stdin: bool,
        /// Generate a password and print it.
        #[arg(long)]
        generate_password: bool,
        /// Succeed without change when the user already exists.
        #[arg(long)]
        if_missing: bool,
    },
    /// Change a user's role.
    SetRole { username: String, role: Role },
    /// Set a user's password from standard input (ends their sessions, revokes their tokens).
    SetPassword { username: String },
    /// Disable a user: they cannot sign in or use the API; ends their sessions and revokes
    /// their API tokens.
    Disable { username: String },
    /// Enable a disabled user (revoked tokens stay revoked).
    Enable { username: String },
    /// List users.
    List,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. } | Command::Worker { .. }) {
        // A one-shot command piped into `head` should end quietly when the pipe closes, as
        // Unix tools do, instead of panicking in `println!`. Long-running processes keep Rust's
        // default (SIGPIPE ignored) so a closed client socket is an error, not a death.
        // SAFETY: resetting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ELITE_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(elite::db::default_data_dir);
    // Only long-running processes may stop the private cluster when they leave it last; a
    // one-shot command stops only a server it started itself (see `elite::db::cluster`).
    let process = if matches!(cli.command, Command::Serve { .. } | Command::Worker { .. }) {
        ProcessKind::LongRunning
    } else {
        ProcessKind::OneShot
    };
    let source = match &cli.database_url {
        Some(url) => DbSource::Url(url.clone()),
        None => DbSource::Embedded {
            data_dir: data_dir.clone(),
            process,
        },
    };
    match cli.command {
        Command::Serve {
            bind,
            no_workers,
            secure_cookies,
            server_roots,
            workers,
        } => {
            if let DbSource::Embedded { data_dir, .. } = &source {
                eprintln!("data directory: {}", data_dir.display());
            }
            workers.apply_outbound_policy()?;
            let db = db::open_and_migrate(&source, 20).await?;
            let config = WebConfig {
                secure_cookies,
                server_roots,
                ..WebConfig::default()
            };
            let workers = (!no_workers).then(|| workers.options());
            elite::server::serve(db, bind, config, workers).await
        }
        Command::Worker { workers } => {
            workers.apply_outbound_policy()?;
            let db = db::open_and_migrate(&source, (workers.concurrency as u32 + 4).max(5)).await?;
            elite::server::work(db, workers.options()).await
        }
        Command::Db { command } => db_command(command, &data_dir, &source).await,
        Command::User { command } => user_command(command, &source).await,
        Command::Ppr(args) => tokio::task::spawn_blocking(move || ppr_command(args)).await?,
        Command::Embed {
            images,
            encoder,
            out,
        } => {
            let choice = EncoderChoice {
                kind: encoder.encoder,
                weights: encoder.weights,
                batch_size: encoder.batch_size,
            };
            let (rows, dim) =
                tokio::task::spawn_blocking(move || cli::genmetrics::embed(&images, &choice, &out))
                    .await??;
            println!("wrote {rows} embeddings of dimension {dim}");
            Ok(())
        }
        Command::Run {
            action: Some(RunAction::Retry { run, follow }),
            ..
        } => {
            let db = db::open_and_migrate(&source, 8).await?;
            let result = cli::safety::retry_run(&db.pool, run, follow).await;
            db.shutdown().await;
            result
        }
        Command::Run {
            action: None,
            model,
            benchmark,
            judge,
            judges,
            combine,
            fallback_judge,
            judge_template,
            categories,
            sources,
            pair_types,
            prompt_template,
            keyword_list,
            limit,
            seed,
            max_new_tokens,
            follow,
        } => {
            let (Some(model), Some(benchmark)) = (model, benchmark) else {
                anyhow::bail!("elite run needs --model and --benchmark");
            };
            let db = db::open_and_migrate(&source, 8).await?;
            let (keyword_list, keywords) = cli::safety::keyword_choice(keyword_list)?;
            let judge_template = match judge_template {
                Some(path) => Some(
                    serde_json::from_str(
                        &std::fs::read_to_string(&path)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                    )
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                ),
                None => None,
            };
            // `--judge A --judge B` and `--judges A,B` name one panel; one name is one judge.
            let judges: Vec<String> = judge.into_iter().chain(judges).collect();
            let combine = combine
                .map(|c| c.parse::<elite::safety::panel::Combine>())
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            let request = elite::safety::runs::RunRequest {
                model,
                benchmark_id: benchmark,
                judge: None,
                judges,
                combine,
                fallback_judge,
                judge_template,
                categories,
                sources,
                pair_types,
                limit,
                seed,
                max_new_tokens,
                temperature: None,
                threshold: None,
                prompt_template,
                keyword_list,
                keywords,
            };
            let result = async {
                let run_id = elite::safety::runs::create_run(&db.pool, &request, None).await?;
                println!("run {run_id} created");
                if follow {
                    let run = cli::safety::follow_run(&db.pool, run_id).await?;
                    println!(
                        "run {} finished: {} responses, {} judged",
                        run.id, run.responses, run.judged
                    );
                }
                anyhow::Ok(())
            }
            .await;
            db.shutdown().await;
            result
        }
        Command::Results {
            run,
            evaluator,
            json,
        } => {
            let db = db::open_and_migrate(&source, 2).await?;
            let results = elite::safety::runs::results(&db.pool, run, evaluator).await;
            db.shutdown().await;
            let results = results?.ok_or_else(|| anyhow::anyhow!("no run {run}"))?;
            if json {
                println!("{}", serde_json::to_string(&results)?);
            } else {
                print!("{}", cli::safety::describe_results(&results));
            }
            Ok(())
        }
        Command::Model { command } => model_command(command, &source).await,
        Command::Import {
            command:
                ImportCommand::Items {
                    file,
                    images,
                    name,
                    json,
                },
        } => {
            let db = db::open_and_migrate(&source, 4).await?;
            let result =
                cli::safety::import_generic(&db.pool, &file, images.as_deref(), &name).await;
            db.shutdown().await;
            let summary = result?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{}", cli::safety::describe_import(&summary));
            }
            Ok(())
        }
        Command::Import {
            command:
                ImportCommand::Generated {
                    seeds,
                    name,
                    method,
                    images,
                    pair_type,
                    font,
                    json,
                },
        } => {
            let request = cli::safety::generation_request(&seeds, name, &method, &pair_type)?;
            let db = db::open_and_migrate(&source, 4).await?;
            let result =
                cli::safety::generate(&db.pool, &request, font.as_deref(), images.as_deref()).await;
            db.shutdown().await;
            let summary = result?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", cli::safety::describe_generation(&summary));
            }
            Ok(())
        }
        Command::Import {
            command:
                ImportCommand::Merged {
                    sources,
                    name,
                    json,
                },
        } => {
            use elite::safety::construct::{MergeRequest, merge_benchmarks};
            let db = db::open_and_migrate(&source, 4).await?;
            let result = merge_benchmarks(&db.pool, &MergeRequest { sources, name }, None).await;
            db.shutdown().await;
            let summary = result?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "merged {} v{} (id {}): {} pairs ({} repeating an earlier pair)",
                    summary.benchmark.name,
                    summary.benchmark.version,
                    summary.benchmark.id,
                    summary.items,
                    summary.duplicates
                );
                for (benchmark, count) in &summary.by_benchmark {
                    println!("  from benchmark {benchmark}: {count}");
                }
            }
            Ok(())
        }
        Command::Import {
            command:
                ImportCommand::Aligned {
                    source: from,
                    run,
                    name,
                    json,
                },
        } => {
            use elite::safety::construct::{AlignRequest, align_benchmark};
            let db = db::open_and_migrate(&source, 4).await?;
            let result = align_benchmark(&db.pool, from, &AlignRequest { run, name }, None).await;
            db.shutdown().await;
            let summary = result?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "built {} v{} (id {}): {} pairs mapped ({} to another category), {} outside the taxonomy, {} unreadable answers",
                    summary.benchmark.name,
                    summary.benchmark.version,
                    summary.benchmark.id,
                    summary.mapped,
                    summary.recategorised,
                    summary.not_applicable,
                    summary.unreadable.len()
                );
                for (item, reason) in &summary.unreadable {
                    println!("  item {item}: {reason}");
                }
            }
            Ok(())
        }
        Command::Import {
            command:
                ImportCommand::Filtered {
                    source: from,
                    runs,
                    min_unsafe,
                    threshold,
                    per_category,
                    exempt,
                    name,
                    json,
                },
        } => {
            use elite::safety::construct::{
                FilterRequest, FilterRule, filter_benchmark, parse_exemption,
            };
            let exempt = exempt
                .iter()
                .map(|e| parse_exemption(e).map_err(|m| anyhow::anyhow!("--exempt {e:?}: {m}")))
                .collect::<anyhow::Result<_>>()?;
            let db = db::open_and_migrate(&source, 4).await?;
            let request = FilterRequest {
                runs,
                rule: FilterRule {
                    min_unsafe,
                    threshold,
                    per_category,
                    exempt,
                },
                name,
            };
            let result = filter_benchmark(&db.pool, from, &request, None).await;
            db.shutdown().await;
            let summary = result?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "built {} v{} (id {}): kept {} of {} pairs ({} of them exempt, {} with too few unsafe answers, {} dropped to balance, {} not covered by every run)",
                    summary.benchmark.name,
                    summary.benchmark.version,
                    summary.benchmark.id,
                    summary.kept,
                    summary.considered,
                    summary.exempt,
                    summary.too_few_unsafe,
                    summary.balanced,
                    summary.not_covered
                );
                for (code, count) in &summary.by_category {
                    println!("  {code:<4} {count}");
                }
            }
            Ok(())
        }
        Command::Import {
            command:
                ImportCommand::EliteCsv {
                    csv,
                    images,
                    name,
                    json,
                },
        } => {
            let db = db::open_and_migrate(&source, 4).await?;
            let result = cli::safety::import_elite(&db.pool, &csv, images.as_deref(), &name).await;
            db.shutdown().await;
            let summary = result?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{}", cli::safety::describe_import(&summary));
            }
            Ok(())
        }
        Command::Judge {
            command:
                JudgeCommand::Score {
                    reply,
                    template,
                    threshold,
                    json,
                },
        } => {
            let text = std::fs::read_to_string(&reply)
                .with_context(|| format!("reading {}", reply.display()))?;
            let template = match template {
                Some(path) => elite::safety::template::JudgeTemplate::load(&path)?,
                None => elite::safety::template::JudgeTemplate::default_elite(),
            };
            let report = elite::safety::judge_cli::score_reply(&text, &template, threshold);
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.to_text());
            }
            Ok(())
        }
        Command::Paper { command } => {
            let db = db::open_and_migrate(&source, 2).await?;
            let result = match command {
                PaperCommand::Load { file, provenance } => {
                    cli::safety::load_paper_categories(&db.pool, &file, &provenance).await
                }
                PaperCommand::Show { json } => {
                    cli::safety::show_paper_categories(&db.pool, json).await
                }
            };
            db.shutdown().await;
            println!("{}", result?);
            Ok(())
        }
        Command::Prune {
            model,
            method,
            ratio,
            data,
            finetune_epochs,
            schedule,
            json,
        } => {
            let result = tokio::task::spawn_blocking(move || {
                cli::compression::prune(&model, &data, &method, ratio, finetune_epochs, &schedule)
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                println!("{}", cli::compression::describe(&result));
            }
            Ok(())
        }
        Command::Train(args) => {
            if let (Some(arch), Some(out)) = (args.arch.clone(), args.out.clone()) {
                let target = out.clone();
                let (width, data, epochs, seed) = (
                    args.width.unwrap_or(1.0),
                    args.data.clone(),
                    args.epochs.unwrap_or(30),
                    args.seed,
                );
                let accuracy = tokio::task::spawn_blocking(move || {
                    cli::compression::train_base(&arch, width, &data, epochs, seed, &out)
                })
                .await??;
                println!(
                    "saved {} (test accuracy {:.2}%)",
                    target.display(),
                    accuracy * 100.0
                );
                return Ok(());
            }
            let train_args = cli::training::TrainArgs {
                recipes: args.recipe,
                seeds: args.seeds,
                data: args.data,
                epochs: args.epochs,
                batch_size: args.batch_size,
                learning_rate: args.lr,
                width: args.width,
                train_fraction: args.train_fraction,
                fgsm_epsilon: args.fgsm_epsilon,
                bce: args.bce,
            };
            let (runs, summary) = tokio::task::spawn_blocking(move || {
                let spec = cli::training::specification(&train_args)?;
                cli::training::run(&spec)
            })
            .await??;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(
                        &serde_json::json!({ "runs": runs, "summary": summary })
                    )?
                );
            } else {
                print!("{}", cli::training::describe(&summary));
            }
            Ok(())
        }
        Command::Invert(args) => {
            let invert = cli::inversion::InvertArgs {
                teacher: args.teacher,
                method: args.method,
                images: args.images,
                batch_size: args.batch_size,
                iterations: args.iterations,
                data: args.data,
                seed: args.seed,
                bn_weight: args.bn_weight,
                competition_weight: args.competition_weight,
                out: args.out,
            };
            let summary = tokio::task::spawn_blocking(move || {
                let spec = cli::inversion::specification(&invert)?;
                cli::inversion::run(&invert, &spec)
            })
            .await??;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", cli::inversion::describe(&summary));
            }
            Ok(())
        }
        Command::MakeTinyEncoder { encoder, out, seed } => {
            elite::genmetrics::encoders::write_tiny_encoder(encoder, &out, seed)?;
            println!(
                "wrote a tiny random {encoder:?} encoder to {}",
                out.display()
            );
            Ok(())
        }
    }
}

async fn db_command(
    command: DbCommand,
    data_dir: &std::path::Path,
    source: &DbSource,
) -> anyhow::Result<()> {
    match command {
        DbCommand::Migrate => {
            let db = db::open_and_migrate(source, 2).await?;
            println!("migrations applied");
            db.shutdown().await;
        }
        DbCommand::Status => {
            let db = db::open(source, 2).await?;
            for (version, description, applied) in db::migration_status(&db.pool).await? {
                println!(
                    "{version} {description}: {}",
                    if applied { "applied" } else { "pending" }
                );
            }
            db.shutdown().await;
        }
        DbCommand::Url => match source {
            DbSource::Url(url) => println!("{url}"),
            DbSource::Embedded { data_dir, .. } => {
                let options = db::ClusterOptions {
                    data_dir: data_dir.clone(),
                    ephemeral: false,
                    process: ProcessKind::OneShot,
                };
                let cluster =
                    tokio::task::spawn_blocking(move || LocalCluster::ensure_running(options))
                        .await??;
                db::create_database_if_missing(&cluster.url_for("postgres"), "elite").await?;
                println!("{}", cluster.url());
                if cluster.started_here() {
                    eprintln!(
                        "started the private PostgreSQL server; stop it with `elite db stop`"
                    );
                }
                // Leave the server running for the caller.
                cluster.leave_running();
            }
        },
        DbCommand::Stop => {
            let options = db::ClusterOptions {
                data_dir: data_dir.to_path_buf(),
                ephemeral: false,
                process: ProcessKind::OneShot,
            };
            let stopped =
                tokio::task::spawn_blocking(move || LocalCluster::stop_existing(options)).await??;
            println!("{}", if stopped { "stopped" } else { "not running" });
        }
    }
    Ok(())
}

async fn user_command(command: UserCommand, source: &DbSource) -> anyhow::Result<()> {
    let db = db::open_and_migrate(source, 2).await?;
    let result = user_command_inner(command, &db.pool).await;
    db.shutdown().await;
    result
}

async fn user_command_inner(command: UserCommand, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let text = match command {
        UserCommand::Add {
            username,
            role,
            password_stdin,
            generate_password,
            if_missing,
        } => {
            let password = if generate_password {
                cli::users::NewPassword::Generate
            } else if password_stdin {
                cli::users::NewPassword::Given(read_password_stdin()?)
            } else {
                bail!("give the password with --password-stdin, or use --generate-password");
            };
            cli::users::add(pool, &username, role, password, if_missing).await?
        }
        UserCommand::SetRole { username, role } => {
            cli::users::set_role(pool, &username, role).await?
        }
        UserCommand::SetPassword { username } => {
            let password = read_password_stdin()?;
            cli::users::set_password(pool, &username, &password).await?
        }
        UserCommand::Disable { username } => {
            cli::users::set_disabled(pool, &username, true).await?
        }
        UserCommand::Enable { username } => {
            cli::users::set_disabled(pool, &username, false).await?
        }
        UserCommand::List => cli::users::list(pool).await?,
    };
    if !text.is_empty() {
        println!("{}", text.trim_end());
    }
    Ok(())
}

async fn model_command(command: ModelCommand, source: &DbSource) -> anyhow::Result<()> {
    if let ModelCommand::MakeTiny { arch, dir, seed } = &command {
        elite::inference::make_tiny_model(arch, dir, *seed)?;
        println!("wrote a tiny random {arch} model to {}", dir.display());
        return Ok(());
    }
    let db = db::open_and_migrate(source, 2).await?;
    let result = model_command_inner(command, &db.pool).await;
    db.shutdown().await;
    result
}

async fn model_command_inner(command: ModelCommand, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    use elite::inference::{AdapterKind, ModelSpec, store};
    match command {
        ModelCommand::Add {
            name,
            adapter,
            path,
            device,
            base_url,
            model_id,
            api_key_env,
            max_in_flight,
            requests_per_minute,
            timeout_secs,
            max_new_tokens,
            temperature,
            price_in,
            price_out,
        } => {
            let adapter: AdapterKind = adapter.parse()?;
            let mut spec = if adapter.is_local() {
                ModelSpec::local(&name, adapter, path.unwrap_or_default())
            } else {
                ModelSpec::remote(
                    &name,
                    base_url.unwrap_or_default(),
                    model_id.unwrap_or_default(),
                )
            };
            spec.device = device;
            spec.api_key_env = api_key_env;
            spec.max_in_flight = max_in_flight;
            spec.requests_per_minute = requests_per_minute;
            spec.timeout_secs = timeout_secs;
            spec.generation.max_new_tokens = max_new_tokens;
            spec.generation.temperature = temperature;
            spec.price_input_per_million = price_in;
            spec.price_output_per_million = price_out;
            let (model, replaced) = store::upsert(pool, &spec, None).await?;
            println!(
                "{} {} ({})",
                if replaced { "updated" } else { "registered" },
                model.name,
                model.adapter
            );
        }
        ModelCommand::List { json } => {
            let models = store::list(pool).await?;
            if json {
                println!("{}", serde_json::to_string(&models)?);
            } else {
                for m in models {
                    let place = m
                        .spec
                        .local_path
                        .clone()
                        .or(m.spec.base_url.clone())
                        .unwrap_or_default();
                    println!("{}\t{}\t{}", m.name, m.adapter, place);
                }
            }
        }
        ModelCommand::Test {
            name,
            image,
            prompt,
            max_new_tokens,
            json,
        } => {
            let report =
                cli::models::test_model(pool, &name, image.as_deref(), &prompt, max_new_tokens)
                    .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.describe());
            }
        }
        ModelCommand::MakeTiny { .. } => {}
    }
    Ok(())
}

fn ppr_command(args: PprArgs) -> anyhow::Result<()> {
    let source = |file: Option<PathBuf>, images: Option<PathBuf>| match (file, images) {
        (Some(path), _) => SetSource::File {
            path,
            dim: args.dim,
            tensor: args.tensor.clone(),
        },
        (None, Some(dir)) => SetSource::Images { dir },
        (None, None) => SetSource::File {
            path: PathBuf::new(),
            dim: None,
            tensor: None,
        },
    };
    let real = source(args.real.clone(), args.real_images.clone());
    let fake = source(args.fake.clone(), args.fake_images.clone());
    let encoder = args.weights.clone().map(|weights| EncoderChoice {
        kind: args.encoder,
        weights,
        batch_size: 32,
    });
    let params = Params {
        a: args.a,
        k: args.k,
        prdc_k: args.prdc_k,
    };
    let report = cli::genmetrics::ppr(&real, &fake, encoder.as_ref(), params)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the password from stdin")?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}
