//! Weight transforms: tensors derived from the model's state once, when a program loads its
//! weights (embedded or `--weights`), never per image. The compiler's passes put them in the
//! graph (a frozen batch norm folded into the convolution before it); the program computes
//! them in [`crate::abi::forward::Forward::new`] and passes them to the forward function in
//! place of what they derive from. One definition serves both sides: the compiler writes a
//! [`WeightTransform`] into the program's interface, the runtime applies it.

/// How a derived tensor is computed from its sources (state tensors, in the order each variant
/// lists).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum WeightTransform {
    /// A convolution's weight `[O, ...]` times the per-channel scale of the batch norm after
    /// it, `bn.weight / sqrt(bn.running_var + eps)`. Sources: the weight, `bn.weight`,
    /// `bn.running_var`.
    FoldBatchNormWeight { eps: f64 },
    /// The bias `[O]` that makes the scaled convolution equal to the batch norm of the original:
    /// `bn.bias + (bias - bn.running_mean) · scale`. Sources: the convolution's bias if
    /// `conv_bias`, then `bn.weight`, `bn.bias`, `bn.running_mean`, `bn.running_var`.
    FoldBatchNormBias { eps: f64, conv_bias: bool },
    /// A transposed convolution's weight `[C, O / groups, kh, kw]` as the kernel of the
    /// equivalent direct convolution, `[O, C / groups, kh, kw]`: flipped spatially, channel axes
    /// swapped within each group. Source: the weight.
    FlipTransposedKernel { groups: usize },
    /// A transposed convolution's weight `[C, O, kh, kw]` as the matrix of its taps,
    /// `[O·kh·kw, C]` (kernel = stride: a matrix product and a pixel shuffle). Source: the weight.
    TransposedKernelTaps,
    /// A convolution's weight `[O, ...]` (the result of `of` on the sources, or the one source
    /// itself) packed for the GEMM: the column-major matrix `[K, O]`, K the product of the other
    /// axes, which the `gemm` crate's kernels read in place instead of packing it on every call.
    GemmColumns { of: Option<Box<WeightTransform>> },
    /// A 3×3 convolution's weight `[O, C, 3, 3]` (the result of `of`, or the one source)
    /// transformed for Winograd's F(4×4, 3×3): `[36, C, O]`
    /// (`crate::abi::winograd::transform_filters`).
    WinogradFilters { of: Option<Box<WeightTransform>> },
}

/// A source tensor: row-major f32 elements and shape.
pub type Source<'a> = (&'a [f32], &'a [usize]);

impl WeightTransform {
    /// Computes the derived tensor, or says why the sources do not fit.
    pub fn apply(&self, sources: &[Source]) -> Result<(Vec<f32>, Vec<usize>), String> {
        match *self {
            WeightTransform::FoldBatchNormWeight { eps } => {
                let [(weight, shape), gamma, var] = sources else { return Err(arity(3, sources)) };
                let scale = bn_scale(gamma.0, var.0, eps)?;
                let channels = shape.first().copied().unwrap_or(0);
                if channels != scale.len() || weight.len() % channels.max(1) != 0 {
                    return Err(format!("a weight of shape {shape:?} for {} batch-norm channels", scale.len()));
                }
                let per_channel = weight.len() / channels.max(1);
                let folded = weight
                    .chunks(per_channel.max(1))
                    .zip(&scale)
                    .flat_map(|(row, &s)| row.iter().map(move |&w| w * s))
                    .collect();
                Ok((folded, shape.to_vec()))
            }
            WeightTransform::FoldBatchNormBias { eps, conv_bias } => {
                let (bias, rest) = if conv_bias {
                    let Some(((bias, _), rest)) = sources.split_first() else { return Err(arity(5, sources)) };
                    (Some(*bias), rest)
                } else {
                    (None, sources)
                };
                let [gamma, beta, mean, var] = rest else { return Err(arity(4 + conv_bias as usize, sources)) };
                let scale = bn_scale(gamma.0, var.0, eps)?;
                let n = scale.len();
                if beta.0.len() != n || mean.0.len() != n || bias.is_some_and(|b| b.len() != n) {
                    return Err(format!("batch-norm tensors of different lengths for {n} channels"));
                }
                // torchvision's FrozenBatchNorm2d adds `bias - mean · scale` after the scaling.
                let folded =
                    (0..n).map(|c| beta.0[c] - mean.0[c] * scale[c] + bias.map_or(0.0, |b| b[c] * scale[c])).collect();
                Ok((folded, vec![n]))
            }
            WeightTransform::FlipTransposedKernel { groups } => {
                let [(weight, &[c, f, kh, kw])] = sources else { return Err(kernel_of(sources)) };
                if groups == 0 || c % groups != 0 {
                    return Err(format!("{c} channels in {groups} groups"));
                }
                let per_group = c / groups;
                let mut flipped = vec![0.0; weight.len()];
                for (index, value) in flipped.iter_mut().enumerate() {
                    let [o, ci, i, j] = unravel(index, [groups * f, per_group, kh, kw]);
                    let (group, fi) = (o / f, o % f);
                    *value = weight[ravel([group * per_group + ci, fi, kh - 1 - i, kw - 1 - j], [c, f, kh, kw])];
                }
                Ok((flipped, vec![groups * f, per_group, kh, kw]))
            }
            WeightTransform::GemmColumns { ref of } => {
                let (weight, shape) = of_or_source(of, sources)?;
                let rows = shape.first().copied().unwrap_or(0);
                let k = shape[1..].iter().product::<usize>();
                let columns = (0..rows * k).map(|index| weight[(index % rows) * k + index / rows]).collect();
                Ok((columns, vec![k, rows]))
            }
            WeightTransform::WinogradFilters { ref of } => {
                let (weight, shape) = of_or_source(of, sources)?;
                let &[o, c, 3, 3] = shape.as_slice() else { return Err(format!("takes a 3×3 kernel, found {shape:?}")) };
                Ok((crate::abi::winograd::transform_filters(&weight, o, c), vec![36, c, o]))
            }
            WeightTransform::TransposedKernelTaps => {
                let [(weight, &[c, o, kh, kw])] = sources else { return Err(kernel_of(sources)) };
                let taps = o * kh * kw;
                let matrix = (0..taps * c).map(|index| weight[(index % c) * taps + index / c]).collect();
                Ok((matrix, vec![taps, c]))
            }
        }
    }
}

