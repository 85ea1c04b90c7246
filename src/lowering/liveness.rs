//! Buffers freed right after their last use: mrc's memory plan, on top of MLIR's deallocation.
//!
//! MLIR's ownership-based deallocation frees what a block owns at the block's end, in one
//! `bufferization.dealloc` that compares pointers at run time wherever it cannot prove two
//! buffers distinct, and for MLIR a buffer that a call returns may be one of the call's
//! arguments. So every scope function's temporaries lived until it returned, and `@forward`'s
//! (feature maps, the box head's features, the mask head's input) until the whole network had
//! run. mrc knows more: its runtime functions return fresh buffers, and so does every function
//! of the module whose results are rooted in allocations or in such calls.
//! [`free_after_last_use`] takes each buffer that a block owns outright, that is fresh and that
//! never escapes (returned, yielded, carried by a loop, retained, or seen through an operation
//! whose result might alias it) out of its block's `bufferization.dealloc`, and frees it after
//! the last operation of the block that uses it or a view of it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use melior::ir::{
    attribute::Attribute,
    block::BlockLike,
    operation::{OperationBuilder, OperationLike},
    r#type::MemRefType,
    BlockRef, Module, OperationRef, RegionLike, Value, ValueLike,
};

use super::error::LoweringError;
use super::rewrite::{
    callee, defining_operation, operation_name, operations_named, set_attribute, symbol_name, users, viewed_buffer,
    VIEWS,
};

/// Rewrites every `bufferization.dealloc` of `module` (after `ownership-based-buffer-deallocation`,
/// before `bufferization-lower-deallocations`) as described in the module's documentation.
pub fn free_after_last_use(module: &Module) -> Result<(), LoweringError> {
    let fresh = FreshResults::of(module);
    for deallocation in operations_named(&module.as_operation(), &["bufferization.dealloc"]) {
        free_early(deallocation, &fresh)?;
    }
    Ok(())
}

/// Which functions return only fresh buffers.
struct FreshResults<'c, 'a> {
    functions: HashMap<String, OperationRef<'c, 'a>>,
    known: RefCell<HashMap<String, bool>>,
}

impl<'c, 'a> FreshResults<'c, 'a> {
    fn of(module: &'a Module<'c>) -> Self {
        let functions = operations_named(&module.as_operation(), &["func.func"])
            .into_iter()
            .filter_map(|f| Some((symbol_name(&f)?, f)))
            .collect();
        FreshResults { functions, known: RefCell::new(HashMap::new()) }
    }

    /// Whether every buffer `function` returns is a new one, never a view of an argument nor of
    /// another of its results: the runtime's functions (the module's declarations) by their
    /// contract, a function of the module when the buffers it returns are rooted in distinct
    /// fresh buffers.
    fn returns_fresh(&self, function: &str) -> bool {
        if let Some(&known) = self.known.borrow().get(function) {
            return known;
        }
        // A recursive call answers no.
        self.known.borrow_mut().insert(function.to_owned(), false);
        let fresh = self.functions.get(function).is_some_and(|definition| {
            match definition.region(0).ok().and_then(|body| body.first_block()) {
                None => true,
                Some(_) => operations_named(definition, &["func.return"]).iter().all(|returned| {
                    let mut roots = HashSet::new();
                    returned.operands().filter(|value| MemRefType::try_from(value.r#type()).is_ok()).all(|value| {
                        let root = viewed_buffer(value);
                        roots.insert(root.to_raw().ptr)
                            && defining_operation(root).is_some_and(|operation| self.is_fresh(&operation))
                    })
                }),
            }
        });
        self.known.borrow_mut().insert(function.to_owned(), fresh);
        fresh
    }

    /// Whether the buffers `operation` makes are new ones.
    fn is_fresh(&self, operation: &OperationRef) -> bool {
        match operation_name(operation).as_str() {
            "memref.alloc" | "bufferization.clone" => true,
            "func.call" => callee(operation).is_some_and(|name| self.returns_fresh(&name)),
            _ => false,
        }
    }
}

