//! Resampling of feature maps.

use super::*;

/// Nearest-neighbour upsampling to the spatial size of `like` (the FPN top-down path).
#[derive(Debug)]
pub struct UpsampleNearest;

impl Operator for UpsampleNearest {
    fn name(&self) -> &'static str {
        "upsample_nearest"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        const { &[input("x"), input("like")] }
    }
    fn attrs(&self) -> &'static [AttrSpec] {
        const { &[] }
    }
    fn infer(&self, inputs: &[Vec<TensorType>], _: &Attrs) -> Result<Inference, OpError> {
        let (x, like) = (&inputs[0][0], &inputs[1][0]);
        expect_rank(self.name(), 0, x, "N, C, H, W")?;
        expect_rank(self.name(), 1, like, "N, C, H, W")?;
        let dims = vec![x.dims[0].clone(), x.dims[1].clone(), like.dims[2].clone(), like.dims[3].clone()];
        Ok(Inference::output(TensorType::new(x.dtype, dims)))
    }
}
