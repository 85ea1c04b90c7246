//! Entry points added to a module already lowered to the LLVM dialect: `mrc_forward_packed`,
//! the fixed-arity door to `_mlir_ciface_forward` that the runtime calls
//! (`mrc_runtime::abi::forward`), and for a compiled program the C `main`, which hands it to the
//! runtime's program driver.

use std::collections::HashMap;

use melior::{
    ir::{operation::OperationLike, BlockLike, Module, OperationRef, RegionLike},
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
    /// The training program driver: `mrc_training_program_main(argc, argv, step, evaluation)`.
    pub const TRAINING: ProgramMain = ProgramMain { initializer: None, driver: "mrc_training_program_main", functions: &[EVALUATION_FORWARD] };
}

/// A training program's inference network's `mrc_forward_packed`, which `--val` evaluates with:
/// the network's module joins the step's with every definition prefixed (see
/// [`super::rewrite::prefix_definitions`]).
pub const EVALUATION_FORWARD: &str = "mrc_evaluation_mrc_forward_packed";

/// The prefix of every definition of a training program's inference network.
pub fn evaluation_prefix() -> &'static str {
    EVALUATION_FORWARD.strip_suffix(FORWARD_PACKED).expect("the evaluation's forward function is a prefixed `mrc_forward_packed`")
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
    append_module(module, &parsed);
    Ok(())
}

/// Appends copies of the operations of `other` to `module`, except declarations of functions
/// that `module` declares or defines; a definition replaces `module`'s declaration of it.
pub fn append_module(module: &Module, other: &Module) {
    let is_declaration = |op: &OperationRef| op.region(0).map(|r| r.first_block().is_none()).unwrap_or(false);
    let mut symbols: HashMap<String, OperationRef> = module
        .body()
        .first_operation()
        .into_iter()
        .flat_map(|first| std::iter::successors(Some(first), |op| op.next_in_block()))
        .filter_map(|op| Some((super::rewrite::symbol_name(&op)?, op)))
        .collect();
    let mut operation = other.body().first_operation();
    while let Some(op) = operation {
        match super::rewrite::symbol_name(&op).and_then(|name| symbols.remove(&name)) {
            Some(_) if is_declaration(&op) => {}
            Some(existing) => {
                if is_declaration(&existing) {
                    super::rewrite::erase(existing);
                }
                module.body().append_operation((*op).clone());
            }
            None => {
                module.body().append_operation((*op).clone());
            }
        }
        operation = op.next_in_block();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lowering::{create_context, parse_module, rewrite::prefix_definitions};
    use melior::ir::operation::OperationLike;

    /// A module joins another: its definitions and their uses prefixed, its declarations kept
    /// (once), and its definition replacing the other's declaration of it.
    #[test]
    fn a_prefixed_module_joins_another() {
        let context = create_context();
        let companion = parse_module(
            &context,
            r#"module {
  llvm.mlir.global private constant @message("hi\00") {addr_space = 0 : i32}
  llvm.func @mrc_gemm(!llvm.ptr)
  llvm.func @helper(%p: !llvm.ptr) {
    llvm.call @mrc_gemm(%p) : (!llvm.ptr) -> ()
    llvm.return
  }
  llvm.func @run() {
    %m = llvm.mlir.addressof @message : !llvm.ptr
    llvm.call @helper(%m) : (!llvm.ptr) -> ()
    llvm.return
  }
}"#,
        )
        .unwrap();
        let program = parse_module(
            &context,
            r#"module {
  llvm.func @mrc_gemm(!llvm.ptr)
  llvm.func @other_run()
  llvm.func @helper() {
    llvm.call @other_run() : () -> ()
    llvm.return
  }
}"#,
        )
        .unwrap();
        prefix_definitions(&companion, "other_");
        append_module(&program, &companion);
        let text = program.as_operation().to_string();
        assert!(program.as_operation().verify(), "{text}");
        for expected in ["@other_message", "llvm.func @other_helper(", "llvm.func @other_run()", "llvm.call @other_helper(", "llvm.mlir.addressof @other_message", "llvm.func @helper()"] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert_eq!(text.matches("llvm.func @mrc_gemm").count(), 1, "{text}");
        assert_eq!(text.matches("@other_run()").count(), 2, "one definition, one call: {text}");
    }
}
