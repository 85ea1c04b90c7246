//! Native executables, the form of every target's program: host code compiled to an object in
//! process (MLIR's execution engine, LLVM `-O<level>`), linked by the system linker (`cc`) with
//! the runtime's static library, whose program driver the generated `main` calls. The model's
//! interface and (by default) its weights follow the executable's code as a trailer, so that one
//! file deploys; the program reads them from its own file.
//!
//! Trailer layout, at the very end of the file: weights (safetensors, possibly empty), the
//! [`ProgramManifest`] as JSON, then the two lengths as little-endian u64 and the magic
//! [`TRAILER_MAGIC`].

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io, write_atomic, CompileError, Emit, Program, ProgramKind};
use mrc_runtime::weights::Weights;
use crate::lowering::{append_module, LoweringError};
use melior::ir::Module;
use mrc_runtime::abi::forward::{Interface, FORWARD_PACKED};
use mrc_runtime::program::trailer::{ProgramManifest, TRAILER_MAGIC};
use mrc_runtime::train::TrainingManifest;

/// Writes what `emit` asks for of a module in the LLVM dialect whose entry points are added:
/// its LLVM IR, its object file, or the executable with its trailer (`weights`, then
/// `manifest`: a [`ProgramManifest`], or a training program's manifest).
fn write_executable(
    module: &Module,
    link_arguments: &[String],
    manifest: &impl serde::Serialize,
    weights: Option<&Weights>,
    level: u8,
    emit: Emit,
    output: &Path,
) -> Result<String, CompileError> {
    if emit == Emit::Ptx {
        return Err(LoweringError::Build("only the CUDA target has PTX".into()).into());
    }
    if emit == Emit::Llvm {
        write_atomic(output, llvm_ir(module).as_bytes())?;
        return Ok(format!("wrote {}\n", output.display()));
    }
    let scratch = tempfile::tempdir().map_err(io(output))?;
    let object = scratch.path().join("forward.o");
    let engine = crate::lowering::jit_for_object(module, level as usize)?;
    // The engine compiles on first lookup; the object is what it compiled.
    if engine.lookup(FORWARD_PACKED).is_null() {
        return Err(LoweringError::Build(format!("`{FORWARD_PACKED}` did not compile")).into());
    }
    engine.dump_to_object_file(object.to_str().expect("temporary paths are UTF-8"));
    if !object.exists() {
        return Err(LoweringError::Build("the execution engine wrote no object file".into()).into());
    }
    if emit == Emit::Obj {
        let bytes = std::fs::read(&object).map_err(io(&object))?;
        write_atomic(output, &bytes)?;
        return Ok(format!("wrote {}\n", output.display()));
    }

    let linked = scratch.path().join("program");
    link(&object, link_arguments, &linked)?;
    let weight_bytes = match weights {
        Some(weights) => weights.to_safetensors_bytes()?,
        None => vec![],
    };
    let mut executable = std::fs::read(&linked).map_err(io(&linked))?;
    let manifest_json = serde_json::to_vec(manifest).expect("the manifest serializes");
    executable.extend_from_slice(&weight_bytes);
    executable.extend_from_slice(&manifest_json);
    executable.extend_from_slice(&(weight_bytes.len() as u64).to_le_bytes());
    executable.extend_from_slice(&(manifest_json.len() as u64).to_le_bytes());
    executable.extend_from_slice(TRAILER_MAGIC);
    write_atomic(output, &executable)?;
    set_executable(output)?;
    let embedded = if weights.is_some() {
        "weights embedded"
    } else {
        "no weights embedded: pass --weights when running it"
    };
    Ok(format!("wrote {} ({:.1} MB, {embedded})\n", output.display(), executable.len() as f64 / 1e6))
}
/// Writes the MLIR of `module` (`--emit mlir`).
pub fn write_mlir(module: &Module, output: &Path) -> Result<String, CompileError> {
    write_atomic(output, module.as_operation().to_string().as_bytes())?;
    Ok(format!("wrote {}\n", output.display()))
}

/// [`write_executable`] for `program` compiled from `module` with the operations of
/// `companions` appended, with its manifest: an inference program's [`ProgramManifest`] or a
/// training program's [`TrainingManifest`].
pub fn write_program(
    module: &Module,
    companions: &[Module],
    link_arguments: &[String],
    program: Program,
    interface: Interface,
    level: u8,
    emit: Emit,
    output: &Path,
) -> Result<String, CompileError> {
    for companion in companions {
        append_module(module, companion);
    }
    let Program { name: model_name, weights, kind } = program;
    match kind {
        ProgramKind::Inference { class_names } => {
            let manifest = ProgramManifest { model_name, class_names, interface };
            write_executable(module, link_arguments, &manifest, weights.as_ref(), level, emit, output)
        }
        ProgramKind::Training { outputs, layout, settings, transform, evaluation } => {
            let manifest = TrainingManifest { model_name, interface, outputs, layout, settings, transform, evaluation };
            write_executable(module, link_arguments, &manifest, weights.as_ref(), level, emit, output)
        }
    }
}

/// LLVM IR of a module in the LLVM dialect.
fn llvm_ir(module: &melior::ir::Module) -> String {
    // SAFETY: the module is in the LLVM dialect; the returned C string is the caller's to free.
    unsafe {
        let text = mlir_sys::mlirTranslateModuleToLLVMIRToString(module.as_operation().to_raw());
        let owned = std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned();
        libc_free(text as *mut std::ffi::c_void);
        owned
    }
}

extern "C" {
    #[link_name = "free"]
    fn libc_free(pointer: *mut std::ffi::c_void);
}

/// The runtime's static library, built with `mrc` (see `src/build.rs`) and embedded in it.
static RUNTIME_LIBRARY: &[u8] = include_bytes!(env!("MRC_RUNTIME_LIBRARY"));

/// The runtime's static library as a file in `scratch`: `MRC_RUNTIME_LIB` if set (a runtime
/// being worked on), else the embedded one.
fn runtime_library(scratch: &Path) -> Result<PathBuf, CompileError> {
    if let Some(path) = std::env::var_os("MRC_RUNTIME_LIB") {
        return Ok(PathBuf::from(path));
    }
    let library = scratch.join("libmrc_runtime.a");
    std::fs::write(&library, RUNTIME_LIBRARY).map_err(io(&library))?;
    Ok(library)
}

/// Links `object` with the runtime into the executable `output` (no debug information), with
/// the target's `arguments`.
fn link(object: &Path, arguments: &[String], output: &Path) -> Result<(), CompileError> {
    let runtime = runtime_library(object.parent().unwrap_or(Path::new(".")))?;
    let mut command = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    command.arg("-no-pie").arg("-o").arg(output).arg(object).arg(&runtime).args([
        "-Wl,--gc-sections",
        "-s",
        "-lm",
        "-lpthread",
        "-ldl",
        "-lgcc_s",
        "-lc",
    ]);
    command.args(arguments);
    let rendered = format!("{command:?}");
    let result =
        command.output().map_err(|e| CompileError::Link { command: rendered.clone(), stderr: e.to_string() })?;
    if !result.status.success() {
        return Err(CompileError::Link {
            command: rendered,
            stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
        });
    }
    Ok(())
}

fn set_executable(path: &Path) -> Result<(), CompileError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))
}