/// The result of `of` on the sources, or the one source itself.
fn of_or_source(of: &Option<Box<WeightTransform>>, sources: &[Source]) -> Result<(Vec<f32>, Vec<usize>), String> {
    match (of, sources) {
        (Some(inner), _) => inner.apply(sources),
        (None, [(weight, shape)]) => Ok((weight.to_vec(), shape.to_vec())),
        (None, _) => Err(arity(1, sources)),
    }
}

/// Row-major position of `index` in `dims`.
fn ravel(index: [usize; 4], dims: [usize; 4]) -> usize {
    index.iter().zip(dims).fold(0, |flat, (&i, d)| flat * d + i)
}

/// The index of row-major position `flat` in `dims`.
fn unravel(mut flat: usize, dims: [usize; 4]) -> [usize; 4] {
    let mut index = [0; 4];
    for axis in (0..4).rev() {
        index[axis] = flat % dims[axis];
        flat /= dims[axis];
    }
    index
}

fn kernel_of(sources: &[Source]) -> String {
    let shapes: Vec<&[usize]> = sources.iter().map(|s| s.1).collect();
    format!("takes one 4-d kernel, found {shapes:?}")
}

/// `gamma / sqrt(var + eps)` per channel, in f32 as torchvision's `FrozenBatchNorm2d`
/// computes it (`weight * (running_var + eps).rsqrt()`).
fn bn_scale(gamma: &[f32], var: &[f32], eps: f64) -> Result<Vec<f32>, String> {
    if gamma.len() != var.len() {
        return Err(format!("batch-norm weight of {} and running_var of {} channels", gamma.len(), var.len()));
    }
    Ok(gamma.iter().zip(var).map(|(&g, &v)| g * (1.0 / (v + eps as f32).sqrt())).collect())
}

