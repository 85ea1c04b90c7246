//! [`Emitter`]: the MLIR vocabulary that operator lowerings speak, one builder function per
//! operation family (`tensor` shapes, `linalg` structured ops, scalar `arith`/`math` inside their
//! bodies). Lowerings never build operations by name themselves.
//!
//! Sizes are [`Size`]s: a size known when the model is compiled stays a number (and shows as
//! such in tensor types), a symbolic one is an `index` value computed at run time, so that
//! `tensor<1x64x?x?xf32>` carries exactly the dimensions the graph could not fix.

use melior::{
    ir::{
        attribute::{FloatAttribute, IntegerAttribute},
        block::BlockLike,
        operation::{OperationBuilder, OperationLike},
        r#type::{IntegerType, RankedTensorType},
        Attribute, Block, Identifier, Location, Operation, Region, RegionLike, ShapedTypeLike, Type, Value,
        ValueLike,
    },
    dialect::arith::{CmpfPredicate, CmpiPredicate},
    Context,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::error::LoweringError;
use super::builtins::BuiltIns;
use super::products::Products;
use crate::graph::types::{DType, TensorType};

/// MLIR's marker for a dynamic size in static shape lists (`ShapedType::kDynamic`).
pub(super) const DYNAMIC: i64 = i64::MIN;

/// One dimension of a tensor being built: known at compile time, or an `index` value.
#[derive(Clone, Copy, Debug)]
pub enum Size<'c, 'b> {
    Static(i64),
    Dynamic(Value<'c, 'b>),
}

impl Size<'_, '_> {
    pub fn static_value(&self) -> Option<i64> {
        match self {
            Size::Static(n) => Some(*n),
            Size::Dynamic(_) => None,
        }
    }
}

/// `parallel` or `reduction`, for `linalg.generic`'s loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iterator {
    Parallel,
    Reduction,
}

/// The scalar body of a named structured op (MLIR's generic form carries it explicitly).
#[derive(Clone, Copy, Debug)]
pub enum Combiner {
    /// `out + in0 * in1`: grouped convolutions.
    MulAdd,
    /// `max(out, in0)`: max pooling (NaN-propagating, like torch).
    Max,
    /// `out + in0`: sum pooling.
    Add,
}

/// Appends operations at the end of one block, all at one location.
pub struct Emitter<'c, 'b> {
    pub context: &'c Context,
    block: &'b Block<'c>,
    pub location: Location<'c>,
    /// The runtime functions called so far, declared on use (see `runtime_calls.rs`).
    pub(super) runtime: Rc<RefCell<BTreeMap<String, Type<'c>>>>,
    /// How dense products are computed: the target's choice.
    pub(super) products: Products,
    /// How built-in detection operators are computed: the target's choice.
    pub(super) builtins: BuiltIns,
}

impl<'c, 'b> Emitter<'c, 'b> {
    /// An emitter whose products are target-neutral `linalg` and whose built-ins are runtime
    /// calls (see [`Emitter::with_products`], [`Emitter::with_builtins`]).
    pub fn new(context: &'c Context, block: &'b Block<'c>, location: Location<'c>) -> Self {
        Emitter { context, block, location, runtime: Rc::default(), products: Products::Linalg, builtins: BuiltIns::Runtime }
    }

    /// The same emitter computing dense products as `products` says.
    pub fn with_products(self, products: Products) -> Self {
        Emitter { products, ..self }
    }

    /// The same emitter computing built-ins as `builtins` says.
    pub fn with_builtins(self, builtins: BuiltIns) -> Self {
        Emitter { builtins, ..self }
    }

    /// The same block at another location (each graph node gets its own).
    pub fn at(&self, location: Location<'c>) -> Emitter<'c, 'b> {
        Emitter { block: self.block, location, runtime: self.runtime.clone(), ..*self }
    }

