//! Where buffers live on the CUDA target, decided on the bufferized module.
//!
//! Every buffer the network computes is device memory: the host code's allocations go through
//! the generic `_mlir_memref_to_llvm_alloc`, which the runtime implements on the selected
//! device, and `@forward`'s arguments are uploaded by the runtime. Two things are not:
//! - buffers the host writes: the deallocation pipeline's bookkeeping arrays (lists of `index` and `i1`
//!   elements) and small tensors of sizes built element by element for the runtime's
//!   functions: [`host_buffers_to_stack`] moves them to the host's stack;
//! - copies between buffers (`memref.copy`), which the host cannot do on device memory:
//!   [`copies_to_kernels`] rewrites them as `linalg.generic`s, which become kernels.
//!
//! [`check_host_accesses`] then proves, on the outlined module, that host code reads and writes
//! only host memory and that kernels receive only device memory. The emulated device, whose
//! memory is host memory, would run a program that breaks either rule; a GPU would not.

use std::collections::HashMap;

use melior::{
    ir::{
        attribute::Attribute,
        block::BlockLike,
        operation::{OperationBuilder, OperationLike},
        r#type::{IntegerType, MemRefType},
        Type,
        ShapedTypeLike,
        Block, Identifier, Location, Module, OperationRef, Region, RegionLike, TypeLike, Value, ValueLike,
    },
    Context,
};

use crate::lowering::rewrite::{callee, defining_operation, erase, move_before, operation_name, operations_named, replace_all_uses, root, symbol_name, users, Root};
use crate::lowering::{identity_map, LoweringError, FORWARD};