/// Frees each buffer that `deallocation` would free unconditionally after its last use
/// instead, when that is safe.
fn free_early(deallocation: OperationRef, fresh: &FreshResults) -> Result<(), LoweringError> {
    let segments = segment_sizes(&deallocation)?;
    let (listed, retained) = (segments[0], segments[2]);
    let Some(block) = deallocation.block() else { return Ok(()) };
    let order: HashMap<_, usize> =
        operations_of(block).enumerate().map(|(position, operation)| (operation.to_raw().ptr, position)).collect();
    let operands: Vec<Value> = deallocation.operands().collect();

    let mut early = vec![];
    for index in 0..listed {
        if !is_constant_true(operands[listed + index]) {
            continue;
        }
        let buffer = viewed_buffer(operands[index]);
        let Some(definition) = defining_operation(buffer) else { continue };
        if !fresh.is_fresh(&definition) || !order.contains_key(&definition.to_raw().ptr) {
            continue;
        }
        let uses = Uses { deallocation: &deallocation, index, operands: &operands, block, order: &order, fresh };
        if let Some(last) = uses.last_use(buffer, definition) {
            early.push((index, buffer, last));
        }
    }
    if early.is_empty() {
        return Ok(());
    }

    let kept: Vec<usize> = (0..listed).filter(|index| !early.iter().any(|(early, ..)| early == index)).collect();
    let new_operands: Vec<_> = kept
        .iter()
        .map(|&index| operands[index])
        .chain(kept.iter().map(|&index| operands[listed + index]))
        .chain(operands[2 * listed..].iter().copied())
        .map(|value| value.to_raw())
        .collect();
    // SAFETY: a live operation, and values of its IR that dominate it (they were its operands).
    unsafe {
        mlir_sys::mlirOperationSetOperands(deallocation.to_raw(), new_operands.len() as isize, new_operands.as_ptr())
    };
    let context = deallocation.context();
    // SAFETY: `context` refers to the live context of the operation, and outlives the borrow.
    let context = unsafe { context.to_ref() };
    let sizes = format!("array<i32: {}, {}, {retained}>", kept.len(), kept.len());
    let sizes =
        Attribute::parse(context, &sizes).ok_or_else(|| LoweringError::Build(format!("cannot parse `{sizes}`")))?;
    set_attribute(&deallocation, "operandSegmentSizes", sizes);

    for (_, buffer, last) in &early {
        let free = OperationBuilder::new("memref.dealloc", deallocation.location()).add_operands(&[*buffer]).build()?;
        block.insert_operation_after(*last, free);
    }
    Ok(())
}

/// Where one buffer listed by a `bufferization.dealloc` is used.
struct Uses<'r, 'c, 'a> {
    deallocation: &'r OperationRef<'c, 'a>,
    /// The buffer's position in the deallocation's list.
    index: usize,
    /// The deallocation's operands: buffers, their conditions, retained buffers.
    operands: &'r [Value<'c, 'a>],
    block: BlockRef<'c, 'a>,
    order: &'r HashMap<*mut std::ffi::c_void, usize>,
    fresh: &'r FreshResults<'c, 'a>,
}

