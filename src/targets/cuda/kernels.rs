//! The kernels of a CUDA module, after outlining:
//! - [`merge_kernel_modules`]: one `gpu.module` ([`KERNEL_MODULE`]) holds every kernel, so a
//!   program loads one PTX module; each kernel is named after the module outlining made for it,
//!   which is unique (outlining names kernels after their function, and a function launches
//!   several), and a fingerprint of all the kernels' code: the emulated device keeps CPU forms
//!   by name for the whole process, so equal names must mean equal code;
//! - [`add_cpu_forms`]: each kernel also as a host function `<kernel>_cpu`, its body the
//!   kernel's, taking the block and thread indices and the grid and block sizes as leading
//!   `index` arguments: the form the emulated device runs, from the same source as the PTX;
//! - [`add_emulator_table`], after lowering: `<kernel>_emulated(ids, params)`, the CPU form
//!   called the way the runtime launches (`ids`: 12 `i64`s, `params`: pointers to each expanded
//!   argument, as `mgpuLaunchKernel` gets them), and `mrc_emulated_kernels(count*)`, the table of
//!   names and entries that a program hands its runtime.

use melior::{
    ir::{
        attribute::{Attribute, StringAttribute, TypeAttribute},
        block::BlockLike,
        operation::{OperationBuilder, OperationLike},
        r#type::FunctionType,
        Identifier, Location, Module, Region, RegionLike, Type, TypeLike,
    },
    Context,
};

use crate::lowering::rewrite::{clone_detached, erase, operation_name, operations_named, operations_where, replace_all_uses, set_attribute, symbol_name, take_body};
use crate::lowering::{append_operations, LoweringError};

/// The one `gpu.module` of a CUDA program.
pub const KERNEL_MODULE: &str = "mrc_kernels";

/// The function that lists the emulated kernels: `const Entry *mrc_emulated_kernels(i64 *count)`.
pub const EMULATED_KERNELS: &str = "mrc_emulated_kernels";

/// The index arguments of a CPU form, in order, as `gpu` ops name them.
const INDICES: [(&str, &str); 4] = [("gpu.block_id", "block"), ("gpu.thread_id", "thread"), ("gpu.grid_dim", "grid"), ("gpu.block_dim", "block size")];

/// Moves every kernel into one `gpu.module` [`KERNEL_MODULE`], named after the module it was
/// outlined into, and points the launches at them. Returns the kernels' names.
pub fn merge_kernel_modules(context: &Context, module: &Module) -> Result<Vec<String>, LoweringError> {
    append_operations(context, module, &format!("module {{\n  gpu.module @{KERNEL_MODULE} {{\n  }}\n}}"))?;
    let top_level: Vec<_> = operations_named(&module.as_operation(), &["gpu.module"]);
    let merged = top_level
        .iter()
        .find(|m| symbol_name(*m).as_deref() == Some(KERNEL_MODULE))
        .copied()
        .ok_or_else(|| LoweringError::Build("the kernel module was not added".into()))?;
    let merged_body = merged.region(0)?.first_block().ok_or_else(|| LoweringError::Build("gpu.module without a body".into()))?;

    let outlined_modules: Vec<_> = top_level.into_iter().filter(|m| *m != merged).collect();
    let code: String = outlined_modules.iter().map(|m| m.to_string()).collect();
    let fingerprint = code.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut kernels = vec![];
    let mut symbols = vec![];
    for outlined in outlined_modules {
        let module_name = format!("{}_{:08x}", symbol_name(&outlined).unwrap_or_default(), fingerprint as u32);
        let body = outlined.region(0)?.first_block().ok_or_else(|| LoweringError::Build(format!("gpu.module @{module_name} has no body")))?;
        let mut next = body.first_operation();
        while let Some(operation) = next {
            next = operation.next_in_block();
            let copy = clone_detached(&operation);
            if operation_name(&operation) == "gpu.func" {
                set_attribute(&copy, "sym_name", StringAttribute::new(context, &module_name).into());
                kernels.push(module_name.clone());
            } else {
                // Symbols the kernels use (globals), copied into each module by the outlining.
                let symbol = symbol_name(&operation).unwrap_or_default();
                if symbols.contains(&symbol) {
                    continue;
                }
                symbols.push(symbol);
            }
            merged_body.append_operation(copy);
        }
        erase(outlined);
    }

    for launch in operations_named(&module.as_operation(), &["gpu.launch_func"]) {
        // `@outlined_module::@kernel_function`, now `@KERNEL_MODULE::@outlined_module_<fingerprint>`.
        let kernel = launch.attribute("kernel")?.to_string();
        let outlined = kernel.split("::").next().unwrap_or_default().to_owned();
        let reference = format!("@{KERNEL_MODULE}::{outlined}_{:08x}", fingerprint as u32);
        let reference = Attribute::parse(context, &reference).ok_or_else(|| LoweringError::Build(format!("invalid kernel reference `{reference}`")))?;
        set_attribute(&launch, "kernel", reference);
    }
    Ok(kernels)
}

