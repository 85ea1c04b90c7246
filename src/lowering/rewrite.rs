//! In-place rewrites of a module for what MLIR's pass pipelines do not do (the CUDA target's
//! memory placement and emulated kernels): finding operations, replacing values, erasing and
//! cloning operations. melior's safe API has no erase or use replacement; these wrap MLIR's C
//! API for it.

use melior::ir::{
    block::BlockArgument,
    operation::{OperationLike, OperationResult, WalkOrder, WalkResult},
    Attribute, Operation, OperationRef, RegionLike, RegionRef, Value, ValueLike,
};

/// Every operation named one of `names` under `root` (itself included), in pre-order.
pub fn operations_named<'c: 'a, 'a>(root: &impl OperationLike<'c, 'a>, names: &[&str]) -> Vec<OperationRef<'c, 'a>> {
    operations_where(root, |name| names.contains(&name))
}

/// Every operation under `root` (itself included) whose name satisfies `predicate`, in
/// pre-order. Erasing one of them leaves the others valid, unless it contains them.
pub fn operations_where<'c: 'a, 'a>(root: &impl OperationLike<'c, 'a>, predicate: impl Fn(&str) -> bool) -> Vec<OperationRef<'c, 'a>> {
    let mut found = vec![];
    root.walk(WalkOrder::PreOrder, |operation| {
        if predicate(&operation_name(&operation)) {
            found.push(operation.to_raw());
        }
        WalkResult::Advance
    });
    // SAFETY: the operations live in `root`'s IR, borrowed for `'a`.
    found.into_iter().map(|raw| unsafe { OperationRef::from_raw(raw) }).collect()
}

/// The operation's name, e.g. `memref.alloc`.
pub fn operation_name<'c: 'a, 'a>(operation: &impl OperationLike<'c, 'a>) -> String {
    operation.name().as_string_ref().as_str().unwrap_or_default().to_owned()
}

/// Replaces every use of `of` by `with`.
pub fn replace_all_uses(of: Value, with: Value) {
    // SAFETY: both values are live values of the same context.
    unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(of.to_raw(), with.to_raw()) }
}

/// The operations that use `value`, once per use.
pub fn users<'c, 'a>(value: Value<'c, 'a>) -> Vec<OperationRef<'c, 'a>> {
    let mut found = vec![];
    // SAFETY: the value is live; its use list is walked without changing the IR.
    unsafe {
        let mut operand = mlir_sys::mlirValueGetFirstUse(value.to_raw());
        while !mlir_sys::mlirOpOperandIsNull(operand) {
            found.push(OperationRef::from_raw(mlir_sys::mlirOpOperandGetOwner(operand)));
            operand = mlir_sys::mlirOpOperandGetNextUse(operand);
        }
    }
    found
}

/// Moves `operation` out of its block to just before `anchor`, in the same or another block.
pub fn move_before(operation: OperationRef, anchor: OperationRef) {
    // SAFETY: two live operations in blocks; MLIR relinks the first.
    unsafe { mlir_sys::mlirOperationMoveBefore(operation.to_raw(), anchor.to_raw()) }
}

/// Removes `operation` from its block and destroys it. Its results must have no uses left.
pub fn erase(operation: OperationRef) {
    // SAFETY: the operation is live and owned by its block, which gives it up here; the caller
    // holds no other reference to it afterwards (it is taken by value).
    unsafe { mlir_sys::mlirOperationDestroy(operation.to_raw()) }
}

/// A detached copy of `operation`, regions included.
pub fn clone_detached<'c>(operation: &OperationRef<'c, '_>) -> Operation<'c> {
    // SAFETY: the clone is a new, unowned operation, which `Operation` takes ownership of.
    unsafe { Operation::from_raw(mlir_sys::mlirOperationClone(operation.to_raw())) }
}

/// Moves the blocks of `source` to the end of `target`.
pub fn take_body(target: RegionRef, source: RegionRef) {
    // SAFETY: two live regions; MLIR moves the blocks.
    unsafe { mlir_sys::mlirRegionTakeBody(target.to_raw(), source.to_raw()) }
}

/// The operation that defines `value`, if it is an operation's result.
pub fn defining_operation<'c, 'a>(value: Value<'c, 'a>) -> Option<OperationRef<'c, 'a>> {
    OperationResult::try_from(value).ok().map(|result| result.owner())
}

/// For a block argument: the operation whose region holds its block, and its position.
pub fn argument_owner<'c, 'a>(value: Value<'c, 'a>) -> Option<(OperationRef<'c, 'a>, usize)> {
    let argument = BlockArgument::try_from(value).ok()?;
    let number = argument.argument_number();
    // SAFETY: the raw block is the argument's live owner; its parent operation outlives `'a`.
    let parent = unsafe { mlir_sys::mlirBlockGetParentOperation(mlir_sys::mlirBlockArgumentGetOwner(argument.to_raw())) };
    // SAFETY: a block argument's block always has a parent operation here (function bodies).
    let parent = unsafe { OperationRef::from_option_raw(parent) }?;
    Some((parent, number))
}

/// The symbol name of a `func.func`, `gpu.func`, `gpu.module` or `llvm.func`.
pub fn symbol_name<'c: 'a, 'a>(operation: &impl OperationLike<'c, 'a>) -> Option<String> {
    let name = operation.attribute("sym_name").ok()?;
    melior::ir::attribute::StringAttribute::try_from(name).ok().map(|s| s.value().to_owned())
}

/// The callee of a `func.call`.
pub fn callee<'c: 'a, 'a>(operation: &impl OperationLike<'c, 'a>) -> Option<String> {
    let callee: Attribute = operation.attribute("callee").ok()?;
    Some(callee.to_string().trim_start_matches('@').trim_matches('"').to_owned())
}

/// Sets the attribute `name` of `operation` (inherent or discardable).
pub fn set_attribute<'c: 'a, 'a>(operation: &impl OperationLike<'c, 'a>, name: &str, attribute: Attribute<'c>) {
    let name = melior::StringRef::new(name);
    // SAFETY: a live operation and an attribute of its context.
    unsafe { mlir_sys::mlirOperationSetAttributeByName(operation.to_raw(), name.to_raw(), melior::ir::attribute::AttributeLike::to_raw(&attribute)) }
}

/// Renames every symbol that `module` defines at its top level (functions with a body, globals)
/// to `prefix` followed by its name, and every use of it, so that its definitions can join
/// another module's without clashing. Declarations keep their names: they name what the
/// program links with.
pub fn prefix_definitions(module: &melior::ir::Module, prefix: &str) {
    use melior::ir::BlockLike;
    let top = module.as_operation();
    // SAFETY: the module lives in this context, which outlives this call.
    let context = unsafe { module.context().to_ref() };
    let mut operation = module.body().first_operation();
    while let Some(op) = operation {
        let is_declaration = op.name().as_string_ref().as_str() == Ok("llvm.func") && op.region(0).map(|r| r.first_block().is_none()).unwrap_or(true);
        if let Some(name) = symbol_name(&op).filter(|_| !is_declaration) {
            let renamed = format!("{prefix}{name}");
            let (old, new) = (melior::StringRef::new(&name), melior::StringRef::new(&renamed));
            // SAFETY: live operations; the strings outlive the call.
            let replaced = unsafe { mlir_sys::mlirSymbolTableReplaceAllSymbolUses(old.to_raw(), new.to_raw(), top.to_raw()) };
            assert!(replaced.value != 0, "the uses of `{name}` are renamed");
            set_attribute(&op, "sym_name", melior::ir::attribute::StringAttribute::new(context, &renamed).into());
        }
        operation = op.next_in_block();
    }
}