fn arity(expected: usize, sources: &[Source]) -> String {
    format!("takes {expected} source tensors, found {}", sources.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch norm of `x` as torchvision's FrozenBatchNorm2d computes it, per channel `c`.
    fn frozen_bn(x: f32, c: usize, [gamma, beta, mean, var]: [&[f32]; 4], eps: f32) -> f32 {
        let scale = gamma[c] * (1.0 / (var[c] + eps).sqrt());
        x * scale + (beta[c] - mean[c] * scale)
    }

    #[test]
    fn folding_commutes_with_a_dot_product() {
        // Two output channels, three weights each; `x` is one input patch.
        let weight = [0.5_f32, -1.0, 2.0, 1.5, 0.25, -0.75];
        let bias = [0.1_f32, -0.2];
        let (gamma, beta, mean, var) = ([1.2_f32, 0.8], [0.3_f32, -0.1], [0.05_f32, 0.4], [0.9_f32, 1.7]);
        let bn = [&gamma[..], &beta, &mean, &var];
        let x = [1.0_f32, 2.0, -0.5];
        let eps = 1e-5;
        let (w, shape) = WeightTransform::FoldBatchNormWeight { eps }
            .apply(&[(&weight, &[2, 3]), (&gamma, &[2]), (&var, &[2])])
            .unwrap();
        assert_eq!(shape, [2, 3]);
        let sources = [(&bias[..], &[2][..]), (&gamma, &[2]), (&beta, &[2]), (&mean, &[2]), (&var, &[2])];
        let (b, _) = WeightTransform::FoldBatchNormBias { eps, conv_bias: true }.apply(&sources).unwrap();
        for c in 0..2 {
            let conv: f32 = (0..3).map(|k| weight[c * 3 + k] * x[k]).sum::<f32>() + bias[c];
            let folded: f32 = (0..3).map(|k| w[c * 3 + k] * x[k]).sum::<f32>() + b[c];
            let expected = frozen_bn(conv, c, bn, eps as f32);
            assert!((folded - expected).abs() < 1e-5, "channel {c}: {folded} vs {expected}");
        }
        let (unbiased, _) = WeightTransform::FoldBatchNormBias { eps, conv_bias: false }.apply(&sources[1..]).unwrap();
        assert!((unbiased[1] - frozen_bn(0.0, 1, bn, eps as f32)).abs() < 1e-6);
    }

    #[test]
    fn transposed_kernels_are_laid_out_for_a_direct_convolution() {
        // [C = 4, O/g = 3, 2, 2] in 2 groups: each value its own index, so positions show.
        let weight: Vec<f32> = (0..48).map(|v| v as f32).collect();
        let (flipped, dims) = WeightTransform::FlipTransposedKernel { groups: 2 }.apply(&[(&weight, &[4, 3, 2, 2])]).unwrap();
        assert_eq!(dims, [6, 2, 2, 2]);
        // Output channel 4 is group 1's second filter; its input channel 1 is channel 3 overall,
        // tap (0, 1) is tap (1, 0) of the original: weight[3, 1, 1, 0] = 3·12 + 1·4 + 2 = 42.
        assert_eq!(flipped[ravel([4, 1, 0, 1], [6, 2, 2, 2])], 42.0);
        let (taps, dims) = WeightTransform::TransposedKernelTaps.apply(&[(&weight[..24], &[2, 3, 2, 2])]).unwrap();
        assert_eq!(dims, [12, 2]);
        // Row (o = 2, tap (1, 0)) = 2·4 + 2 = 10, column c = 1: weight[1, 2, 1, 0] = 12 + 10.
        assert_eq!(taps[10 * 2 + 1], 22.0);
        assert!(WeightTransform::TransposedKernelTaps.apply(&[(&weight, &[48])]).is_err());
        assert!(WeightTransform::FlipTransposedKernel { groups: 3 }.apply(&[(&weight, &[4, 3, 2, 2])]).is_err());
    }

    #[test]
    fn gemm_columns_transpose_the_weight_or_what_another_transform_derives() {
        let weight: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let (columns, dims) = WeightTransform::GemmColumns { of: None }.apply(&[(&weight, &[2, 3, 2])]).unwrap();
        assert_eq!(dims, [6, 2]);
        // Column o of the [K, O] matrix is row o of the weight: element (k = 4, o = 1) is 6 + 4.
        assert_eq!(columns[4 * 2 + 1], 10.0);
        let fold = WeightTransform::FoldBatchNormWeight { eps: 0.0 };
        let (gamma, var) = ([2.0_f32, 3.0], [1.0_f32, 1.0]);
        let sources = [(&weight[..], &[2_usize, 6][..]), (&gamma, &[2]), (&var, &[2])];
        let (packed, _) = WeightTransform::GemmColumns { of: Some(Box::new(fold)) }.apply(&sources).unwrap();
        assert_eq!(packed[4 * 2 + 1], 3.0 * 10.0);
    }

    #[test]
    fn sources_that_do_not_fit_are_errors() {
        let eps = 0.0;
        let fold = WeightTransform::FoldBatchNormWeight { eps };
        assert!(fold.apply(&[(&[1.0; 6], &[3, 2]), (&[1.0; 2], &[2]), (&[1.0; 2], &[2])]).is_err());
        assert!(fold.apply(&[(&[1.0; 6], &[2, 3])]).is_err());
        let bias = WeightTransform::FoldBatchNormBias { eps, conv_bias: false };
        assert!(bias.apply(&[(&[1.0; 2], &[2]), (&[1.0; 3], &[3]), (&[1.0; 2], &[2]), (&[1.0; 2], &[2])]).is_err());
    }
}
