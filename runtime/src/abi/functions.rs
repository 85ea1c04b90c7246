//! Every runtime function that generated code may call, defined once: its symbol, the kinds of
//! its arguments and results (what the compiler must pass, checked when it emits the call), and
//! its address (what a JIT binds). The compiler names a function by its [`RuntimeFunction`]
//! variant, never by a string, and the runtime's symbol table is [`RuntimeFunction::ALL`].
//! Every tensor a function returns is a fresh buffer, never a view of an argument: generated
//! code frees it right after its last use (the compiler's `lowering::liveness`).

use super::{detection as d, kernels as k, training as t, window_products as w, winograd as wg};

/// A tensor crossing the C interface: its element type and rank, or a built-in's parameter
/// words (`f64[?]`, the layout of its [`super::detection::Params`] implementation); or, as a
/// result only, a count returned to the host (`i64`, not a tensor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    F32(usize),
    I64(usize),
    U8(usize),
    Params,
    Count,
}

use Arg::*;

/// A list of feature maps of one rank, packed: their elements concatenated (`f32[?]`) and
/// their shapes, one row each (`i64[L, rank]`).
const PACKED: [Arg; 2] = [F32(1), I64(2)];

macro_rules! runtime_functions {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $function:path, ($($argument:expr),*) -> ($($result:expr),*);)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum RuntimeFunction {
            $($(#[$doc])* $variant,)*
        }

        impl RuntimeFunction {
            pub const ALL: &'static [RuntimeFunction] = &[$(RuntimeFunction::$variant),*];

            /// The function's name in MLIR (`mrc_<op>`); the C symbol is `_mlir_ciface_` + it.
            pub fn symbol(self) -> &'static str {
                match self {
                    $(RuntimeFunction::$variant => concat!("mrc_", $name),)*
                }
            }

            /// The arguments, in order, a packed list counting as its two tensors.
            pub fn arguments(self) -> Vec<Arg> {
                match self {
                    $(RuntimeFunction::$variant => [$(&$argument as &[Arg]),*].concat(),)*
                }
            }

            pub fn results(self) -> &'static [Arg] {
                match self {
                    $(RuntimeFunction::$variant => &[$($result),*],)*
                }
            }

            /// The C interface's entry point.
            pub fn address(self) -> *mut () {
                match self {
                    $(RuntimeFunction::$variant => $function as *mut (),)*
                }
            }
        }
    };
}

