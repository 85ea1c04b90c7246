//! In-place rewrites of a module for what MLIR's pass pipelines do not do (the CUDA target's
//! memory placement and emulated kernels, early frees): finding operations, replacing values,
//! erasing and cloning operations, following views to their buffer. melior's safe API has no erase or use replacement; these wrap MLIR's C
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
    let context = module.context();
    // SAFETY: `context` refers to the module's live context, and outlives the borrow.
    let context = unsafe { context.to_ref() };
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

/// Operations whose first result is a view of their first operand (the same buffer).
pub const VIEWS: [&str; 9] = [
    "memref.cast",
    "memref.subview",
    "memref.collapse_shape",
    "memref.expand_shape",
    "memref.reinterpret_cast",
    "memref.view",
    "memref.reshape",
    "memref.transpose",
    "memref.extract_strided_metadata",
];

/// What a buffer is a view of.
pub enum Root<'c, 'a> {
    Operation(OperationRef<'c, 'a>),
    /// The argument `index` of function `function`.
    Argument { function: String, index: usize },
    /// The carried value `index` of an `scf.for` (its block argument or its result): where its
    /// initial value and the value each iteration yields are.
    Carried { for_loop: OperationRef<'c, 'a>, index: usize },
    Unknown,
}

/// The buffer `value` is a view of: `value` itself unless one of [`VIEWS`] made it.
pub fn viewed_buffer<'c, 'a>(mut value: Value<'c, 'a>) -> Value<'c, 'a> {
    while let Some(operation) = defining_operation(value).filter(|operation| VIEWS.contains(&operation_name(operation).as_str())) {
        match operation.operand(0) {
            // SAFETY: the operand lives in the same IR as `value`, borrowed for `'a`.
            Ok(viewed) => value = unsafe { Value::from_raw(viewed.to_raw()) },
            Err(_) => break,
        }
    }
    value
}

/// Follows views and casts back to the buffer they look into.
pub fn root<'c, 'a>(value: Value<'c, 'a>) -> Root<'c, 'a> {
    let value = viewed_buffer(value);
    if let Some(operation) = defining_operation(value) {
        if operation_name(&operation) == "scf.for" {
            let index = OperationResult::try_from(value).map_or(0, |result| result.result_number());
            Root::Carried { for_loop: operation, index }
        } else if VIEWS.contains(&operation_name(&operation).as_str()) {
            Root::Unknown
        } else {
            Root::Operation(operation)
        }
    } else if let Some((owner, index)) = argument_owner(value) {
        match operation_name(&owner).as_str() {
            "func.func" => Root::Argument { function: symbol_name(&owner).unwrap_or_default(), index },
            // Argument 0 is the induction variable.
            "scf.for" if index > 0 => Root::Carried { for_loop: owner, index: index - 1 },
            _ => Root::Unknown,
        }
    } else {
        Root::Unknown
    }
}
