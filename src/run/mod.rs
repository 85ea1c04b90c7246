//! In-process execution of a model (`mrc run`): the whole network is emitted as one
//! `@forward` (dense operators as MLIR, built-ins as calls into the runtime), lowered, and
//! JIT-compiled once (sizes stay symbolic, so one compiled function serves every image). Every
//! value can be dumped by the name of the node that computes it: dumps are extra results.

use crate::graph::{Graph, NodeKind, Port};
use crate::lowering::{create_context, expected_state, JitEngine, LoweringError};
use crate::targets::{self, cpu::Cpu, cuda::emulated_device, Emitted, Target};
use melior::Context;
use mrc_runtime::abi::forward::{Forward, ForwardFn, Interface, FORWARD_PACKED};
pub use mrc_runtime::abi::forward::HostTensor;
use mrc_runtime::weights::{Dtype, Weights};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lowering(#[from] LoweringError),
    #[error(transparent)]
    Weights(#[from] mrc_runtime::weights::WeightsError),
    #[error("{0}")]
    Runtime(String),
    #[error("no tensor is named `{0}`; names are node scopes as `mrc graph` shows them")]
    UnknownDump(String),
}

/// A model ready to run: compiled, weights checked.
pub struct Executor {
    forward: Forward,
    /// The graph passes that changed the graph.
    passes: Vec<&'static str>,
    /// Owns the compiled code `forward` points into; none when that code lives as long as the
    /// process (for the emulated device).
    _code: Option<JitForward>,
}

/// A graph's forward function JIT-compiled in process, with the engine and context that own its
/// code: `function` is valid as long as this lives.
pub struct JitForward {
    pub function: ForwardFn,
    pub interface: Interface,
    /// The graph passes that changed the graph.
    pub passes: Vec<&'static str>,
    _engine: JitEngine,
    /// Keeps the MLIR context alive as long as the engine (fields drop in declaration order).
    _context: Box<Context>,
}

impl JitForward {
    /// Compiles `graph` with the results `outputs` for `target`, whose in-process code runs on
    /// this CPU, at optimization level `level` (graph passes from 1 on, LLVM's level).
    pub fn compile(target: &dyn Target, graph: &Graph, outputs: &[(String, Port)], level: u8) -> Result<JitForward, LoweringError> {
        JitForward::build(target, level, |context| targets::emit(context, graph, outputs, target, level))
    }

    /// Compiles what `emit` emits into a new context for `target` at LLVM level `level`.
    pub fn build(
        target: &dyn Target,
        level: u8,
        emit: impl for<'c> FnOnce(&'c Context) -> Result<Emitted<'c>, LoweringError>,
    ) -> Result<JitForward, LoweringError> {
        let context = Box::new(create_context());
        let emitted = emit(&context)?;
        let (interface, passes) = (emitted.interface.clone(), emitted.passes.clone());
        let engine = target.jit(&context, emitted, level)?;
        let address = engine.lookup(FORWARD_PACKED);
        if address.is_null() {
            return Err(LoweringError::Build(format!("the JIT has no `{FORWARD_PACKED}`")));
        }
        // SAFETY: `mrc_forward_packed` has this type (see `lowering::add_entry_points`) and
        // lives as long as the engine, which `JitForward` keeps.
        let function: ForwardFn = unsafe { std::mem::transmute::<*mut (), ForwardFn>(address) };
        Ok(JitForward { function, interface, passes, _engine: engine, _context: context })
    }
}

impl JitForward {
    /// Never frees the code: the emulated device keeps the kernels' CPU forms by name for the
    /// whole process, and a later compilation may launch the same kernels.
    pub fn keep_for_the_process(self) {
        std::mem::forget(self);
    }
}

/// The outputs of the forward function: the network's, then the first output of each node
/// named in `dumps`.
pub fn forward_outputs(graph: &Graph, dumps: &[String]) -> Result<Vec<(String, Port)>, RunError> {
    let mut outputs = graph.outputs.clone();
    for name in dumps {
        let node = graph
            .nodes
            .node_indices()
            .find(|&n| graph.nodes[n].name == *name && matches!(graph.nodes[n].kind, NodeKind::Op { .. }))
            .ok_or_else(|| RunError::UnknownDump(name.clone()))?;
        outputs.push((name.clone(), Port { node, output: 0 }));
    }
    Ok(outputs)
}

impl Executor {
    /// Compiles `graph` for the CPU with the extra results `dumps` (node names) at optimization
    /// level `level` (graph passes from 1 on, LLVM's level), and checks `weights`.
    pub fn new(graph: &Graph, weights: Weights, dumps: &[String], level: u8) -> Result<Self, RunError> {
        Self::compile(&Cpu, None, graph, weights, dumps, level)
    }

