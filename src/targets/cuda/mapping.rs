//! How loop nests map to threads. `gpu-map-parallel-loops` maps a parallel loop's first
//! dimension to `x`, its second to `y`, its third to `z` (and the rest to loops inside each
//! thread), and `scf-parallel-loop-tiling` tiles the first dimensions. Neighbouring threads of a
//! warp differ in `x`, and a tensor's neighbouring elements in its last index: so that a warp's
//! loads and stores are coalesced, [`innermost_first`] reverses the dimensions of every
//! outermost parallel loop before tiling and mapping.

use melior::{
    ir::{
        block::BlockLike,
        operation::{OperationBuilder, OperationLike},
        Attribute, Identifier, Location, Module, Region, RegionLike, Type, Value,
    },
    Context,
};

use crate::lowering::rewrite::{erase, operation_name, operations_named, replace_all_uses, take_body};
use crate::lowering::LoweringError;

/// Reverses the dimensions of every `scf.parallel` not nested in another (the loop nests that
/// become kernels): the last becomes the first, which the mapping gives to `x`.
pub fn innermost_first(context: &Context, module: &Module) -> Result<(), LoweringError> {
    let location = Location::unknown(context);
    let index = Type::index(context);
    for parallel in operations_named(&module.as_operation(), &["scf.parallel"]) {
        let nested = std::iter::successors(parallel.parent_operation(), |op| op.parent_operation())
            .any(|ancestor| operation_name(&ancestor) == "scf.parallel");
        let body = parallel.region(0)?.first_block().ok_or_else(|| LoweringError::Build("scf.parallel without a body".into()))?;
        let rank = body.argument_count();
        if nested || rank < 2 || parallel.result_count() > 0 {
            continue;
        }
        // Operands: lower bounds, upper bounds, steps, each `rank` long (no reductions here).
        let operands: Vec<Value> = parallel.operands().collect();
        let reversed: Vec<Value> = operands.chunks(rank).flat_map(|group| group.iter().rev().copied()).collect();
        let segments = Attribute::parse(context, &format!("array<i32: {rank}, {rank}, {rank}, 0>"))
            .ok_or_else(|| LoweringError::Build("invalid operand segments".into()))?;
        let mut builder = OperationBuilder::new("scf.parallel", location)
            .add_operands(&reversed)
            .add_attributes(&[(Identifier::new(context, "operandSegmentSizes"), segments)]);
        for (name, attribute) in parallel.attributes() {
            let name = name.as_string_ref().as_str().unwrap_or_default().to_owned();
            if name != "operandSegmentSizes" {
                builder = builder.add_attributes(&[(Identifier::new(context, &name), attribute)]);
            }
        }
        let reordered = builder.add_regions([Region::new()]).build()?;
        take_body(reordered.region(0)?, parallel.region(0)?);
        let block = reordered.region(0)?.first_block().expect("the body was moved");
        // New dimension i is old dimension rank - 1 - i: appended arguments in the new order
        // take over the old ones' uses, which then go.
        for _ in 0..rank {
            block.add_argument(index, location);
        }
        for old in 0..rank {
            replace_all_uses(block.argument(old)?.into(), block.argument(rank + (rank - 1 - old))?.into());
        }
        for _ in 0..rank {
            // SAFETY: the argument has no uses left, and no handle to it is kept.
            unsafe { block.erase_argument(0) };
        }
        let parent = parallel.block().expect("a loop is in a block");
        parent.insert_operation_before(parallel, reordered);
        erase(parallel);
    }
    Ok(())
}
