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
    /// Calls into the runtime's GEMM entry points: register-blocked, threaded microkernels on
    /// the host, cuBLAS on a GPU (the CUDA target).
    RuntimeGemm,
    /// [`Products::RuntimeGemm`], and stride-1 convolutions with windows larger than 1×1 (and
    /// their weight gradients) as products over shifted views of the padded input, without an
    /// im2col matrix (`mrc_runtime::abi::window_products`), 3×3 ones by Winograd's F(4×4, 3×3)
    /// (`mrc_runtime::abi::winograd`); the host only: the CPU.
    HostGemm,
    /// `linalg.generic` contractions, left to the target's pass pipeline to tile and map (the
    /// form a GPU pipeline takes; on the CPU it is the slow reference).
    Linalg,
}

impl<'c, 'b> Emitter<'c, 'b> {
    /// `matrix` [M, K] (or, `packed` for the GEMM at load time, its column-major form [K, M])
    /// times each image's `columns` [N, K, H, W] (one column per pixel), as `ty` [N, M, H, W].
    pub fn conv_product(
        &self,
        matrix: Value<'c, 'b>,
        packed: bool,
        columns: Value<'c, 'b>,
        ty: Type<'c>,
    ) -> Result<Value<'c, 'b>, LoweringError> {
        match self.products {
            Products::RuntimeGemm | Products::HostGemm => {
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
            Products::RuntimeGemm | Products::HostGemm => {
                Ok(self.call_runtime(RuntimeFunction::Linear, &[x, weight], &[ty])?[0])
            }
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

    /// A stride-1 convolution of the padded `x` [N, C, Hp, Wp] with `matrix` (as for
    /// [`Emitter::conv_product`]) over windows of `kernel` with `dilation`, into `sizes`
    /// [N, M, Ho, Wo], without an im2col matrix; `None` where the target has no such product
    /// (then the caller gathers the columns for [`Emitter::conv_product`]).
    pub fn window_conv_product(
        &self,
        matrix: Value<'c, 'b>,
        packed: bool,
        x: Value<'c, 'b>,
        kernel: [i64; 2],
        dilation: [i64; 2],
        sizes: &[Size<'c, 'b>; 4],
    ) -> Result<Option<Value<'c, 'b>>, LoweringError> {
        if self.products != Products::HostGemm {
            return Ok(None);
        }
        let window = self.window_sizes(kernel, dilation)?;
        // The product lays the output on the input's width; its first Wo columns are the result.
        let [n, m, ho, _] = *sizes;
        let grid =
            self.ranked_tensor(&[n, m, ho, self.size(x, 3)?].map(|size| size.static_value()), self.element_of(x)?);
        let function = if packed { RuntimeFunction::ConvWindowsPacked } else { RuntimeFunction::ConvWindows };
        let grid = self.call_runtime(function, &[matrix, x, window], &[grid])?[0];
        Ok(Some(self.extract_slice(grid, &[0, 0, 0, 0], sizes)?))
    }

    /// Whether the target has Winograd's products ([`Emitter::winograd_conv_product`]): the
    /// host's, the CPU.
    pub fn has_winograd_products(&self) -> bool {
        self.products == Products::HostGemm
    }

    /// `x` [N, C, H, W] with `padding` [top, left, bottom, right] zeros around it, laid out
    /// channels-last as Winograd's products read it: [N, Hp, Wp, C]; only where
    /// [`Self::has_winograd_products`].
    pub fn channels_last(&self, x: Value<'c, 'b>, padding: [i64; 4]) -> Result<Value<'c, 'b>, LoweringError> {
        let [top, left, bottom, right] = padding;
        let dims = self.static_dims(x)?;
        let grown = |size: Option<i64>, by: i64| size.map(|size| size + by);
        let ty = self.ranked_tensor(
            &[dims[0], grown(dims[2], top + bottom), grown(dims[3], left + right), dims[1]],
            self.element_of(x)?,
        );
        let settings = self.index_tensor(&padding.map(Size::Static))?;
        Ok(self.call_runtime(RuntimeFunction::ChannelsLast, &[x, settings], &[ty])?[0])
    }

    /// A 3×3 stride-1 convolution by Winograd's F(4×4, 3×3) of `laid_out`, the input laid out
    /// channels-last with its zeros ([`Self::channels_last`]), into `ty` [N, M, Hp − 2, Wp − 2],
    /// with the filters transformed at load time ([36, C, M], `transformed`) or the kernel
    /// [M, C, 3, 3], plus `bias` [M] and `residual` (of `ty`'s shape), then a ReLU if `relu`;
    /// only where [`Self::has_winograd_products`]. The runtime writes the sums itself, so no
    /// pass over the output is generated.
    #[allow(clippy::too_many_arguments)]
    pub fn winograd_conv_product(
        &self,
        filters: Value<'c, 'b>,
        transformed: bool,
        laid_out: Value<'c, 'b>,
        bias: Option<Value<'c, 'b>>,
        residual: Option<Value<'c, 'b>>,
        relu: bool,
        ty: Type<'c>,
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let function = if transformed { RuntimeFunction::ConvWinograd } else { RuntimeFunction::ConvWinogradFilters };
        let settings = self.index_tensor(&[Size::Static(relu as i64)])?;
        let element = self.element_of(laid_out)?;
        let bias = match bias {
            Some(bias) => bias,
            None => self.empty(&[Size::Static(0)], element)?,
        };
        let residual = match residual {
            Some(residual) => residual,
            None => self.empty(&[Size::Static(0); 4], element)?,
        };
        Ok(self.call_runtime(function, &[filters, laid_out, settings, bias, residual], &[ty])?[0])
    }

    /// The weight gradient `ty` [M, C, 3, 3] of a 3×3 stride-1 convolution by Winograd's
    /// transforms, from its input laid out channels-last with its zeros and its output gradient
    /// laid out channels-last with `grad_padding` zeros around it (as the input gradient's
    /// convolution reads it); only where [`Self::has_winograd_products`].
    pub fn winograd_weight_gradient(
        &self,
        x: Value<'c, 'b>,
        grad: Value<'c, 'b>,
        grad_padding: [i64; 4],
        ty: Type<'c>,
    ) -> Result<Value<'c, 'b>, LoweringError> {
        let settings = self.index_tensor(&grad_padding.map(Size::Static))?;
        Ok(self.call_runtime(RuntimeFunction::ConvWinogradWeightGrad, &[x, grad, settings], &[ty])?[0])
    }

    /// The weight gradient `ty` [M, C, kh, kw] of a stride-1 convolution of `x` [N, C, H, W]
    /// with `padding` ([top, left, bottom, right]) zeros around it, over windows of `kernel`
    /// with `dilation`, from its output gradient `grad` [N, M, Ho, Wo], without an im2col
    /// matrix; `None` where the target has no such product. The runtime pads what it reads
    /// (Winograd's transforms lay the input out with its zeros, in one pass).
    pub fn window_weight_gradient(
        &self,
        x: Value<'c, 'b>,
        grad: Value<'c, 'b>,
        kernel: [i64; 2],
        dilation: [i64; 2],
        padding: [i64; 4],
        ty: Type<'c>,
    ) -> Result<Option<Value<'c, 'b>>, LoweringError> {
        if self.products != Products::HostGemm {
            return Ok(None);
        }
        let [top, left, bottom, right] = padding;
        let settings = self.index_tensor(
            &[kernel[0], kernel[1], dilation[0], dilation[1], top, left, bottom, right].map(Size::Static),
        )?;
        Ok(Some(self.call_runtime(RuntimeFunction::ConvWindowsWeightGrad, &[x, grad, settings], &[ty])?[0]))
    }

    /// The window products' `[kh, kw, dh, dw]`.
    fn window_sizes(&self, kernel: [i64; 2], dilation: [i64; 2]) -> Result<Value<'c, 'b>, LoweringError> {
        self.index_tensor(&[kernel[0], kernel[1], dilation[0], dilation[1]].map(Size::Static))
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
