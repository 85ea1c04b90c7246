//! Entry points added to a module already lowered to the LLVM dialect: `mrc_forward_packed`,
//! the fixed-arity door to `_mlir_ciface_forward` that the runtime calls
//! (`mrc_runtime::abi::forward`), and for a compiled program the C `main`, which hands it to the
//! runtime's program driver.

use melior::{
    ir::{operation::OperationLike, BlockLike, Module, RegionLike},
    Context,
};

use super::{diagnostics::capture_diagnostics, error::LoweringError, FORWARD};
use mrc_runtime::abi::forward::FORWARD_PACKED;

/// A program's C `main`: it calls `initializer()` if there is one, then the runtime's program
/// driver `driver(argc, argv, forward, functions...)`, `forward` being `mrc_forward_packed` and
/// each of `functions` the address of a function of the module.
#[derive(Clone, Copy, Debug)]
pub struct ProgramMain {
    pub initializer: Option<&'static str>,
    pub driver: &'static str,
    pub functions: &'static [&'static str],
}

impl ProgramMain {
    /// The CPU program driver: `mrc_program_main(argc, argv, forward)`.
    pub const CPU: ProgramMain = ProgramMain { initializer: None, driver: "mrc_program_main", functions: &[] };
    /// The training program driver: `mrc_training_program_main(argc, argv, step)`.
    pub const TRAINING: ProgramMain = ProgramMain { initializer: None, driver: "mrc_training_program_main", functions: &[] };
}

/// What a program's `main` calls to run the module's global constructors. The execution
/// engine that compiles the object gathers a module's constructors (`llvm.global_ctors`) into
/// one function, [`ENGINE_CONSTRUCTORS`], and no `.init_array` entry; the linker binds this
/// name to it (`--defsym`). In process, `run_constructors` has the engine run them.
pub const MODULE_INITIALIZER: &str = "mrc_module_initializer";

/// The function the execution engine makes of the constructors of the module it compiles.
pub const ENGINE_CONSTRUCTORS: &str = "__orc_init_func.LLVMDialectModule";

/// Adds `mrc_forward_packed(void **args)` for a forward function of `arguments` arguments and at
/// least one result: `args[0]` is the results' pointer, `args[1 + i]` argument i's descriptor.
/// With `program_main`, also adds `main`.
pub fn add_entry_points(context: &Context, module: &Module, arguments: usize, program_main: Option<ProgramMain>) -> Result<(), LoweringError> {
    let ciface = format!("_mlir_ciface_{FORWARD}");
    let pointers = vec!["!llvm.ptr"; arguments + 1].join(", ");
    let mut text = format!("module {{\n  llvm.func @{ciface}({pointers})\n  llvm.func @{FORWARD_PACKED}(%args: !llvm.ptr) {{\n");
    let mut values = vec![];
    for i in 0..=arguments {
        text.push_str(&format!(
            "    %slot{i} = llvm.getelementptr %args[{i}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr\n    %p{i} = llvm.load %slot{i} : !llvm.ptr -> !llvm.ptr\n"
        ));
        values.push(format!("%p{i}"));
    }
    text.push_str(&format!("    llvm.call @{ciface}({}) : ({pointers}) -> ()\n    llvm.return\n  }}\n", values.join(", ")));
    if let Some(ProgramMain { initializer, driver, functions }) = program_main {
        let pointers = vec!["!llvm.ptr"; 1 + functions.len()].join(", ");
        let addresses: String = functions
            .iter()
            .enumerate()
            .map(|(i, function)| format!("    %function{i} = llvm.mlir.addressof @{function} : !llvm.ptr\n"))
            .collect();
        // Declared for the parser only: the module defines them, so they are not appended.
        for function in functions {
            text.push_str(&format!("  llvm.func @{function}()\n"));
        }
        let values: String = (0..functions.len()).map(|i| format!(", %function{i}")).collect();
        let initialize = match initializer {
            Some(initializer) => {
                text.push_str(&format!("  llvm.func @{initializer}()\n"));
                format!("llvm.call @{initializer}() : () -> ()\n    ")
            }
            None => String::new(),
        };
        text.push_str(&format!(
            "  llvm.func @{driver}(i32, !llvm.ptr, {pointers}) -> i32\n  \
             llvm.func @main(%argc: i32, %argv: !llvm.ptr) -> i32 {{\n    \
             {initialize}%forward = llvm.mlir.addressof @{FORWARD_PACKED} : !llvm.ptr\n{addresses}    \
             %code = llvm.call @{driver}(%argc, %argv, %forward{values}) : (i32, !llvm.ptr, {pointers}) -> i32\n    \
             llvm.return %code : i32\n  }}\n"
        ));
    }
    text.push_str("}\n");
    append_operations(context, module, &text)
}

/// Parses `text`, a module, and appends its operations to `module`, except declarations of
/// functions that `module` defines (which `text` needs in order to call them).
pub fn append_operations(context: &Context, module: &Module, text: &str) -> Result<(), LoweringError> {
    let (parsed, diagnostics) = capture_diagnostics(context, || Module::parse(context, text));
    let parsed = parsed.ok_or_else(|| LoweringError::Build(format!("generated MLIR does not parse: {}", diagnostics.join("; "))))?;
    let defined: Vec<String> = module
        .body()
        .first_operation()
        .into_iter()
        .flat_map(|first| std::iter::successors(Some(first), |op| op.next_in_block()))
        .filter_map(|op| super::rewrite::symbol_name(&op))
        .collect();
    let mut operation = parsed.body().first_operation();
    while let Some(op) = operation {
        let is_declaration = op.region(0).map(|r| r.first_block().is_none()).unwrap_or(false);
        let defined_here = super::rewrite::symbol_name(&op).is_some_and(|name| defined.contains(&name));
        if !(is_declaration && defined_here) {
            module.body().append_operation((*op).clone());
        }
        operation = op.next_in_block();
    }
    Ok(())
}