    /// [`Executor::new`] for `target`, whose in-process code runs on this CPU (the CPU target,
    /// or one that makes other choices than it, as tests do to run the built-ins' kernels here).
    pub fn on_host(target: &dyn Target, graph: &Graph, weights: Weights, dumps: &[String], level: u8) -> Result<Self, RunError> {
        Self::compile(target, None, graph, weights, dumps, level)
    }

    /// [`Executor::new`] for the CUDA target, run on the emulated device: every kernel's CPU
    /// form, every allocation, copy and launch as a CUDA program makes them. It selects the
    /// emulator for the whole process, whose runtime functions then return device memory: a
    /// process that uses it runs nothing on the CPU target.
    pub fn on_emulated_device(graph: &Graph, weights: Weights, dumps: &[String], level: u8) -> Result<Self, RunError> {
        let (device, target) = emulated_device().map_err(|e| RunError::Runtime(e.to_string()))?;
        Self::compile(&target, Some(device), graph, weights, dumps, level)
    }

    fn compile(
        target: &dyn Target,
        device: Option<&'static mrc_runtime::device::SelectedDevice>,
        graph: &Graph,
        weights: Weights,
        dumps: &[String],
        level: u8,
    ) -> Result<Self, RunError> {
        weights.validate(&expected_state(graph))?;
        let code = JitForward::compile(target, graph, &forward_outputs(graph, dumps)?, level)?;
        let (function, interface, passes) = (code.function, code.interface.clone(), code.passes.clone());
        // SAFETY: the function was emitted for `signature`, which `interface` describes.
        let forward = unsafe {
            match device {
                Some(device) => Forward::new_on_device(function, interface, weights, device).map_err(|e| RunError::Runtime(e.to_string()))?,
                None => Forward::new(function, interface, weights)?,
            }
        };
        if device.is_some() {
            code.keep_for_the_process();
            return Ok(Executor { forward, passes, _code: None });
        }
        Ok(Executor { forward, passes, _code: Some(code) })
    }

    /// The graph passes that changed the graph before it was compiled.
    pub fn passes(&self) -> &[&'static str] {
        &self.passes
    }

    /// Runs the network on `inputs` (by input name); returns the network outputs, then the
    /// dumps, by name.
    pub fn run(&self, inputs: &[(&str, &HostTensor)]) -> Result<Vec<(String, HostTensor)>, RunError> {
        self.forward.run(inputs).map(|(results, _)| results).map_err(RunError::Runtime)
    }
}

/// `mrc run`: every image through the network; a line per image, dumps written to `dump_dir`.
pub fn run_images(
    graph: &Graph,
    level: u8,
    weights: &std::path::Path,
    images: &[std::path::PathBuf],
    dumps: &[String],
    dump_dir: &std::path::Path,
) -> Result<String, String> {
    let weights = Weights::open(weights).map_err(|e| e.to_string())?;
    let executor = Executor::new(graph, weights, dumps, level).map_err(|e| e.to_string())?;
    let input = graph.inputs.first().map(|&n| graph.nodes[n].name.clone()).ok_or("the network has no input")?;
    let mut report = String::new();
    for path in images {
        let rgb = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?.to_rgb8();
        let (w, h) = rgb.dimensions();
        let tensor = HostTensor::U8 { shape: vec![h as usize, w as usize, 3], data: rgb.into_raw() };
        let results = executor.run(&[(&input, &tensor)]).map_err(|e| format!("{}: {e}", path.display()))?;
        let summary: Vec<String> = results
            .iter()
            .take(graph.outputs.len())
            .map(|(name, t)| format!("{name} {:?}", t.shape()))
            .collect();
        report.push_str(&format!("{}: {}\n", path.display(), summary.join(", ")));
        if !dumps.is_empty() {
            let stem = path.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let file = dump_dir.join(format!("{stem}.safetensors"));
            write_tensors(&file, &results[graph.outputs.len()..]).map_err(|e| format!("{}: {e}", file.display()))?;
            report.push_str(&format!("  wrote {}\n", file.display()));
        }
    }
    Ok(report)
}

fn write_tensors(path: &std::path::Path, tensors: &[(String, HostTensor)]) -> Result<(), mrc_runtime::weights::WeightsError> {
    use mrc_runtime::weights::Tensor;
    let converted = tensors.iter().map(|(name, t)| {
        let tensor = match t {
            HostTensor::F32 { shape, data } => Tensor::from_f32(shape.clone(), data),
            HostTensor::I64 { shape, data } => {
                Tensor::from_le_bytes(Dtype::I64, shape.clone(), &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
            }
            HostTensor::U8 { shape, data } => Tensor::from_le_bytes(Dtype::U8, shape.clone(), data),
        };
        (name.clone(), tensor.expect("host tensors hold as many values as their shape says"))
    });
    Weights::from_tensors(path.display().to_string(), converted)?.write_safetensors(path)
}