runtime_functions! {
    /// The weights [M, K] times each image's im2col columns [N, K, H·W], given [H, W].
    ConvMatmul = "conv_matmul", k::_mlir_ciface_mrc_conv_matmul, ([F32(2)], [F32(3)], [I64(1)]) -> (F32(4));
    /// The weights packed at load time, column-major [K, M], times each image's columns.
    ConvMatmulPacked = "conv_matmul_packed", k::_mlir_ciface_mrc_conv_matmul_packed, ([F32(2)], [F32(3)], [I64(1)]) -> (F32(4));
    /// A stride-1 convolution of the padded input [N, C, Hp, Wp] with the weights [M, C·kh·kw],
    /// window [kh, kw, dh, dw], on the input's width: [N, M, Ho, Wp].
    ConvWindows = "conv_windows", w::_mlir_ciface_mrc_conv_windows, ([F32(2)], [F32(4)], [I64(1)]) -> (F32(4));
    /// The same with the weights packed at load time, column-major [C·kh·kw, M].
    ConvWindowsPacked = "conv_windows_packed", w::_mlir_ciface_mrc_conv_windows_packed, ([F32(2)], [F32(4)], [I64(1)]) -> (F32(4));
    /// The weight gradient [M, C, kh, kw] of a stride-1 convolution from the input [N, C, H, W]
    /// and the output gradient [N, M, Ho, Wo], settings [kh, kw, dh, dw, top, left, bottom,
    /// right] (the window, then the zeros around the input).
    ConvWindowsWeightGrad = "conv_windows_weight_grad", w::_mlir_ciface_mrc_conv_windows_weight_grad, ([F32(4)], [F32(4)], [I64(1)]) -> (F32(4));
    /// The input [N, C, H, W] laid out channels-last with zeros around it, settings [top, left,
    /// bottom, right]: [N, Hp, Wp, C], as Winograd's products read it.
    ChannelsLast = "channels_last", wg::_mlir_ciface_mrc_channels_last, ([F32(4)], [I64(1)]) -> (F32(4));
    /// A 3×3 stride-1 convolution by Winograd's F(4×4, 3×3) of the input laid out
    /// channels-last with its zeros [N, Hp, Wp, C], the filters transformed at load time
    /// [36, C, M], settings [relu] (1 for a ReLU), plus a bias [M] and a residual
    /// [N, M, Ho, Wo] (each empty for none): [N, M, Hp − 2, Wp − 2].
    ConvWinograd = "conv_winograd", wg::_mlir_ciface_mrc_conv_winograd, ([F32(3)], [F32(4)], [I64(1)], [F32(1)], [F32(4)]) -> (F32(4));
    /// The same with the filters as they are, [M, C, 3, 3], transformed on each call.
    ConvWinogradFilters = "conv_winograd_filters", wg::_mlir_ciface_mrc_conv_winograd_filters, ([F32(4)], [F32(4)], [I64(1)], [F32(1)], [F32(4)]) -> (F32(4));
    /// The weight gradient [M, C, 3, 3] of a 3×3 stride-1 convolution from its input laid out
    /// channels-last with its zeros [N, Ho + 2, Wo + 2, C] and its output gradient laid out
    /// channels-last [N, Hg, Wg, M] with settings [top, left, bottom, right] zeros around it.
    ConvWinogradWeightGrad = "conv_winograd_weight_grad", wg::_mlir_ciface_mrc_conv_winograd_weight_grad, ([F32(4)], [F32(4)], [I64(1)]) -> (F32(4));
    /// `x` [N, F] times the weight [O, F] transposed.
    Linear = "linear", k::_mlir_ciface_mrc_linear, ([F32(2)], [F32(2)]) -> (F32(2));
    /// The image u8 [H, W, 3] to the batch [1, 3, Hb, Wb] and the resized size i64[2].
    Preprocess = "preprocess", d::_mlir_ciface_mrc_preprocess, ([Params], [U8(3)]) -> (F32(4), I64(1));
    /// Anchors for the feature-map sizes [L, 2] on the batch.
    Anchors = "anchors", d::_mlir_ciface_mrc_anchors, ([Params], [I64(2)], [F32(4)]) -> (F32(2));
    /// Proposals from packed objectness and deltas, the anchors and the resized size.
    RpnProposals = "rpn_proposals", d::_mlir_ciface_mrc_rpn_proposals, ([Params], PACKED, PACKED, [F32(2)], [I64(1)]) -> (F32(2));
    /// RoIAlign of boxes [K, 4] from one feature map [1, C, H, W].
    RoiAlign = "roi_align", d::_mlir_ciface_mrc_roi_align, ([Params], [F32(4)], [F32(2)]) -> (F32(4));
    /// RoIPool of boxes [K, 4] from one feature map [1, C, H, W].
    RoiPool = "roi_pool", d::_mlir_ciface_mrc_roi_pool, ([Params], [F32(4)], [F32(2)]) -> (F32(4));
    /// RoIAlign over packed pyramid levels, for boxes on an image of the resized size.
    MultiscaleRoiAlign = "multiscale_roi_align", d::_mlir_ciface_mrc_multiscale_roi_align, ([Params], PACKED, [F32(2)], [I64(1)]) -> (F32(4));
    /// RoIPool over packed pyramid levels, for boxes on an image of the resized size.
    MultiscaleRoiPool = "multiscale_roi_pool", d::_mlir_ciface_mrc_multiscale_roi_pool, ([Params], PACKED, [F32(2)], [I64(1)]) -> (F32(4));
    /// Boxes, scores and labels from class logits, box regression and proposals.
    PostprocessDetections = "postprocess_detections", d::_mlir_ciface_mrc_postprocess_detections, ([Params], [F32(2)], [F32(2)], [F32(2)], [I64(1)]) -> (F32(2), F32(1), I64(1));
    /// Mask logits [D, K, M, M] to the probabilities [D, 1, M, M] of each detection's label.
    MaskProbs = "mask_probs", d::_mlir_ciface_mrc_mask_probs, ([Params], [F32(4)], [I64(1)]) -> (F32(4));
    /// Boxes from the resized size to the size of the image.
    RescaleBoxes = "rescale_boxes", d::_mlir_ciface_mrc_rescale_boxes, ([Params], [F32(2)], [I64(1)], [U8(3)]) -> (F32(2));
    /// Mask probabilities pasted into the image at the boxes.
    PasteMasks = "paste_masks", d::_mlir_ciface_mrc_paste_masks, ([Params], [F32(4)], [F32(2)], [U8(3)]) -> (F32(4));
    /// The count in an `i64[1]` (device memory on a device), read back to the host.
    Count = "count", d::_mlir_ciface_mrc_count, ([I64(1)]) -> (Count);
    /// Keypoints [D, K, 3] and their scores [D, K] from heatmaps [D, K, S, S] of the boxes.
    HeatmapsToKeypoints = "heatmaps_to_keypoints", d::_mlir_ciface_mrc_heatmaps_to_keypoints, ([Params], [F32(4)], [F32(2)]) -> (F32(3), F32(2));
    /// Labels [N, A] and regression targets [N, A, 4] of the anchors for the ground truth
    /// (boxes [G, 4], images [G]) of a batch of sizes [N, 2].
    MatchAnchors = "match_anchors", t::_mlir_ciface_mrc_match_anchors, ([Params], [F32(2)], [F32(2)], [I64(1)], [I64(2)]) -> (F32(2), F32(3));
    /// The sampler's masks (positive, sampled) [N, K] from labels and keys [N, K].
    BalancedSample = "balanced_sample", t::_mlir_ciface_mrc_balanced_sample, ([Params], [F32(2)], [F32(2)]) -> (F32(2), F32(2));
    /// `count` [1] uniform keys from `seed` [1].
    UniformKeys = "uniform_keys", t::_mlir_ciface_mrc_uniform_keys, ([Params], [I64(1)], [I64(1)]) -> (F32(1));
    /// RoIs, their images, labels, regression targets and matched ground truth from proposals
    /// [P, 4] of images [P], ground truth (boxes, labels, images), keys [P + G] and sizes [N, 2].
    SampleRois = "sample_rois", t::_mlir_ciface_mrc_sample_rois, ([Params], [F32(2)], [I64(1)], [F32(2)], [I64(1)], [I64(1)], [F32(1)], [I64(2)]) -> (F32(2), I64(1), I64(1), F32(2), I64(1));
    /// The RPN's two losses from packed objectness and deltas, labels, targets and masks.
    RpnLoss = "rpn_loss", t::_mlir_ciface_mrc_rpn_loss, ([Params], PACKED, PACKED, [F32(2)], [F32(3)], [F32(2)], [F32(2)]) -> (F32(0), F32(0));
    /// The gradients of the packed objectness and deltas from the RPN losses' gradients.
    RpnLossBackward = "rpn_loss_backward", t::_mlir_ciface_mrc_rpn_loss_backward, ([Params], PACKED, PACKED, [F32(2)], [F32(3)], [F32(2)], [F32(2)], [F32(0)], [F32(0)]) -> (F32(1), I64(2), F32(1), I64(2));
    /// The box head's two losses from class logits, box regression, labels and targets.
    FastrcnnLoss = "fastrcnn_loss", t::_mlir_ciface_mrc_fastrcnn_loss, ([Params], [F32(2)], [F32(2)], [I64(1)], [F32(2)]) -> (F32(0), F32(0));
    /// The gradients of the class logits and box regression from the box losses' gradients.
    FastrcnnLossBackward = "fastrcnn_loss_backward", t::_mlir_ciface_mrc_fastrcnn_loss_backward, ([Params], [F32(2)], [F32(2)], [I64(1)], [F32(2)], [F32(0)], [F32(0)]) -> (F32(2), F32(2));
    /// The positive RoIs, their images, labels and mask targets from the ground-truth masks,
    /// sizes [N, 2] and the sampled RoIs (boxes, images, labels, matched ground truth).
    MaskTargets = "mask_targets", t::_mlir_ciface_mrc_mask_targets, ([Params], [U8(3)], [I64(2)], [F32(2)], [I64(1)], [I64(1)], [I64(1)]) -> (F32(2), I64(1), I64(1), F32(3));
    /// The mask loss from mask logits [Q, C, M, M], labels [Q] and targets [Q, M, M].
    MaskrcnnLoss = "maskrcnn_loss", t::_mlir_ciface_mrc_maskrcnn_loss, ([Params], [F32(4)], [I64(1)], [F32(3)]) -> (F32(0));
    /// The gradient of the mask logits from the mask loss's gradient.
    MaskrcnnLossBackward = "maskrcnn_loss_backward", t::_mlir_ciface_mrc_maskrcnn_loss_backward, ([Params], [F32(4)], [I64(1)], [F32(3)], [F32(0)]) -> (F32(4));
    /// The gradient of a feature map [N, C, H, W] (shape [4]) from RoIAlign's output gradient and
    /// its RoIs [K, 5].
    RoiAlignBackward = "roi_align_backward", t::_mlir_ciface_mrc_roi_align_backward, ([Params], [F32(4)], [F32(2)], [I64(1)]) -> (F32(4));
    /// RoIAlign over packed [N, C, H, W] pyramid levels of boxes [R, 4] of images [R].
    MultiscaleRoiAlignBatched = "multiscale_roi_align_batched", t::_mlir_ciface_mrc_multiscale_roi_align_batched, ([Params], PACKED, [F32(2)], [I64(1)], [I64(2)]) -> (F32(4));
    /// The packed gradient of the pyramid levels (shapes [L, 4]) from the batched multi-scale
    /// RoIAlign's output gradient.
    MultiscaleRoiAlignBackward = "multiscale_roi_align_backward", t::_mlir_ciface_mrc_multiscale_roi_align_backward, ([Params], [F32(4)], [I64(2)], [F32(2)], [I64(1)], [I64(2)]) -> (F32(1), I64(2));
    /// Proposals [P, 4] and their images [P] for every image of a batch of sizes [N, 2].
    RpnProposalsBatched = "rpn_proposals_batched", t::_mlir_ciface_mrc_rpn_proposals_batched, ([Params], PACKED, PACKED, [F32(2)], [I64(2)]) -> (F32(2), I64(1));
}

impl RuntimeFunction {
    /// The C symbol a JIT resolves.
    pub fn c_symbol(self) -> String {
        format!("_mlir_ciface_{}", self.symbol())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_distinct_and_named_after_their_functions() {
        let mut symbols: Vec<&str> = RuntimeFunction::ALL.iter().map(|f| f.symbol()).collect();
        symbols.sort();
        symbols.dedup();
        assert_eq!(symbols.len(), RuntimeFunction::ALL.len());
        assert!(symbols.iter().all(|s| s.starts_with("mrc_")));
        assert_eq!(RuntimeFunction::RpnProposals.arguments(), [Params, F32(1), I64(2), F32(1), I64(2), F32(2), I64(1)]);
    }
}