impl<'c, 'a> Uses<'_, 'c, 'a> {
    /// The last operation of the block that uses `buffer` (made by `definition`) or a view of
    /// it (`definition` when none does), or `None` if the buffer may be used after it: a view
    /// of it escapes, or is used outside the block, or is listed again by the deallocation.
    fn last_use(&self, buffer: Value<'c, 'a>, definition: OperationRef<'c, 'a>) -> Option<OperationRef<'c, 'a>> {
        let mut last = (self.order[&definition.to_raw().ptr], definition);
        let mut pending = vec![buffer];
        let mut seen = HashSet::new();
        while let Some(view) = pending.pop() {
            if !seen.insert(view.to_raw().ptr) {
                continue;
            }
            for user in users(view) {
                let name = operation_name(&user);
                if user == *self.deallocation {
                    let listed_only_here = self
                        .operands
                        .iter()
                        .enumerate()
                        .all(|(position, operand)| *operand != view || position == self.index);
                    if !listed_only_here {
                        return None;
                    }
                } else if VIEWS.contains(&name.as_str()) {
                    pending.extend(
                        user.results().map(Value::from).filter(|result| MemRefType::try_from(result.r#type()).is_ok()),
                    );
                } else if self.escapes(&user, &name) {
                    return None;
                } else {
                    let at = self.ancestor_in_block(user)?;
                    let position = self.order[&at.to_raw().ptr];
                    if position > last.0 {
                        last = (position, at);
                    }
                }
            }
        }
        Some(last.1)
    }

    /// Whether a buffer that `user` (not a view) uses may live on past it: `user` passes it on
    /// (returns, yields, branches) or keeps deciding its fate (another deallocation), or makes
    /// a buffer that may alias it.
    fn escapes(&self, user: &OperationRef, name: &str) -> bool {
        const PASSES_ON: [&str; 6] =
            ["func.return", "scf.yield", "scf.condition", "cf.br", "cf.cond_br", "bufferization.dealloc"];
        if PASSES_ON.contains(&name) {
            return true;
        }
        let makes_buffer = user.results().any(|result| MemRefType::try_from(result.r#type()).is_ok());
        makes_buffer && !self.fresh.is_fresh(user)
    }

    /// The operation of the block that is or contains `operation`.
    fn ancestor_in_block(&self, mut operation: OperationRef<'c, 'a>) -> Option<OperationRef<'c, 'a>> {
        loop {
            if operation.block().is_some_and(|block| block == self.block) {
                return Some(operation);
            }
            operation = operation.parent_operation()?;
        }
    }
}

/// The operations of `block`, in order.
fn operations_of<'c, 'a>(block: BlockRef<'c, 'a>) -> impl Iterator<Item = OperationRef<'c, 'a>> {
    std::iter::successors(block.first_operation(), |operation| operation.next_in_block())
}

/// Whether `value` is the constant `true`.
fn is_constant_true(value: Value) -> bool {
    defining_operation(value).is_some_and(|operation| {
        operation_name(&operation) == "arith.constant"
            && operation.attribute("value").is_ok_and(|value| value.to_string() == "true")
    })
}

/// A `bufferization.dealloc`'s operand counts: listed buffers, their conditions, retained.
fn segment_sizes(deallocation: &OperationRef) -> Result<[usize; 3], LoweringError> {
    let text = deallocation.attribute("operandSegmentSizes").map(|sizes| sizes.to_string()).unwrap_or_default();
    let sizes: Vec<usize> = text
        .trim_start_matches("array<i32:")
        .trim_end_matches('>')
        .split(',')
        .filter_map(|size| size.trim().parse().ok())
        .collect();
    sizes
        .try_into()
        .map_err(|_| LoweringError::Build(format!("unexpected `bufferization.dealloc` operand segments `{text}`")))
}

#[cfg(test)]
mod tests {
    use crate::lowering::{bufferize, create_context, parse_module, rewrite::operations_named};

    /// `function` of `source` after bufferization: its lines that call a function, copy or free
    /// a buffer, and the loops, branches and returns around them, in order (the rest is the
    /// deallocation's bookkeeping).
    fn calls_and_frees(source: &str, function: &str) -> String {
        let context = create_context();
        let mut module = parse_module(&context, source).unwrap();
        bufferize(&context, &mut module).unwrap();
        let definition = operations_named(&module.as_operation(), &["func.func"])
            .into_iter()
            .find(|f| crate::lowering::rewrite::symbol_name(f).as_deref() == Some(function))
            .unwrap();
        definition
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|line| {
                ["call @", "memref.dealloc", "memref.copy", "scf.", "return", "}"]
                    .iter()
                    .any(|shown| line.contains(shown))
            })
            .map(|line| line.split(" : ").next().unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    const RUNTIME: &str = "func.func private @mrc_step(tensor<?xf32> {bufferization.access = \"read\"}) -> tensor<?xf32>
  func.func private @mrc_pair(tensor<?xf32> {bufferization.access = \"read\"}, tensor<?xf32> {bufferization.access = \"read\"}) -> tensor<?xf32>";

    /// A chain of runtime calls: each result is freed as soon as the next call has read it, not
    /// when the function returns.
    #[test]
    fn a_runtime_result_is_freed_after_its_last_reader() {
        let source = format!(
            "module {{
  {RUNTIME}
  func.func @chain(%x: tensor<?xf32>) -> tensor<?xf32> {{
    %a = call @mrc_step(%x) : (tensor<?xf32>) -> tensor<?xf32>
    %b = call @mrc_step(%a) : (tensor<?xf32>) -> tensor<?xf32>
    %c = call @mrc_step(%b) : (tensor<?xf32>) -> tensor<?xf32>
    %d = call @mrc_step(%a) : (tensor<?xf32>) -> tensor<?xf32>
    %e = call @mrc_pair(%c, %d) : (tensor<?xf32>, tensor<?xf32>) -> tensor<?xf32>
    return %e : tensor<?xf32>
  }}
}}"
        );
        insta::assert_snapshot!(calls_and_frees(&source, "chain"));
    }

    /// A function that returns one buffer twice returns results that alias each other: neither
    /// is freed early, though each one's own uses end before the other's.
    #[test]
    fn results_of_a_call_that_alias_each_other_are_not_freed_early() {
        let source = format!(
            "module {{
  {RUNTIME}
  func.func private @twice(%x: tensor<?xf32>) -> (tensor<?xf32>, tensor<?xf32>) {{
    %a = call @mrc_step(%x) : (tensor<?xf32>) -> tensor<?xf32>
    return %a, %a : tensor<?xf32>, tensor<?xf32>
  }}
  func.func @caller(%x: tensor<?xf32>) -> tensor<?xf32> {{
    %p:2 = call @twice(%x) : (tensor<?xf32>) -> (tensor<?xf32>, tensor<?xf32>)
    %b = call @mrc_step(%p#0) : (tensor<?xf32>) -> tensor<?xf32>
    %c = call @mrc_step(%b) : (tensor<?xf32>) -> tensor<?xf32>
    %d = call @mrc_pair(%c, %p#1) : (tensor<?xf32>, tensor<?xf32>) -> tensor<?xf32>
    return %d : tensor<?xf32>
  }}
}}"
        );
        insta::assert_snapshot!(calls_and_frees(&source, "caller"));
    }

    /// A buffer that a loop carries, or that the function returns a view of, is left to MLIR's
    /// deallocation at the end of the block; one that a loop only reads is freed after the loop.
    #[test]
    fn a_buffer_that_escapes_is_not_freed_early() {
        let source = format!(
            "module {{
  {RUNTIME}
  func.func @escapes(%x: tensor<?xf32>, %n: index) -> (tensor<?xf32>, tensor<?xf32>) {{
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %read = call @mrc_step(%x) : (tensor<?xf32>) -> tensor<?xf32>
    %carried = call @mrc_step(%x) : (tensor<?xf32>) -> tensor<?xf32>
    %looped = scf.for %i = %c0 to %n step %c1 iter_args(%t = %carried) -> (tensor<?xf32>) {{
      %step = func.call @mrc_step(%t) : (tensor<?xf32>) -> tensor<?xf32>
      %sum = func.call @mrc_pair(%step, %read) : (tensor<?xf32>, tensor<?xf32>) -> tensor<?xf32>
      scf.yield %sum : tensor<?xf32>
    }}
    %viewed = call @mrc_step(%looped) : (tensor<?xf32>) -> tensor<?xf32>
    %view = tensor.extract_slice %viewed[0] [%n] [1] : tensor<?xf32> to tensor<?xf32>
    %last = call @mrc_step(%x) : (tensor<?xf32>) -> tensor<?xf32>
    return %view, %last : tensor<?xf32>, tensor<?xf32>
  }}
}}"
        );
        insta::assert_snapshot!(calls_and_frees(&source, "escapes"));
    }
}
