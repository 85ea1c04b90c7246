//! Calls from generated code into the runtime (`mrc_runtime::abi`): microkernels and the
//! detection built-ins, each named by its typed definition
//! ([`mrc_runtime::abi::functions::RuntimeFunction`]), which the call is checked against. A
//! runtime function is declared in the module the first time it is called (`func.func private @mrc_<name>` with `llvm.emit_c_interface`, every argument
//! `bufferization.access = "read"` so that bufferization passes buffers without copies), with
//! fully dynamic tensor types, so that call sites with different static shapes share one
//! declaration; values are `tensor.cast` to and from those types.

use melior::{
    dialect::func,
    ir::{
        attribute::{FlatSymbolRefAttribute, StringAttribute, TypeAttribute},
        r#type::{FunctionType, IntegerType, RankedTensorType},
        Attribute, Identifier, Module, Region, ShapedTypeLike, Type, Value, ValueLike,
    },
};
use mrc_runtime::abi::functions::{Arg, RuntimeFunction};

use super::{builder::{Emitter, DYNAMIC}, error::LoweringError};

impl<'c, 'b> Emitter<'c, 'b> {
    /// `tensor.cast` of `tensor` to `ty`.
    pub fn cast(&self, tensor: Value<'c, 'b>, ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        if tensor.r#type() == ty {
            return Ok(tensor);
        }
        self.append(self.builder("tensor.cast").add_operands(&[tensor]).add_results(&[ty]).build()?)
    }

    /// The type of `tensor` with every dimension dynamic.
    fn dynamic_type(&self, tensor: Value<'c, '_>) -> Result<Type<'c>, LoweringError> {
        let rank = self.static_dims(tensor)?.len();
        Ok(self.ranked_tensor(&vec![None; rank], self.element_of(tensor)?))
    }

    /// Calls the runtime function `function` on `arguments`; its results have `results`' element
    /// types and ranks, and are cast to those types. The arguments and results must be of the
    /// kinds the function's definition lists.
    pub fn call_runtime(&self, function: RuntimeFunction, arguments: &[Value<'c, 'b>], results: &[Type<'c>]) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let symbol = function.symbol();
        let argument_types: Vec<Type> = arguments.iter().map(|a| a.r#type()).collect();
        let mismatch = |what: &str| LoweringError::Build(format!("`{symbol}` called with {what} of the wrong kinds: {argument_types:?} -> {results:?}"));
        if !self.kinds_match(&function.arguments(), &argument_types)? {
            return Err(mismatch("arguments"));
        }
        if !self.kinds_match(function.results(), results)? {
            return Err(mismatch("results"));
        }
        let mut dynamic_arguments = vec![];
        for &argument in arguments {
            dynamic_arguments.push(self.cast(argument, self.dynamic_type(argument)?)?);
        }
        let argument_types: Vec<Type> = dynamic_arguments.iter().map(|a| a.r#type()).collect();
        let mut result_types = vec![];
        for &ty in results {
            // A count is returned by value; tensors with every dimension dynamic.
            match RankedTensorType::try_from(ty) {
                Ok(tensor) => result_types.push(self.ranked_tensor(&vec![None; tensor.rank()], tensor.element())),
                Err(_) => result_types.push(ty),
            }
        }
        let function_type = FunctionType::new(self.context, &argument_types, &result_types).into();
        let declared = *self.runtime.borrow_mut().entry(symbol.to_owned()).or_insert(function_type);
        if declared != function_type {
            return Err(LoweringError::Build(format!("`{symbol}` called as {function_type} and as {declared}")));
        }
        let call = func::call(self.context, FlatSymbolRefAttribute::new(self.context, symbol), &dynamic_arguments, &result_types, self.location);
        let values = self.append_results(call)?;
        values.into_iter().zip(results).map(|(value, &ty)| self.cast(value, ty)).collect()
    }

    /// Whether tensors of `types` are of the kinds `kinds`, one each.
    fn kinds_match(&self, kinds: &[Arg], types: &[Type<'c>]) -> Result<bool, LoweringError> {
        if kinds.len() != types.len() {
            return Ok(false);
        }
        for (&kind, &ty) in kinds.iter().zip(types) {
            if kind == Arg::Count {
                if ty != Type::from(IntegerType::new(self.context, 64)) {
                    return Ok(false);
                }
                continue;
            }
            let Ok(tensor) = RankedTensorType::try_from(ty) else { return Ok(false) };
            let (element, rank) = match kind {
                Arg::F32(rank) => (self.f32_type(), rank),
                Arg::I64(rank) => (IntegerType::new(self.context, 64).into(), rank),
                Arg::U8(rank) => (IntegerType::new(self.context, 8).into(), rank),
                Arg::Params => (Type::float64(self.context), 1),
                Arg::Count => unreachable!("a count is checked above"),
            };
            if tensor.element() != element || tensor.rank() != rank {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A constant `tensor<?xf64>` of `words` (a built-in's parameters).
    pub fn f64_words(&self, words: &[f64]) -> Result<Value<'c, 'b>, LoweringError> {
        let f64_type = Type::float64(self.context);
        let ty = self.ranked_tensor(&[Some(words.len() as i64)], f64_type);
        let elements: Vec<String> = words.iter().map(|w| format!("{w:.17e}")).collect();
        let text = format!("dense<[{}]> : {ty}", elements.join(", "));
        let text = if words.is_empty() { format!("dense<> : {ty}") } else { text };
        let value_attribute = Attribute::parse(self.context, &text).ok_or_else(|| LoweringError::Build(format!("invalid attribute `{text}`")))?;
        let constant = self.append(
            self.builder("arith.constant").add_attributes(&[(Identifier::new(self.context, "value"), value_attribute)]).add_results(&[ty]).build()?,
        )?;
        self.cast(constant, self.ranked_tensor(&[None], f64_type))
    }

    /// `tensor<K x i64>` of `sizes`.
    pub fn index_tensor(&self, sizes: &[super::Size<'c, 'b>]) -> Result<Value<'c, 'b>, LoweringError> {
        let i64_type = melior::ir::r#type::IntegerType::new(self.context, 64).into();
        let mut elements = vec![];
        for &size in sizes {
            let size = self.size_value(size)?;
            elements.push(self.append(self.builder("arith.index_cast").add_operands(&[size]).add_results(&[i64_type]).build()?)?);
        }
        let ty = self.ranked_tensor(&[Some(sizes.len() as i64)], i64_type);
        self.append(self.builder("tensor.from_elements").add_operands(&elements).add_results(&[ty]).build()?)
    }

    /// `tensor<L x axes.len() x i64>`: for each tensor, its sizes along `axes`.
    pub fn sizes_table(&self, tensors: &[Value<'c, '_>], axes: &[usize]) -> Result<Value<'c, 'b>, LoweringError> {
        let i64_type = melior::ir::r#type::IntegerType::new(self.context, 64).into();
        let mut elements = vec![];
        for &tensor in tensors {
            for &axis in axes {
                let size = self.size(tensor, axis)?;
                let size = self.size_value(size)?;
                elements.push(self.append(self.builder("arith.index_cast").add_operands(&[size]).add_results(&[i64_type]).build()?)?);
            }
        }
        let ty = self.ranked_tensor(&[Some(tensors.len() as i64), Some(axes.len() as i64)], i64_type);
        self.append(self.builder("tensor.from_elements").add_operands(&elements).add_results(&[ty]).build()?)
    }

    /// A list of f32 tensors of one rank as the runtime takes it: their elements concatenated
    /// (`tensor<?xf32>`) and their shapes (`tensor<L x rank x i64>`).
    pub fn pack(&self, tensors: &[Value<'c, 'b>]) -> Result<(Value<'c, 'b>, Value<'c, 'b>), LoweringError> {
        let axes: Vec<usize> = (0..self.static_dims(tensors[0])?.len()).collect();
        let shapes = self.sizes_table(tensors, &axes)?;
        Ok((self.concat_flat(tensors)?, shapes))
    }

    /// The inverse of [`Emitter::concat_flat`]: `flat` (`tensor<?xf32>`, as a runtime function
    /// returns a packed list) cut into tensors of the shapes and types of `likes`, in order.
    pub fn unpack(&self, flat: Value<'c, 'b>, likes: &[Value<'c, 'b>]) -> Result<Vec<Value<'c, 'b>>, LoweringError> {
        let mut offset = self.constant_index(0)?;
        let mut tensors = vec![];
        for &like in likes {
            let sizes = self.sizes(like)?;
            let mut count = self.constant_index(1)?;
            for &size in &sizes {
                count = self.binary("arith.muli", count, self.size_value(size)?)?;
            }
            let slice_type = self.ranked_tensor(&[None], self.f32_type());
            let slice = self.append(
                self.builder("tensor.extract_slice")
                    .add_operands(&[flat, offset, count])
                    .add_attributes(&[
                        self.named("static_offsets", &format!("array<i64: {}>", DYNAMIC))?,
                        self.named("static_sizes", &format!("array<i64: {}>", DYNAMIC))?,
                        self.named("static_strides", "array<i64: 1>")?,
                        self.named("operandSegmentSizes", "array<i32: 1, 1, 1, 0>")?,
                    ])
                    .add_results(&[slice_type])
                    .build()?,
            )?;
            tensors.push(self.reshape(slice, &sizes, like.r#type())?);
            offset = self.binary("arith.addi", offset, count)?;
        }
        Ok(tensors)
    }

    /// `tensor.reshape` of `tensor` to `sizes`, as `ty`.
    pub fn reshape(&self, tensor: Value<'c, 'b>, sizes: &[super::Size<'c, 'b>], ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        let shape = self.index_tensor(sizes)?;
        self.append(self.builder("tensor.reshape").add_operands(&[tensor, shape]).add_results(&[ty]).build()?)
    }

    /// The elements of f32 `tensors` of one rank, concatenated (`tensor<?xf32>`).
    pub fn concat_flat(&self, tensors: &[Value<'c, 'b>]) -> Result<Value<'c, 'b>, LoweringError> {
        let axes: Vec<usize> = (0..self.static_dims(tensors[0])?.len()).collect();
        let flat_type = self.ranked_tensor(&[None], self.f32_type());
        let mut flats = vec![];
        for &tensor in tensors {
            let flat = self.collapse_shape(tensor, &[&axes])?;
            flats.push(self.cast(flat, flat_type)?);
        }
        if flats.len() == 1 {
            return Ok(flats[0]);
        }
        self.append(
            self.builder("tensor.concat")
                .add_operands(&flats)
                .add_attributes(&[self.named("dim", "0 : i64")?])
                .add_results(&[flat_type])
                .build()?,
        )
    }

    /// The runtime functions called so far and their types.
    pub(super) fn runtime_declarations(&self) -> Vec<(String, Type<'c>)> {
        self.runtime.borrow().iter().map(|(name, ty)| (name.clone(), *ty)).collect()
    }
}

/// Appends to `module` a private declaration of each runtime function in `declarations`.
pub(super) fn declare_runtime_functions<'c>(
    context: &'c melior::Context,
    module: &Module<'c>,
    declarations: &[(String, Type<'c>)],
) -> Result<(), LoweringError> {
    use melior::ir::BlockLike;
    for (name, ty) in declarations {
        let function = FunctionType::try_from(*ty)?;
        let read_only = vec!["{bufferization.access = \"read\"}"; function.input_count()];
        let argument_attributes = format!("[{}]", read_only.join(", "));
        let parse = |text: &str| Attribute::parse(context, text).ok_or_else(|| LoweringError::Build(format!("invalid attribute `{text}`")));
        module.body().append_operation(func::func(
            context,
            StringAttribute::new(context, name),
            TypeAttribute::new(*ty),
            Region::new(),
            &[
                (Identifier::new(context, "sym_visibility"), StringAttribute::new(context, "private").into()),
                (Identifier::new(context, "llvm.emit_c_interface"), Attribute::unit(context)),
                (Identifier::new(context, "arg_attrs"), parse(&argument_attributes)?),
            ],
            melior::ir::Location::unknown(context),
        ));
    }
    Ok(())
}