    /// An emitter appending to `block`, which will become the body of a region op built by
    /// this emitter (see [`Emitter::execute_region`]).
    pub fn nested<'n>(&self, block: &'n Block<'c>) -> Emitter<'c, 'n> {
        Emitter { block, runtime: self.runtime.clone(), ..*self }
    }

    /// `scf.yield`: the terminator of a block built through [`Emitter::nested`].
    pub fn yield_region(&self, values: &[Value<'c, '_>]) -> Result<(), LoweringError> {
        self.append_terminator(self.builder("scf.yield").add_operands(values).build()?);
        Ok(())
    }

    /// `scf.execute_region` of `body` (ending in [`Emitter::yield_region`]) with `results`,
    /// marked `no_inline` so that it stays a region: the ownership-based deallocation frees a
    /// buffer at the end of the block that allocates it, so a temporary allocated in here (an
    /// im2col matrix) is freed as the region ends instead of when the whole network returns.
    pub fn execute_region(&self, body: Block<'c>, results: &[Type<'c>]) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let region = Region::new();
        region.append_block(body);
        self.append_results(
            self.builder("scf.execute_region")
                .add_attributes(&[self.named("no_inline", "unit")?])
                .add_regions([region])
                .add_results(results)
                .build()?,
        )
    }

    pub fn arg(&self, index: usize) -> Result<Value<'c, 'b>, LoweringError> {
        Ok(BlockLike::<'c, 'b>::argument(self.block, index)?.into())
    }

    pub(super) fn append(&self, operation: Operation<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        Ok(BlockLike::<'c, 'b>::append_operation(self.block, operation).result(0)?.into())
    }

    pub(super) fn append_results(&self, operation: Operation<'c>) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let operation = BlockLike::<'c, 'b>::append_operation(self.block, operation);
        (0..operation.result_count()).map(|i| Ok(operation.result(i)?.into())).collect()
    }

    pub fn append_terminator(&self, operation: Operation<'c>) {
        BlockLike::<'c, 'b>::append_operation(self.block, operation);
    }

    pub(super) fn builder(&self, name: &str) -> OperationBuilder<'c> {
        OperationBuilder::new(name, self.location)
    }

    fn attribute(&self, text: &str) -> Result<Attribute<'c>, LoweringError> {
        Attribute::parse(self.context, text).ok_or_else(|| LoweringError::Build(format!("invalid attribute `{text}`")))
    }

    pub(super) fn named(&self, name: &str, text: &str) -> Result<(Identifier<'c>, Attribute<'c>), LoweringError> {
        Ok((Identifier::new(self.context, name), self.attribute(text)?))
    }

    // ---- types -------------------------------------------------------------------------------

    pub fn f32_type(&self) -> Type<'c> {
        Type::float32(self.context)
    }

    pub fn index_type(&self) -> Type<'c> {
        Type::index(self.context)
    }

    /// The MLIR element type of a graph dtype.
    pub fn element_type(&self, dtype: DType) -> Type<'c> {
        match dtype {
            DType::F32 => Type::float32(self.context),
            DType::F64 => Type::float64(self.context),
            DType::I64 => IntegerType::new(self.context, 64).into(),
            DType::I32 => IntegerType::new(self.context, 32).into(),
            DType::U8 => IntegerType::new(self.context, 8).into(),
            DType::Bool => IntegerType::new(self.context, 1).into(),
        }
    }

    /// `tensor<d0 x d1 x … x element>`, `?` where a dimension is `None`.
    pub fn ranked_tensor(&self, dims: &[Option<i64>], element: Type<'c>) -> Type<'c> {
        let dims: Vec<u64> = dims.iter().map(|d| d.unwrap_or(DYNAMIC) as u64).collect();
        RankedTensorType::new(&dims, element, None).into()
    }

    /// The MLIR type of a graph tensor: symbolic dimensions become `?`.
    pub fn tensor_type(&self, ty: &TensorType) -> Type<'c> {
        let dims: Vec<Option<i64>> = ty.dims.iter().map(|d| d.value()).collect();
        self.ranked_tensor(&dims, self.element_type(ty.dtype))
    }

    /// The static dimensions of a ranked tensor value, `None` where dynamic.
    pub fn static_dims(&self, tensor: Value<'c, '_>) -> Result<Vec<Option<i64>>, LoweringError> {
        let ty = RankedTensorType::try_from(tensor.r#type())?;
        (0..ty.rank())
            .map(|axis| {
                Ok(match ty.dim_size(axis)? {
                    melior::ir::r#type::DimSize::Static(n) => Some(n as i64),
                    melior::ir::r#type::DimSize::Dynamic => None,
                })
            })
            .collect()
    }

    pub fn element_of(&self, tensor: Value<'c, '_>) -> Result<Type<'c>, LoweringError> {
        Ok(RankedTensorType::try_from(tensor.r#type())?.element())
    }

    // ---- sizes -------------------------------------------------------------------------------

    pub fn constant_index(&self, value: i64) -> Result<Value<'c, 'b>, LoweringError> {
        self.constant_integer(value, self.index_type())
    }

    /// An `arith.constant` of an integer or `index` type.
    pub fn constant_integer(&self, value: i64, ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        let attribute = IntegerAttribute::new(ty, value).into();
        self.append(self.builder("arith.constant").add_attributes(&[(Identifier::new(self.context, "value"), attribute)]).add_results(&[ty]).build()?)
    }

    /// Size `axis` of `tensor`: its static size, else `tensor.dim`.
    pub fn size(&self, tensor: Value<'c, '_>, axis: usize) -> Result<Size<'c, 'b>, LoweringError> {
        match self.static_dims(tensor)?[axis] {
            Some(n) => Ok(Size::Static(n)),
            None => {
                let axis = self.constant_index(axis as i64)?;
                let dim = self.builder("tensor.dim").add_operands(&[tensor, axis]).add_results(&[self.index_type()]).build()?;
                Ok(Size::Dynamic(self.append(dim)?))
            }
        }
    }

    pub fn sizes(&self, tensor: Value<'c, '_>) -> Result<Vec<Size<'c, 'b>>, LoweringError> {
        (0..self.static_dims(tensor)?.len()).map(|axis| self.size(tensor, axis)).collect()
    }

    /// A size as an `index` value.
    pub fn size_value(&self, size: Size<'c, 'b>) -> Result<Value<'c, 'b>, LoweringError> {
        match size {
            Size::Static(n) => self.constant_index(n),
            Size::Dynamic(value) => Ok(value),
        }
    }

    /// `size + k`.
    pub fn size_add(&self, size: Size<'c, 'b>, k: i64) -> Result<Size<'c, 'b>, LoweringError> {
        self.size_arith(size, k, k == 0, "arith.addi", |n| n + k)
    }

    /// `size * k`.
    pub fn size_mul(&self, size: Size<'c, 'b>, k: i64) -> Result<Size<'c, 'b>, LoweringError> {
        self.size_arith(size, k, k == 1, "arith.muli", |n| n * k)
    }

    /// `⌊size / k⌋` for a non-negative size and k > 0.
    pub fn size_div(&self, size: Size<'c, 'b>, k: i64) -> Result<Size<'c, 'b>, LoweringError> {
        self.size_arith(size, k, k == 1, "arith.divui", |n| n.div_euclid(k))
    }

    /// The number of windows, `⌊(size + offset) / stride⌋ + 1`, of a sliding window (`offset` is
    /// the padding minus the window's extent).
    pub fn size_windows(&self, size: Size<'c, 'b>, offset: i64, stride: i64) -> Result<Size<'c, 'b>, LoweringError> {
        if stride == 1 {
            return self.size_add(size, offset + 1);
        }
        self.size_add(self.size_div(self.size_add(size, offset)?, stride)?, 1)
    }

    fn size_arith(
        &self,
        size: Size<'c, 'b>,
        k: i64,
        identity: bool,
        operation: &str,
        fold: impl Fn(i64) -> i64,
    ) -> Result<Size<'c, 'b>, LoweringError> {
        match size {
            Size::Static(n) => Ok(Size::Static(fold(n))),
            Size::Dynamic(_) if identity => Ok(size),
            Size::Dynamic(value) => {
                let k = self.constant_index(k)?;
                Ok(Size::Dynamic(self.binary(operation, value, k)?))
            }
        }
    }

    // ---- tensor ------------------------------------------------------------------------------

    /// `tensor.empty` of the given sizes.
    pub fn empty(&self, sizes: &[Size<'c, 'b>], element: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        let dims: Vec<Option<i64>> = sizes.iter().map(Size::static_value).collect();
        let dynamic: Vec<Value> = sizes.iter().filter_map(|s| if let Size::Dynamic(v) = s { Some(*v) } else { None }).collect();
        self.append(self.builder("tensor.empty").add_operands(&dynamic).add_results(&[self.ranked_tensor(&dims, element)]).build()?)
    }

    /// `tensor.pad` with a constant `value`, `low[axis]` before and `high[axis]` after.
    pub fn pad(&self, tensor: Value<'c, '_>, low: &[i64], high: &[i64], value: f64) -> Result<Value<'c, 'b>, LoweringError> {
        let dims: Vec<Option<i64>> =
            self.static_dims(tensor)?.iter().zip(low.iter().zip(high)).map(|(d, (l, h))| d.map(|d| d + l + h)).collect();
        let element = self.element_of(tensor)?;
        let body = Block::new(&vec![(self.index_type(), self.location); dims.len()]);
        let inner = Emitter::new(self.context, &body, self.location);
        let constant = inner.constant_float(value, element)?;
        inner.append_terminator(inner.builder("tensor.yield").add_operands(&[constant]).build()?);
        let region = Region::new();
        region.append_block(body);
        self.append(
            self.builder("tensor.pad")
                .add_operands(&[tensor])
                .add_attributes(&[
                    self.named("static_low", &i64_array(low))?,
                    self.named("static_high", &i64_array(high))?,
                    self.named("operandSegmentSizes", "array<i32: 1, 0, 0>")?,
                ])
                .add_regions([region])
                .add_results(&[self.ranked_tensor(&dims, element)])
                .build()?,
        )
    }

    /// `tensor.expand_shape` into `sizes`; `groups[i]` lists the result axes of source axis i.
    pub fn expand_shape(
        &self,
        tensor: Value<'c, '_>,
        groups: &[&[usize]],
        sizes: &[Size<'c, 'b>],
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let dims: Vec<Option<i64>> = sizes.iter().map(Size::static_value).collect();
        let mut operands = vec![tensor];
        operands.extend(sizes.iter().filter_map(|s| if let Size::Dynamic(v) = s { Some(*v) } else { None }));
        let static_shape: Vec<i64> = dims.iter().map(|d| d.unwrap_or(DYNAMIC)).collect();
        self.append(
            self.builder("tensor.expand_shape")
                .add_operands(&operands)
                .add_attributes(&[
                    self.named("reassociation", &reassociation(groups))?,
                    self.named("static_output_shape", &i64_array(&static_shape))?,
                ])
                .add_results(&[self.ranked_tensor(&dims, self.element_of(tensor)?)])
                .build()?,
        )
    }

    /// `tensor.collapse_shape`; `groups[i]` lists the source axes merged into result axis i.
    pub fn collapse_shape(&self, tensor: Value<'c, '_>, groups: &[&[usize]]) -> Result<Value<'c, 'b>, LoweringError> {
        let source = self.static_dims(tensor)?;
        let dims: Vec<Option<i64>> =
            groups.iter().map(|group| group.iter().map(|&axis| source[axis]).product::<Option<i64>>()).collect();
        self.append(
            self.builder("tensor.collapse_shape")
                .add_operands(&[tensor])
                .add_attributes(&[self.named("reassociation", &reassociation(groups))?])
                .add_results(&[self.ranked_tensor(&dims, self.element_of(tensor)?)])
                .build()?,
        )
    }

    /// `tensor.insert_slice` of all of `source` into `dest` at `offsets`, every `strides` apart.
    pub fn insert_slice(
        &self,
        source: Value<'c, '_>,
        dest: Value<'c, '_>,
        offsets: &[i64],
        strides: &[i64],
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let sizes = self.sizes(source)?;
        let (static_sizes, dynamic_sizes) = split_sizes(&sizes);
        let mut operands = vec![source, dest];
        operands.extend(&dynamic_sizes);
        self.append(
            self.builder("tensor.insert_slice")
                .add_operands(&operands)
                .add_attributes(&[
                    self.named("static_offsets", &i64_array(offsets))?,
                    self.named("static_sizes", &i64_array(&static_sizes))?,
                    self.named("static_strides", &i64_array(strides))?,
                    self.named("operandSegmentSizes", &format!("array<i32: 1, 1, 0, {}, 0>", dynamic_sizes.len()))?,
                ])
                .add_results(&[dest.r#type()])
                .build()?,
        )
    }

    /// `tensor.extract_slice` of `sizes` at `offsets`, unit strides.
    pub fn extract_slice(&self, tensor: Value<'c, '_>, offsets: &[i64], sizes: &[Size<'c, 'b>]) -> Result<Value<'c, 'b>, LoweringError> {
        let (static_sizes, dynamic_sizes) = split_sizes(sizes);
        let dims: Vec<Option<i64>> = sizes.iter().map(Size::static_value).collect();
        let mut operands = vec![tensor];
        operands.extend(&dynamic_sizes);
        self.append(
            self.builder("tensor.extract_slice")
                .add_operands(&operands)
                .add_attributes(&[
                    self.named("static_offsets", &i64_array(offsets))?,
                    self.named("static_sizes", &i64_array(&static_sizes))?,
                    self.named("static_strides", &i64_array(&vec![1; sizes.len()]))?,
                    self.named("operandSegmentSizes", &format!("array<i32: 1, 0, {}, 0>", dynamic_sizes.len()))?,
                ])
                .add_results(&[self.ranked_tensor(&dims, self.element_of(tensor)?)])
                .build()?,
        )
    }

    /// `tensor.extract`: one element.
    /// `tensor.from_elements`: a tensor of type `ty` holding `values` in row-major order.
    pub fn from_elements(&self, values: &[Value<'c, '_>], ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        self.append(self.builder("tensor.from_elements").add_operands(values).add_results(&[ty]).build()?)
    }

    pub fn extract(&self, tensor: Value<'c, '_>, indices: &[Value<'c, '_>]) -> Result<Value<'c, 'b>, LoweringError> {
        let mut operands = vec![tensor];
        operands.extend(indices);
        self.append(self.builder("tensor.extract").add_operands(&operands).add_results(&[self.element_of(tensor)?]).build()?)
    }

    // ---- linalg ------------------------------------------------------------------------------

    /// `linalg.fill` of `init` with the scalar `value`.
    pub fn fill(&self, value: Value<'c, '_>, init: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        let element = self.element_of(init)?;
        let body = Block::new(&[(element, self.location), (element, self.location)]);
        let inner = Emitter::new(self.context, &body, self.location);
        inner.yield_values(&[inner.arg(0)?])?;
        self.structured_with_body("linalg.fill", &[value], init, &[], body)
    }

    /// A new tensor of `sizes` filled with zeros of `element`.
    pub fn zeros(&self, sizes: &[Size<'c, 'b>], element: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        let empty = self.empty(sizes, element)?;
        let zero = self.constant_float(0.0, element)?;
        self.fill(zero, empty)
    }

    /// `linalg.broadcast` of `tensor` into `init`, adding the axes `dimensions` of `init`.
    pub fn broadcast(&self, tensor: Value<'c, '_>, init: Value<'c, '_>, dimensions: &[i64]) -> Result<Value<'c, 'b>, LoweringError> {
        let element = self.element_of(init)?;
        let body = Block::new(&[(element, self.location), (element, self.location)]);
        let inner = Emitter::new(self.context, &body, self.location);
        inner.yield_values(&[inner.arg(0)?])?;
        let region = Region::new();
        region.append_block(body);
        self.append(
            self.builder("linalg.broadcast")
                .add_operands(&[tensor, init])
                .add_attributes(&[self.named("dimensions", &i64_array(dimensions))?])
                .add_regions([region])
                .add_results(&[init.r#type()])
                .build()?,
        )
    }

    /// A named structured op (`linalg.conv_2d_ngchw_gfchw`, `linalg.pooling_nchw_max`, …)
    /// accumulating into `init`, with extra attributes as MLIR text.
    pub fn structured(
        &self,
        name: &str,
        inputs: &[Value<'c, '_>],
        init: Value<'c, '_>,
        attributes: &[(&str, String)],
        combiner: Combiner,
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let mut arguments: Vec<(Type, Location)> =
            inputs.iter().map(|&v| Ok((self.element_of(v)?, self.location))).collect::<Result<_, LoweringError>>()?;
        arguments.push((self.element_of(init)?, self.location));
        let body = Block::new(&arguments);
        let inner = Emitter::new(self.context, &body, self.location);
        let (input, out) = (inner.arg(0)?, inner.arg(inputs.len())?);
        let result = match combiner {
            Combiner::MulAdd => inner.addf(out, inner.mulf(input, inner.arg(1)?)?)?,
            Combiner::Max => inner.maximumf(out, input)?,
            Combiner::Add => inner.addf(out, input)?,
        };
        inner.yield_values(&[result])?;
        self.structured_with_body(name, inputs, init, attributes, body)
    }

    fn structured_with_body(
        &self,
        name: &str,
        inputs: &[Value<'c, '_>],
        init: Value<'c, '_>,
        attributes: &[(&str, String)],
        body: Block<'c>,
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let mut named = vec![self.named("operandSegmentSizes", &format!("array<i32: {}, 1>", inputs.len()))?];
        for (key, value) in attributes {
            named.push(self.named(key, value)?);
        }
        let mut operands = inputs.to_vec();
        operands.push(init);
        let region = Region::new();
        region.append_block(body);
        self.append(
            self.builder(name)
                .add_operands(&operands)
                .add_attributes(&named)
                .add_regions([region])
                .add_results(&[init.r#type()])
                .build()?,
        )
    }

    /// `linalg.generic` over `inputs` into `outputs`, with indexing maps written as MLIR affine
    /// maps (`"(d0, d1) -> (d1)"`). `body` receives an emitter for the scalar block, whose
    /// arguments are the input elements then the output elements, and must yield.
    pub fn generic(
        &self,
        inputs: &[Value<'c, '_>],
        outputs: &[Value<'c, '_>],
        maps: &[&str],
        iterators: &[Iterator],
        body: impl FnOnce(&Emitter<'c, '_>) -> Result<(), LoweringError>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let arguments: Vec<(Type, Location)> = inputs
            .iter()
            .chain(outputs)
            .map(|&v| Ok((self.element_of(v)?, self.location)))
            .collect::<Result<_, LoweringError>>()?;
        let block = Block::new(&arguments);
        body(&Emitter::new(self.context, &block, self.location))?;
        let region = Region::new();
        region.append_block(block);

        let maps: Vec<String> = maps.iter().map(|m| format!("affine_map<{m}>")).collect();
        let iterators: Vec<&str> = iterators
            .iter()
            .map(|i| match i {
                Iterator::Parallel => "#linalg.iterator_type<parallel>",
                Iterator::Reduction => "#linalg.iterator_type<reduction>",
            })
            .collect();
        let mut operands = inputs.to_vec();
        operands.extend(outputs);
        let result_types: Vec<Type> = outputs.iter().map(|v| v.r#type()).collect();
        self.append_results(
            self.builder("linalg.generic")
                .add_operands(&operands)
                .add_attributes(&[
                    self.named("indexing_maps", &format!("[{}]", maps.join(", ")))?,
                    self.named("iterator_types", &format!("[{}]", iterators.join(", ")))?,
                    self.named("operandSegmentSizes", &format!("array<i32: {}, {}>", inputs.len(), outputs.len()))?,
                ])
                .add_regions([region])
                .add_results(&result_types)
                .build()?,
        )
    }

    /// An elementwise `linalg.generic` over same-shaped `operands`, into a new tensor of their
    /// shape; `body` as for [`Emitter::generic`].
    pub fn elementwise(
        &self,
        operands: &[Value<'c, '_>],
        body: impl FnOnce(&Emitter<'c, '_>) -> Result<(), LoweringError>,
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let sizes = self.sizes(operands[0])?;
        let init = self.empty(&sizes, self.element_of(operands[0])?)?;
        let identity = identity_map(sizes.len());
        let maps = vec![identity.as_str(); operands.len() + 1];
        Ok(self.generic(operands, &[init], &maps, &vec![Iterator::Parallel; sizes.len()], body)?[0])
    }

    /// Sums over every axis but `axis` of the same-shaped `tensors`, `count` of them in one
    /// pass, each a 1-D tensor along `axis` of `accumulator`s. For each index along `axis` (the
    /// parallel loop), `scf.for` loops over the other axes, the innermost contiguous, carry the
    /// sums as values, which LLVM keeps in registers and vectorizes (`fastmath<reassoc>`); a
    /// `linalg` reduction would load and store its sum at every element. `terms` gets the
    /// elements of `tensors` at a position, then those of `along` (1-D tensors indexed by
    /// `axis`), and returns one term per sum.
    pub fn sums_to_axis(
        &self,
        tensors: &[Value<'c, 'b>],
        along: &[Value<'c, 'b>],
        axis: usize,
        accumulator: Type<'c>,
        count: usize,
        terms: impl for<'n> Fn(&Emitter<'c, 'n>, &[Value<'c, 'n>]) -> Result<Vec<Value<'c, 'n>>, LoweringError>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let views = tensors.iter().map(|&t| self.around_axis(t, axis)).collect::<Result<Vec<_>, _>>()?;
        let [outer, inner] = [0, 2].map(|a| self.size(views[0], a).and_then(|s| self.size_value(s)));
        let (outer, inner) = (outer?, inner?);
        let extent = self.size(tensors[0], axis)?;
        let inits = (0..count).map(|_| self.empty(&[extent], accumulator)).collect::<Result<Vec<_>, _>>()?;
        let identity = identity_map(1);
        self.generic(&[], &inits, &vec![identity.as_str(); count], &[Iterator::Parallel], |body| {
            let index = body.loop_index(0)?;
            let zeros = vec![body.constant_float(0.0, accumulator)?; count];
            let sums = body.for_loop(body.constant_index(0)?, outer, &zeros, |b, args| {
                let o = args[0];
                b.for_loop(b.constant_index(0)?, inner, &args[1..], |b, args| {
                    let mut elements = views.iter().map(|&v| b.extract(v, &[o, index, args[0]])).collect::<Result<Vec<_>, _>>()?;
                    for &a in along {
                        elements.push(b.extract(a, &[index])?);
                    }
                    let terms = terms(b, &elements)?;
                    args[1..].iter().zip(terms).map(|(&sum, term)| b.accumulate(sum, term)).collect()
                })
            })?;
            body.yield_values(&sums)
        })
    }

    /// `tensor` as three axes, [the axes before `axis`, `axis`, the axes after] (unit where
    /// none): views, with no copy.
    fn around_axis(&self, tensor: Value<'c, 'b>, axis: usize) -> Result<Value<'c, 'b>, LoweringError> {
        let rank = self.static_dims(tensor)?.len();
        let (before, after): (Vec<usize>, Vec<usize>) = ((0..axis).collect(), (axis + 1..rank).collect());
        let mut groups: Vec<&[usize]> = vec![];
        let axis_group = [axis];
        for group in [before.as_slice(), &axis_group, after.as_slice()] {
            if !group.is_empty() {
                groups.push(group);
            }
        }
        let collapsed = if rank == groups.len() { tensor } else { self.collapse_shape(tensor, &groups)? };
        if groups.len() == 3 {
            return Ok(collapsed);
        }
        // Unit axes where a side has none: [C] → [1, C, 1], [R, C] → [R, C, 1], [C, R] → [1, C, R].
        let sizes = self.sizes(collapsed)?;
        let one = Size::Static(1);
        let (expanded, groups): (Vec<Size>, Vec<&[usize]>) = match (before.is_empty(), after.is_empty()) {
            (true, true) => (vec![one, sizes[0], one], vec![&[0, 1, 2]]),
            (false, true) => (vec![sizes[0], sizes[1], one], vec![&[0], &[1, 2]]),
            (true, false) => (vec![one, sizes[0], sizes[1]], vec![&[0, 1], &[2]]),
            (false, false) => unreachable!("three groups returned above"),
        };
        self.expand_shape(collapsed, &groups, &expanded)
    }

    /// `value` as a float of type `ty`: itself, widened to f64 (`arith.extf`) or narrowed from
    /// it (`arith.truncf`).
    pub fn as_float<'v>(&self, value: Value<'c, 'v>, ty: Type<'c>) -> Result<Value<'c, 'v>, LoweringError>
    where
        'b: 'v,
    {
        if value.r#type() == ty {
            return Ok(value);
        }
        let widening = ty == Type::float64(self.context);
        self.convert(if widening { "arith.extf" } else { "arith.truncf" }, value, ty)
    }

    /// `linalg.index`: the current iteration of loop `dimension` inside a `linalg.generic`.
    pub fn loop_index(&self, dimension: i64) -> Result<Value<'c, 'b>, LoweringError> {
        self.append(
            self.builder("linalg.index")
                .add_attributes(&[(Identifier::new(self.context, "dim"), IntegerAttribute::new(IntegerType::new(self.context, 64).into(), dimension).into())])
                .add_results(&[self.index_type()])
                .build()?,
        )
    }

    pub fn yield_values(&self, values: &[Value<'c, '_>]) -> Result<(), LoweringError> {
        self.append_terminator(self.builder("linalg.yield").add_operands(values).build()?);
        Ok(())
    }

    // ---- scalars -----------------------------------------------------------------------------

    /// A float constant of the type of the scalar `like`.
    pub fn constant_like(&self, value: f64, like: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.constant_float(value, like.r#type())
    }

    pub fn constant_float(&self, value: f64, ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        let attribute = FloatAttribute::new(self.context, ty, value).into();
        self.append(self.builder("arith.constant").add_attributes(&[(Identifier::new(self.context, "value"), attribute)]).add_results(&[ty]).build()?)
    }

    /// A binary `arith` operation whose result has the type of its operands.
    pub fn binary(&self, name: &str, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.append(self.builder(name).add_operands(&[lhs, rhs]).add_results(&[lhs.r#type()]).build()?)
    }

    pub fn addf(&self, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.binary("arith.addf", lhs, rhs)
    }

    /// `sum + term` as one step of a sum whose terms may be added in any order
    /// (`fastmath<reassoc>`): LLVM then vectorizes the loop that accumulates it, where a strict
    /// left-to-right chain would cost one add's latency per element.
    pub fn accumulate(&self, sum: Value<'c, '_>, term: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        let reassociable = self.named("fastmath", "#arith.fastmath<reassoc>")?;
        self.append(self.builder("arith.addf").add_operands(&[sum, term]).add_results(&[sum.r#type()]).add_attributes(&[reassociable]).build()?)
    }

    pub fn subf(&self, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.binary("arith.subf", lhs, rhs)
    }

    pub fn mulf(&self, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.binary("arith.mulf", lhs, rhs)
    }

    pub fn divf(&self, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.binary("arith.divf", lhs, rhs)
    }

    /// The larger operand, NaN if either is NaN (torch's `max` and `relu`).
    pub fn maximumf(&self, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.binary("arith.maximumf", lhs, rhs)
    }

    /// A unary operation (`math.exp`, `math.sqrt`, `math.floor`, …) preserving the type.
    pub fn unary(&self, name: &str, operand: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.append(self.builder(name).add_operands(&[operand]).add_results(&[operand.r#type()]).build()?)
    }

    /// A conversion (`arith.index_cast`, `arith.sitofp`, `arith.fptosi`, …) to `ty`.
    pub fn convert(&self, name: &str, operand: Value<'c, '_>, ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        self.append(self.builder(name).add_operands(&[operand]).add_results(&[ty]).build()?)
    }

    /// An `index` as an `f32`, exactly for values below 2²⁴.
    pub fn index_to_f32(&self, index: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.index_to_float(index, self.f32_type())
    }

    /// An `index` as a float of type `ty`.
    pub fn index_to_float(&self, index: Value<'c, '_>, ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        let integer = self.convert("arith.index_cast", index, IntegerType::new(self.context, 64).into())?;
        self.convert("arith.sitofp", integer, ty)
    }

    /// `⌊value⌋` of a non-negative `f32`, as an `index`.
    pub fn floor_to_index(&self, value: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        let integer = self.convert("arith.fptosi", value, IntegerType::new(self.context, 64).into())?;
        self.convert("arith.index_cast", integer, self.index_type())
    }

    /// `arith.cmpf`: an `i1`.
    pub fn compare_floats(&self, predicate: CmpfPredicate, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.compare("arith.cmpf", predicate as i64, lhs, rhs)
    }

    /// `arith.cmpi` of integers or indices: an `i1`.
    pub fn compare_integers(&self, predicate: CmpiPredicate, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.compare("arith.cmpi", predicate as i64, lhs, rhs)
    }

    fn compare(&self, name: &str, predicate: i64, lhs: Value<'c, '_>, rhs: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        let i64_type = IntegerType::new(self.context, 64).into();
        let predicate = (Identifier::new(self.context, "predicate"), IntegerAttribute::new(i64_type, predicate).into());
        let i1_type = IntegerType::new(self.context, 1).into();
        self.append(self.builder(name).add_attributes(&[predicate]).add_operands(&[lhs, rhs]).add_results(&[i1_type]).build()?)
    }

    /// `arith.select`: `if_true` where `condition`, else `if_false`.
    pub fn select(&self, condition: Value<'c, '_>, if_true: Value<'c, '_>, if_false: Value<'c, '_>) -> Result<Value<'c, 'b>, LoweringError> {
        self.append(self.builder("arith.select").add_operands(&[condition, if_true, if_false]).add_results(&[if_true.r#type()]).build()?)
    }

    /// `scf.for` from `lower` to `upper` by 1, carrying `initial`: `body` gets an emitter for
    /// the loop's block and its arguments (the induction variable, then the carried values),
    /// and returns the carried values for the next iteration. Returns the final ones.
    pub fn for_loop(
        &self,
        lower: Value<'c, '_>,
        upper: Value<'c, '_>,
        initial: &[Value<'c, '_>],
        body: impl for<'n> FnOnce(&Emitter<'c, 'n>, &[Value<'c, 'n>]) -> Result<Vec<Value<'c, 'n>>, LoweringError>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let types: Vec<Type<'c>> = initial.iter().map(|v| v.r#type()).collect();
        let mut arguments = vec![(self.index_type(), self.location)];
        arguments.extend(types.iter().map(|&t| (t, self.location)));
        let block = Block::new(&arguments);
        {
            let inner = self.nested(&block);
            let values = (0..arguments.len()).map(|i| inner.arg(i)).collect::<Result<Vec<_>, _>>()?;
            let next = body(&inner, &values)?;
            inner.yield_region(&next)?;
        }
        let region = Region::new();
        region.append_block(block);
        let step = self.constant_index(1)?;
        let mut operands = vec![lower, upper, step];
        operands.extend(initial);
        self.append_results(self.builder("scf.for").add_operands(&operands).add_regions([region]).add_results(&types).build()?)
    }

    /// `scf.if` whose results are `kept` where `condition` holds, else what `otherwise` returns
    /// (an emitter for its block given): a loop's carried values left as they are once done.
    pub fn unless(
        &self,
        condition: Value<'c, '_>,
        kept: &[Value<'c, '_>],
        otherwise: impl for<'n> FnOnce(&Emitter<'c, 'n>) -> Result<Vec<Value<'c, 'n>>, LoweringError>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let types: Vec<Type<'c>> = kept.iter().map(|v| v.r#type()).collect();
        let then_block = Block::new(&[]);
        self.nested(&then_block).yield_region(kept)?;
        self.scf_if(condition, &types, then_block, otherwise)
    }

    /// `scf.if` with results of `types`: `then` and `otherwise` each get an emitter for their
    /// block and return its results.
    pub fn if_else(
        &self,
        condition: Value<'c, '_>,
        types: &[Type<'c>],
        then: impl for<'n> FnOnce(&Emitter<'c, 'n>) -> Result<Vec<Value<'c, 'n>>, LoweringError>,
        otherwise: impl for<'n> FnOnce(&Emitter<'c, 'n>) -> Result<Vec<Value<'c, 'n>>, LoweringError>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let then_block = Block::new(&[]);
        {
            let inner = self.nested(&then_block);
            inner.yield_region(&then(&inner)?)?;
        }
        self.scf_if(condition, types, then_block, otherwise)
    }

    /// `scf.if` with results of `types`, its `then` block built, its `else` block what
    /// `otherwise` yields.
    fn scf_if(
        &self,
        condition: Value<'c, '_>,
        types: &[Type<'c>],
        then_block: Block<'c>,
        otherwise: impl for<'n> FnOnce(&Emitter<'c, 'n>) -> Result<Vec<Value<'c, 'n>>, LoweringError>,
    ) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let else_block = Block::new(&[]);
        {
            let inner = self.nested(&else_block);
            inner.yield_region(&otherwise(&inner)?)?;
        }
        let (then_region, else_region) = (Region::new(), Region::new());
        then_region.append_block(then_block);
        else_region.append_block(else_block);
        self.append_results(
            self.builder("scf.if").add_operands(&[condition]).add_regions([then_region, else_region]).add_results(types).build()?,
        )
    }
}

/// `(d0, …, dn) -> (d0, …, dn)`.
pub fn identity_map(rank: usize) -> String {
    let dims = loop_dims(rank);
    format!("({dims}) -> ({dims})")
}

/// `d0, d1, …` for `rank` loops, the domain of an affine map.
pub fn loop_dims(rank: usize) -> String {
    (0..rank).map(|d| format!("d{d}")).collect::<Vec<_>>().join(", ")
}

/// `array<i64: …>`.
fn i64_array(values: &[i64]) -> String {
    let values: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("array<i64: {}>", values.join(", "))
}

/// `[[0], [1, 2], …]`, the reassociation of `expand_shape`/`collapse_shape`.
fn reassociation(groups: &[&[usize]]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
    format!("[{}]", groups.join(", "))
}

/// Static sizes with MLIR's dynamic marker, and the dynamic ones as values.
fn split_sizes<'c, 'b>(sizes: &[Size<'c, 'b>]) -> (Vec<i64>, Vec<Value<'c, 'b>>) {
    let statics = sizes.iter().map(|s| s.static_value().unwrap_or(DYNAMIC)).collect();
    let dynamics = sizes.iter().filter_map(|s| if let Size::Dynamic(v) = s { Some(*v) } else { None }).collect();
    (statics, dynamics)
}
