//! The `mrc` command line.

use clap::{Parser, Subcommand, ValueEnum};
use mrc::diagnostic::SourceMap;
use mrc::expand::{self, Model};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "mrc", version, about = "A compiler for Mask R-CNN-family networks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, expand and shape-check a model; print a summary.
    Check(ModelArgs),
    /// List the model's state tensors (torchvision `state_dict` names) and shapes.
    Params(ModelArgs),
    /// Print the dataflow graph.
    Graph {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
        /// Show the graph before and after the optimization passes.
        #[arg(long)]
        passes: bool,
    },
    /// Print the syntax tree of a model file back as text, fully parenthesized.
    Parse { file: PathBuf },
    /// Compile a model to a native executable (or one of its intermediate stages).
    Compile {
        #[command(flatten)]
        model: ModelArgs,
        /// The target: `cpu`, or `cuda[:sm_80|sm_86|sm_89|sm_90]` (PTX for `sm_80` by default,
        /// which the driver compiles for newer GPUs).
        #[arg(long, default_value = "cpu", value_parser = parse_target)]
        target: Target,
        /// Weights to embed (safetensors or a torch checkpoint); without them the program needs
        /// `--weights` when it runs. With `--train`: the initial weights (default: `mrc init`'s).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Write a training program instead: the model's training step and `mrc train`'s loop
        /// and flags (without the model argument). For CUDA, the step runs on the GPU (or, with
        /// the program's `--device emulator`, on the emulated device).
        #[arg(long)]
        train: bool,
        #[command(flatten)]
        optimization: Optimization,
        /// What to write: the executable, or for inspection MLIR, LLVM IR (the host code), the
        /// object file, or the PTX of every kernel (`cuda`).
        #[arg(long, default_value = "exe")]
        emit: mrc::targets::Emit,
        /// The output file.
        #[arg(short = 'o')]
        output: PathBuf,
    },
    /// Run a model in process (JIT-compiled, built-ins in the runtime) on images;
    /// print the detections, optionally keep intermediate tensors.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Weights: safetensors or a torch checkpoint.
        #[arg(long)]
        weights: PathBuf,
        #[command(flatten)]
        optimization: Optimization,
        /// Images to run on.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Comma-separated node names (as `mrc graph` shows them) whose values to write.
        #[arg(long, value_delimiter = ',')]
        dump_tensors: Vec<String>,
        /// Where the dumps go: one `<image stem>.safetensors` per image.
        #[arg(long, default_value = ".")]
        dump_dir: PathBuf,
    },
    /// Write weights for every state tensor of a model, drawn as torchvision initializes the
    /// layers of an untrained Mask R-CNN.
    Init {
        #[command(flatten)]
        model: ModelArgs,
        /// Seed of the draws: the same seed gives the same weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The safetensors file to write; replaced only once complete.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Train a model's `training network` on a COCO data set: the step compiled in process,
    /// SGD with the `train` section's schedule, checkpoints, metrics, resume and Ctrl-C.
    Train {
        /// The model file.
        model: PathBuf,
        #[command(flatten)]
        args: mrc_runtime::train::TrainArgs,
    },
    /// COCO evaluation of a results file against ground truth: pycocotools' 12 summary numbers
    /// and the AP of each category.
    Eval(mrc_runtime::coco::EvalArgs),
    /// Make or import data sets in COCO format.
    Data {
        #[command(subcommand)]
        command: mrc_runtime::data::DataCommand,
    },
    /// Convert weights (safetensors, or a torch `.pth` checkpoint in zip or legacy format, with
    /// current or pre-0.13 torchvision names) to safetensors with current names.
    Import {
        /// The weights to convert.
        input: PathBuf,
        /// The safetensors file to write; replaced only once complete.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct ModelArgs {
    /// The model file.
    file: PathBuf,
    /// YAML file overriding settings of the model's `config` section.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Optimization {
    /// Optimization level: the graph passes from 1 on (none at 0), LLVM's level as given.
    #[arg(short = 'O', default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    level: u8,
}

/// `--target`: `cpu`, or `cuda` with an optional `:sm_XX` (default `sm_80`).
#[derive(Clone, Debug)]
enum Target {
    Cpu,
    Cuda { chip: String },
}

fn parse_target(text: &str) -> Result<Target, String> {
    use mrc::targets::cuda::CHIPS;
    match text.split_once(':') {
        None if text == "cpu" => Ok(Target::Cpu),
        None if text == "cuda" => Ok(Target::Cuda { chip: CHIPS[0].to_owned() }),
        Some(("cuda", chip)) if CHIPS.contains(&chip) => Ok(Target::Cuda { chip: chip.to_owned() }),
        Some(("cuda", chip)) => Err(format!("unknown GPU architecture `{chip}` (expected one of {})", CHIPS.join(", "))),
        _ => Err(format!("unknown target `{text}` (expected `cpu` or `cuda[:{}]`)", CHIPS.join("|"))),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
}

fn load(args: &ModelArgs) -> Result<Model, String> {
    let mut sources = SourceMap::default();
    expand::load(&mut sources, &args.file, args.config.as_deref()).map_err(|d| d.render(&sources))
}

fn parse(file: &Path) -> Result<String, String> {
    let mut sources = SourceMap::default();
    let program = expand::parse_program(&mut sources, file).map_err(|d| d.render(&sources))?;
    Ok(mrc::syntax::print::print_file(&program.root))
}

fn main() -> ExitCode {
    // First, before any thread allocates: `mrc run` and `mrc train` run generated code here.
    mrc_runtime::abi::keep_freed_memory();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Check(args) => load(args).map(|m| mrc::summary::check(&m)),
        Command::Params(args) => load(args).map(|m| mrc::summary::params(&m)),
        Command::Graph { model, format, passes } => load(model).map(|mut m| {
            let render = |g: &mrc::graph::Graph| match format {
                GraphFormat::Text => mrc::graph::to_text(g),
                GraphFormat::Dot => mrc::graph::to_dot(g),
            };
            if !passes {
                return render(&m.graph);
            }
            let comment = if matches!(format, GraphFormat::Dot) { "//" } else { "#" };
            let mut text = format!("{comment} before passes\n{}", render(&m.graph));
            for pass in mrc::targets::Target::graph_passes(&mrc::targets::cpu::Cpu) {
                let before = render(&m.graph);
                let changed = pass.run(&mut m.graph);
                text.push_str(&format!("\n{comment} {}: {}\n", pass.name(), if changed { "changed" } else { "no change" }));
                if changed {
                    text.push_str(&mrc::passes::diff(&before, &render(&m.graph)));
                }
            }
            text.push_str(&format!("\n{comment} after passes\n{}", render(&m.graph)));
            text
        }),
        Command::Parse { file } => parse(file),
        Command::Compile { model, target, weights, train, optimization, emit, output } => load(model).and_then(|m| {
            let target: Box<dyn mrc::targets::Target> = match target {
                Target::Cpu => Box::new(mrc::targets::cpu::Cpu),
                Target::Cuda { chip } => Box::new(mrc::targets::cuda::Cuda { chip: chip.clone() }),
            };
            if *train {
                return mrc::train::program::write_training_program(&m, target.as_ref(), weights.as_deref(), optimization.level, *emit, output)
                    .map_err(|e| format!("error: {e}"));
            }
            mrc::targets::compile(&m, target.as_ref(), weights.as_deref(), optimization.level, *emit, output).map_err(|e| format!("error: {e}"))
        }),
        Command::Run { model, weights, optimization, images, dump_tensors, dump_dir } => {
            load(model).and_then(|m| mrc::run::run_images(&m.graph, optimization.level, weights, images, dump_tensors, dump_dir))
        }
        Command::Init { model, seed, output } => load(model).and_then(|m| {
            let weights = mrc::init::init(&m.graph, *seed).map_err(|e| format!("error: {e}"))?;
            weights.write_safetensors(output).map_err(|e| format!("error: {e}"))?;
            Ok(format!("{}: {} tensors, seed {seed}\n", output.display(), weights.len()))
        }),
        Command::Train { model, args } => {
            load(&ModelArgs { file: model.clone(), config: args.config.clone() }).and_then(|m| mrc::train::command::train(&m, args).map_err(|e| format!("error: {e}")))
        }
        Command::Eval(args) => mrc_runtime::coco::eval_main(args).map_err(|e| format!("error: {e}")),
        Command::Data { command } => mrc_runtime::data::data_main(command).map_err(|e| format!("error: {e}")),
        Command::Import { input, output } => mrc_runtime::weights::Weights::open(input)
            .and_then(|w| w.write_safetensors(output).map(|()| format!("{}: {} tensors\n", output.display(), w.len())))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(text) => {
            // A closed pipe (`mrc graph ... | head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            ExitCode::FAILURE
        }
    }
}
