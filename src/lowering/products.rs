//! Dense matrix products, the one place where operators' lowerings leave a choice to the
//! target: a convolution is an im2col matrix times the weights, a linear layer `x · Wᵀ`, and
//! [`Products`] says how those products are computed. Operators call [`Emitter::conv_product`]
//! and [`Emitter::linear_product`] and never name a library function.

use melior::ir::{Type, Value};

use super::{
    builder::{Emitter, Iterator, Size},
    error::LoweringError,
};
use mrc_runtime::abi::functions::RuntimeFunction;

/// How a target computes dense products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    /// Calls into the runtime's register-blocked, threaded GEMM microkernels (the CPU).
    RuntimeGemm,
    /// `linalg.generic` contractions, left to the target's pass pipeline to tile and map (the
    /// form a GPU pipeline takes; on the CPU it is the slow reference).
    Linalg,
}

impl<'c, 'b> Emitter<'c, 'b> {
    /// `matrix` [M, K] (or, `packed` for the GEMM at load time, its column-major form [K, M])
    /// times each image's `columns` [N, K, H, W] (one column per pixel), as `ty` [N, M, H, W].
    pub fn conv_product(&self, matrix: Value<'c, 'b>, packed: bool, columns: Value<'c, 'b>, ty: Type<'c>) -> Result<Value<'c, 'b>, LoweringError> {
        match self.products {
            Products::RuntimeGemm => {
                // Flattening the pixels is free; splitting them again after the product would
                // be an expand of one dynamic axis into two, which crashes MLIR 22's
                // `expand-strided-metadata`: the kernel takes [H, W] and writes [N, M, H, W].
                let size = self.index_tensor(&[self.size(columns, 2)?, self.size(columns, 3)?])?;
                let flat = self.collapse_shape(columns, &[&[0], &[1], &[2, 3]])?;
                let function = if packed { RuntimeFunction::ConvMatmulPacked } else { RuntimeFunction::ConvMatmul };
                Ok(self.call_runtime(function, &[matrix, flat, size], &[ty])?[0])
            }
            Products::Linalg => {
                let m = self.size(matrix, if packed { 1 } else { 0 })?;
                let sizes = [self.size(columns, 0)?, m, self.size(columns, 2)?, self.size(columns, 3)?];
                let weights = if packed { "(n, m, y, x, k) -> (k, m)" } else { "(n, m, y, x, k) -> (m, k)" };
                let maps = [weights, "(n, m, y, x, k) -> (n, k, y, x)", "(n, m, y, x, k) -> (n, m, y, x)"];
                self.contraction(matrix, columns, &sizes, maps)
            }
        }
    }

    /// `x` [N, F] times `weight` [O, F] transposed, as `ty` [N, O].
    pub fn linear_product(
        &self,
        x: Value<'c, 'b>,
        weight: Value<'c, 'b>,
        ty: Type<'c>,
    ) -> Result<Value<'c, 'b>, LoweringError> {
        match self.products {
            Products::RuntimeGemm => Ok(self.call_runtime(RuntimeFunction::Linear, &[x, weight], &[ty])?[0]),
            Products::Linalg => {
                let sizes = [self.size(x, 0)?, self.size(weight, 0)?];
                self.contraction(
                    x,
                    weight,
                    &sizes,
                    ["(n, o, k) -> (n, k)", "(n, o, k) -> (o, k)", "(n, o, k) -> (n, o)"],
                )
            }
        }
    }

    /// `out[...] = Σ_k a[...] · b[...]` into zeros of `sizes`, the last loop the reduction.
    fn contraction(
        &self,
        a: Value<'c, 'b>,
        b: Value<'c, 'b>,
        sizes: &[Size<'c, 'b>],
        maps: [&str; 3],
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let mut iterators = vec![Iterator::Parallel; sizes.len()];
        iterators.push(Iterator::Reduction);
        let zeros = self.zeros(sizes, self.element_of(a)?)?;
        Ok(self.generic(&[a, b], &[zeros], &maps, &iterators, |body| {
            body.yield_values(&[body.addf(body.arg(2)?, body.mulf(body.arg(0)?, body.arg(1)?)?)?])
        })?[0])
    }
}