/// Rewrites every `memref.copy` as an elementwise `linalg.generic` from its source to its
/// target, so that the copy runs as a kernel.
pub fn copies_to_kernels(context: &Context, module: &Module) -> Result<(), LoweringError> {
    let location = Location::unknown(context);
    for copy in operations_named(&module.as_operation(), &["memref.copy"]) {
        let (source, target) = (copy.operand(0)?, copy.operand(1)?);
        let source_type = MemRefType::try_from(source.r#type())?;
        let rank = source_type.rank();
        let element = source_type.element();
        let map = format!("affine_map<{}>", identity_map(rank));
        let iterators = vec!["#linalg.iterator_type<parallel>"; rank].join(", ");
        let body = Block::new(&[(element, location), (element, location)]);
        body.append_operation(OperationBuilder::new("linalg.yield", location).add_operands(&[body.argument(0)?.into()]).build()?);
        let region = Region::new();
        region.append_block(body);
        let generic = OperationBuilder::new("linalg.generic", location)
            .add_operands(&[source, target])
            .add_attributes(&[
                (Identifier::new(context, "indexing_maps"), parse(context, &format!("[{map}, {map}]"))?),
                (Identifier::new(context, "iterator_types"), parse(context, &format!("[{iterators}]"))?),
                (Identifier::new(context, "operandSegmentSizes"), parse(context, "array<i32: 1, 1>")?),
            ])
            .add_regions([region])
            .build()?;
        let block = copy.block().expect("a copy is in a block");
        block.insert_operation_before(copy, generic);
        erase(copy);
    }
    Ok(())
}

/// Moves the buffers the host writes from the heap, which is device memory here, to the stack,
/// and drops their deallocations: the deallocation pipeline's bookkeeping arrays (lists of
/// `index` or `i1`) and buffers stored into before any loop nest is a kernel (tensors built
/// element by element). [`check_host_accesses`] checks that none escapes its function.
pub fn host_buffers_to_stack(context: &Context, module: &Module) -> Result<(), LoweringError> {
    let mut stored: Vec<OperationRef> = vec![];
    for store in operations_named(&module.as_operation(), &["memref.store"]) {
        if let Root::Operation(buffer) = root(store.operand(1)?) {
            stored.push(buffer);
        }
    }
    for allocation in operations_named(&module.as_operation(), &["memref.alloc"]) {
        let memref = allocation.result(0)?;
        let memref_type = MemRefType::try_from(memref.r#type())?;
        let element = memref_type.element();
        // The bookkeeping arrays are lists; a tensor of indices (a pooling's argmax) is not one.
        let is_bookkeeping = memref_type.rank() == 1
            && (element.is_index() || IntegerType::try_from(element).is_ok_and(|integer| integer.width() == 1));
        if !is_bookkeeping && !stored.contains(&allocation) {
            continue;
        }
        let operands: Vec<Value> = allocation.operands().collect();
        let attributes: Vec<(Identifier, Attribute)> = allocation.attributes().collect();
        let on_stack = OperationBuilder::new("memref.alloca", Location::unknown(context))
            .add_operands(&operands)
            .add_attributes(&attributes)
            .add_results(&[memref.r#type()])
            .build()?;
        let block = allocation.block().expect("an allocation is in a block");
        let on_stack = block.insert_operation_before(allocation, on_stack);
        replace_all_uses(memref.into(), on_stack.result(0)?.into());
        erase(allocation);
    }
    for deallocation in operations_named(&module.as_operation(), &["memref.dealloc"]) {
        if let Root::Operation(root) = root(deallocation.operand(0)?) {
            if operation_name(&root) == "memref.alloca" {
                erase(deallocation);
            }
        }
    }
    Ok(())
}

/// Wraps each store into device memory left in host code (a rank-0 `linalg` op has no loop
/// to become a kernel: it is a scalar load, compute and store) in a one-iteration
/// `scf.parallel`, with the loads and arithmetic that only it uses, so that it runs as a kernel.
pub fn scalar_stores_to_kernels(context: &Context, module: &Module) -> Result<(), LoweringError> {
    let location = Location::unknown(context);
    let mut placements = Placements::new(module);
    for store in operations_named(&module.as_operation(), &["memref.store"]) {
        let in_loop_nest = std::iter::successors(store.parent_operation(), |op| op.parent_operation())
            .any(|ancestor| matches!(operation_name(&ancestor).as_str(), "scf.parallel" | "gpu.launch" | "gpu.func"));
        if in_loop_nest || placements.of(store.operand(1)?) != Placement::Device {
            continue;
        }
        let block = store.block().expect("a store is in a block");
        // The store's slice in its block, in program order: what it alone uses.
        let mut slice = vec![store];
        let mut index = 0;
        while index < slice.len() {
            let operands: Vec<Value> = slice[index].operands().collect();
            for operand in operands {
                let Some(definition) = defining_operation(operand) else { continue };
                let name = operation_name(&definition);
                let movable = definition.block() == Some(block)
                    && (name == "memref.load" || (name.starts_with("arith.") && name != "arith.constant"))
                    && users(operand).iter().all(|user| slice.contains(user));
                if movable && !slice.contains(&definition) {
                    slice.push(definition);
                }
            }
            index += 1;
        }
        slice.sort_by_key(|operation| position_in_block(operation));
        let first = slice[0];
        let constant = |value: i64| -> Result<Value, LoweringError> {
            let operation = OperationBuilder::new("arith.constant", location)
                .add_attributes(&[(Identifier::new(context, "value"), parse(context, &format!("{value} : index"))?)])
                .add_results(&[Type::index(context)])
                .build()?;
            Ok(block.insert_operation_before(first, operation).result(0)?.into())
        };
        let (zero, one) = (constant(0)?, constant(1)?);
        let body = Block::new(&[(Type::index(context), location)]);
        let region = Region::new();
        let body = region.append_block(body);
        let parallel = OperationBuilder::new("scf.parallel", location)
            .add_operands(&[zero, one, one])
            .add_attributes(&[(Identifier::new(context, "operandSegmentSizes"), parse(context, "array<i32: 1, 1, 1, 0>")?)])
            .add_regions([region])
            .build()?;
        let terminator = body.append_operation(OperationBuilder::new("scf.reduce", location).build()?);
        block.insert_operation_before(first, parallel);
        for operation in slice {
            move_before(operation, terminator);
        }
    }
    Ok(())
}

/// The number of operations before `operation` in its block.
fn position_in_block(operation: &OperationRef) -> usize {
    let first = operation.block().and_then(|block| block.first_operation());
    std::iter::successors(first, |previous| previous.next_in_block()).take_while(|other| other != operation).count()
}

/// Checks the outlined module's host code: every `memref.load`/`memref.store` reads or writes
/// host memory, no `memref.copy` is left, every buffer a `gpu.launch_func` passes is device
/// memory, and no function returns a buffer on its stack.
pub fn check_host_accesses(module: &Module) -> Result<(), LoweringError> {
    let mut placements = Placements::new(module);
    let host_functions = module.body().first_operation().into_iter().flat_map(|first| {
        std::iter::successors(Some(first), |operation| operation.next_in_block()).filter(|operation| operation_name(operation) == "func.func")
    });
    for function in host_functions {
        let function_name = symbol_name(&function).unwrap_or_default();
        for access in operations_named(&function, &["memref.load", "memref.store", "memref.copy", "gpu.launch_func", "func.return"]) {
            let name = operation_name(&access);
            let problem = match name.as_str() {
                "memref.copy" => Some("copies a buffer on the host".to_owned()),
                "func.return" => access
                    .operands()
                    .any(|operand| matches!(root(operand), Root::Operation(buffer) if operation_name(&buffer) == "memref.alloca"))
                    .then(|| "returns a buffer on the stack".to_owned()),
                "memref.load" | "memref.store" => {
                    let memref = access.operand(if name == "memref.load" { 0 } else { 1 })?;
                    (placements.of(memref) != Placement::Host).then(|| "reads or writes device memory on the host".to_owned())
                }
                _ => access
                    .operands()
                    .filter(|operand| MemRefType::try_from(operand.r#type()).is_ok())
                    .find(|operand| placements.of(*operand) != Placement::Device)
                    .map(|_| format!("passes host memory to kernel `{}`", access.attribute("kernel").map(|k| k.to_string()).unwrap_or_default())),
            };
            if let Some(problem) = problem {
                return Err(LoweringError::Build(format!("`{name}` in `@{function_name}` {problem}: the CUDA target keeps every tensor on the device")));
            }
        }
    }
    Ok(())
}

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Host,
    Device,
    /// Not known: a value merged from control flow, or a function called with both.
    Unknown,
}

/// The placement of buffers: allocations on the stack and global constants are host memory,
/// `@forward`'s arguments and every other buffer device memory; a function argument is where
/// its callers' buffers are.
struct Placements<'c, 'a> {
    calls: HashMap<String, Vec<OperationRef<'c, 'a>>>,
    arguments: HashMap<(String, usize), Placement>,
    /// Loops' carried values being placed: within their own iterations they add nothing.
    carried: Vec<(OperationRef<'c, 'a>, usize, Placement)>,
}

impl<'c, 'a> Placements<'c, 'a> {
    fn new(module: &'a Module<'c>) -> Self {
        let mut calls: HashMap<String, Vec<OperationRef>> = HashMap::new();
        for call in operations_named(&module.as_operation(), &["func.call"]) {
            calls.entry(callee(&call).unwrap_or_default()).or_default().push(call);
        }
        Placements { calls, arguments: HashMap::new(), carried: vec![] }
    }

    fn of(&mut self, value: Value<'c, 'a>) -> Placement {
        match root(value) {
            Root::Operation(operation) => match operation_name(&operation).as_str() {
                "memref.alloca" | "memref.get_global" => Placement::Host,
                _ => Placement::Device,
            },
            Root::Argument { function, .. } if function == FORWARD => Placement::Device,
            Root::Argument { function, index } => {
                let key = (function.clone(), index);
                if let Some(placement) = self.arguments.get(&key) {
                    return *placement;
                }
                // A recursive call sees Unknown, which no function here makes.
                self.arguments.insert(key.clone(), Placement::Unknown);
                let callers = self.calls.get(&function).cloned().unwrap_or_default();
                let mut found: Option<Placement> = None;
                for call in callers {
                    let placement = call.operand(index).map_or(Placement::Unknown, |operand| self.of(operand));
                    found = Some(match found {
                        None => placement,
                        Some(previous) if previous == placement => placement,
                        Some(_) => Placement::Unknown,
                    });
                }
                let placement = found.unwrap_or(Placement::Unknown);
                self.arguments.insert(key, placement);
                placement
            }
            Root::Carried { for_loop, index } => {
                if let Some(&(.., initial)) = self.carried.iter().find(|(l, i, _)| (*l, *i) == (for_loop, index)) {
                    return initial;
                }
                // Operands: lower bound, upper bound, step, then the initial values.
                let initial = for_loop.operand(3 + index).map_or(Placement::Unknown, |operand| self.of(operand));
                self.carried.push((for_loop, index, initial));
                let yielded = for_loop
                    .region(0)
                    .ok()
                    .and_then(|region| region.first_block())
                    .and_then(|block| block.terminator())
                    .and_then(|terminator| terminator.operand(index).ok())
                    .map_or(Placement::Unknown, |operand| self.of(operand));
                self.carried.pop();
                if initial == yielded { initial } else { Placement::Unknown }
            }
            Root::Unknown => Placement::Unknown,
        }
    }
}

fn parse<'c>(context: &'c Context, text: &str) -> Result<Attribute<'c>, LoweringError> {
    Attribute::parse(context, text).ok_or_else(|| LoweringError::Build(format!("invalid attribute `{text}`")))
}

