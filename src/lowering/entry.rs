//! Entry points added to a module already lowered to the LLVM dialect: `mrc_forward_packed`,
//! the fixed-arity door to `_mlir_ciface_forward` that the runtime calls
//! (`mrc_runtime::abi::forward`), and for a compiled program the C `main`, which hands it to the
//! runtime's program driver.

use melior::{
    ir::{operation::OperationLike, BlockLike, Module},
    Context,
};

use super::{diagnostics::capture_diagnostics, error::LoweringError, FORWARD};
use mrc_runtime::abi::forward::FORWARD_PACKED;

/// The runtime's program driver: `mrc_program_main(argc, argv, forward)`.
pub const PROGRAM_MAIN: &str = "mrc_program_main";

/// Adds `mrc_forward_packed(void **args)` for a forward function of `arguments` arguments and at
/// least one result: `args[0]` is the results' pointer, `args[1 + i]` argument i's descriptor.
/// With `program_main`, also adds `main`.
pub fn add_entry_points(context: &Context, module: &Module, arguments: usize, program_main: bool) -> Result<(), LoweringError> {
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
    if program_main {
        text.push_str(&format!(
            "  llvm.func @{PROGRAM_MAIN}(i32, !llvm.ptr, !llvm.ptr) -> i32\n  \
             llvm.func @main(%argc: i32, %argv: !llvm.ptr) -> i32 {{\n    \
             %forward = llvm.mlir.addressof @{FORWARD_PACKED} : !llvm.ptr\n    \
             %code = llvm.call @{PROGRAM_MAIN}(%argc, %argv, %forward) : (i32, !llvm.ptr, !llvm.ptr) -> i32\n    \
             llvm.return %code : i32\n  }}\n"
        ));
    }
    text.push_str("}\n");
    let (parsed, diagnostics) = capture_diagnostics(context, || Module::parse(context, &text));
    let parsed = parsed.ok_or_else(|| LoweringError::Build(format!("entry points do not parse: {}", diagnostics.join("; "))))?;
    let mut operation = parsed.body().first_operation();
    while let Some(op) = operation {
        let is_ciface = op.attribute("sym_name").map(|a| a.to_string() == format!("\"{ciface}\"")).unwrap_or(false);
        if !is_ciface {
            module.body().append_operation((*op).clone());
        }
        operation = op.next_in_block();
    }
    Ok(())
}