/// Adds, for each of `kernels`, its CPU form `<kernel>_cpu`: the kernel's body in a host
/// function whose first twelve arguments are the block index, the thread index, the grid size
/// and the block size (x, y, z each), in place of the `gpu` ops that read them.
pub fn add_cpu_forms(context: &Context, module: &Module, kernels: &[String]) -> Result<(), LoweringError> {
    let location = Location::unknown(context);
    let index = Type::index(context);
    for kernel in operations_named(&module.as_operation(), &["gpu.func"]) {
        let name = symbol_name(&kernel).unwrap_or_default();
        if !kernels.contains(&name) {
            continue;
        }
        let signature = FunctionType::try_from(TypeAttribute::try_from(kernel.attribute("function_type")?)?.value())?;
        let mut inputs = vec![index; 12];
        inputs.extend((0..signature.input_count()).map(|i| signature.input(i)).collect::<Result<Vec<_>, _>>()?);
        let cpu_form = OperationBuilder::new("func.func", location)
            .add_attributes(&[
                (Identifier::new(context, "sym_name"), StringAttribute::new(context, &cpu_form_name(&name)).into()),
                (Identifier::new(context, "function_type"), TypeAttribute::new(FunctionType::new(context, &inputs, &[]).into()).into()),
            ])
            .add_regions([Region::new()])
            .build()?;
        let body = clone_detached(&kernel);
        take_body(cpu_form.region(0)?, body.region(0)?);
        let entry = cpu_form.region(0)?.first_block().ok_or_else(|| LoweringError::Build(format!("kernel @{name} has no body")))?;
        for position in 0..12 {
            entry.insert_argument(position, index, location);
        }
        for operation in operations_where(&cpu_form, |name| name.starts_with("gpu.")) {
            let operation_kind = operation_name(&operation);
            if let Some(family) = INDICES.iter().position(|(kind, _)| *kind == operation_kind) {
                let dimension = operation.attribute("dimension")?.to_string();
                let axis = ["x", "y", "z"].iter().position(|axis| dimension.contains(&format!("dim {axis}")))
                    .ok_or_else(|| LoweringError::Build(format!("`{operation_kind}` of unknown dimension `{dimension}`")))?;
                replace_all_uses(operation.result(0)?.into(), entry.argument(3 * family + axis)?.into());
                erase(operation);
            } else if operation_kind == "gpu.return" {
                let block = operation.block().expect("a return is in a block");
                block.insert_operation_before(operation, OperationBuilder::new("func.return", location).build()?);
                erase(operation);
            } else {
                return Err(LoweringError::Build(format!(
                    "kernel @{name} uses `{operation_kind}`, which the emulated device does not run"
                )));
            }
        }
        module.body().append_operation(cpu_form);
    }
    Ok(())
}

/// Adds, to a module lowered to the LLVM dialect, each kernel's entry for the emulated device
/// and the table [`EMULATED_KERNELS`] of them.
pub fn add_emulator_table(context: &Context, module: &Module, kernels: &[String]) -> Result<(), LoweringError> {
    let functions = operations_named(&module.as_operation(), &["llvm.func"]);
    let mut text = String::from("module {\n");
    for (k, kernel) in kernels.iter().enumerate() {
        let cpu_form = cpu_form_name(kernel);
        let function = functions
            .iter()
            .find(|f| symbol_name(*f).as_deref() == Some(cpu_form.as_str()))
            .ok_or_else(|| LoweringError::Build(format!("the CPU form of kernel @{kernel} was not lowered")))?;
        let parameters = llvm_function_inputs(function.attribute("function_type")?)?;
        let mut body = String::new();
        let mut values = vec![];
        for i in 0..12 {
            body.push_str(&format!(
                "    %id{i}_slot = llvm.getelementptr %ids[{i}] : (!llvm.ptr) -> !llvm.ptr, i64\n    %id{i} = llvm.load %id{i}_slot : !llvm.ptr -> i64\n"
            ));
            values.push(format!("%id{i}"));
        }
        for (i, parameter) in parameters.iter().enumerate().skip(12) {
            let p = i - 12;
            body.push_str(&format!(
                "    %p{p}_slot = llvm.getelementptr %params[{p}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr\n    \
                 %p{p}_address = llvm.load %p{p}_slot : !llvm.ptr -> !llvm.ptr\n    \
                 %p{p} = llvm.load %p{p}_address : !llvm.ptr -> {parameter}\n"
            ));
            values.push(format!("%p{p}"));
        }
        let types = parameters.join(", ");
        text.push_str(&format!(
            "  llvm.func @{cpu_form}({types})\n  \
             llvm.func @{kernel}_emulated(%ids: !llvm.ptr, %params: !llvm.ptr) {{\n{body}    \
             llvm.call @{cpu_form}({}) : ({types}) -> ()\n    llvm.return\n  }}\n  \
             llvm.mlir.global private constant @kernel_name_{k}(\"{kernel}\\00\") {{addr_space = 0 : i32}} : !llvm.array<{} x i8>\n",
            values.join(", "),
            kernel.len() + 1
        ));
    }
    let entry = "!llvm.struct<(ptr, ptr)>";
    let table = format!("!llvm.array<{} x {entry}>", kernels.len());
    text.push_str(&format!("  llvm.mlir.global private constant @kernel_table() {{addr_space = 0 : i32}} : {table} {{\n    %t0 = llvm.mlir.undef : {table}\n"));
    for (k, kernel) in kernels.iter().enumerate() {
        text.push_str(&format!(
            "    %n{k} = llvm.mlir.addressof @kernel_name_{k} : !llvm.ptr\n    \
             %f{k} = llvm.mlir.addressof @{kernel}_emulated : !llvm.ptr\n    \
             %s{k} = llvm.insertvalue %n{k}, %t{k}[{k}, 0] : {table}\n    \
             %t{} = llvm.insertvalue %f{k}, %s{k}[{k}, 1] : {table}\n",
            k + 1
        ));
    }
    text.push_str(&format!(
        "    llvm.return %t{} : {table}\n  }}\n  \
         llvm.func @{EMULATED_KERNELS}(%count: !llvm.ptr) -> !llvm.ptr {{\n    \
         %n = llvm.mlir.constant({} : i64) : i64\n    llvm.store %n, %count : i64, !llvm.ptr\n    \
         %table = llvm.mlir.addressof @kernel_table : !llvm.ptr\n    llvm.return %table : !llvm.ptr\n  }}\n}}\n",
        kernels.len(),
        kernels.len()
    ));
    append_operations(context, module, &text)
}

fn cpu_form_name(kernel: &str) -> String {
    format!("{kernel}_cpu")
}

/// The parameter types of an `!llvm.func<...>` type attribute, as text.
fn llvm_function_inputs(function_type: Attribute) -> Result<Vec<String>, LoweringError> {
    let function_type = TypeAttribute::try_from(function_type)?.value();
    // SAFETY: an `llvm.func`'s `function_type` is an LLVM function type.
    let count = unsafe { mlir_sys::mlirLLVMFunctionTypeGetNumInputs(function_type.to_raw()) };
    Ok((0..count)
        // SAFETY: `i` is below the number of inputs.
        .map(|i| unsafe { Type::from_raw(mlir_sys::mlirLLVMFunctionTypeGetInput(function_type.to_raw(), i)) }.to_string())
        .collect())
}
