//! Dense products on a device whose memory the host cannot read: the runtime's GEMM entry
//! points (`abi::kernels`) describe their operands as strided matrices ([`BatchedProduct`])
//! and hand them to the device's GEMM ([`DeviceGemm`], cuBLAS on the GPU).

use super::DeviceError;

/// One operand of a batched product as its memref descriptor lays it out: element (i, j) of
/// batch item b lies `b·batch_stride + i·row_stride + j·col_stride` elements from its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StridedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: i64,
    pub col_stride: i64,
    /// 0 for an operand that every item shares.
    pub batch_stride: i64,
}

impl StridedMatrix {
    /// The same elements read as the transposed matrix.
    pub fn transposed(self) -> StridedMatrix {
        StridedMatrix {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `C[b] = A[b] · B[b]` for every item `b` of `batch`: A [M, K], B [K, N], C [M, N].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchedProduct {
    pub batch: usize,
    pub a: StridedMatrix,
    pub b: StridedMatrix,
    pub c: StridedMatrix,
}

impl BatchedProduct {
    /// Whether C has no element: there is nothing to compute.
    pub fn is_empty(&self) -> bool {
        self.batch == 0 || self.c.rows == 0 || self.c.cols == 0
    }
}

/// A device's own GEMM, on its memory.
pub trait DeviceGemm: Send + Sync {
    /// Computes `product` with single-precision operands at `a`, `b` and `c` (device
    /// addresses of each operand's element (0, 0) of item 0); complete, and visible to every
    /// stream, when this returns.
    ///
    /// # Safety
    /// The operands are live device memory holding every element `product` addresses; C's
    /// elements do not overlap each other or A's and B's.
    unsafe fn batched_product(
        &self,
        product: &BatchedProduct,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) -> Result<(), DeviceError>;

    /// Whether products may use TF32 tensor cores (faster, with 10-bit mantissas in the
    /// multiplications) rather than full single precision.
    fn set_tf32(&self, enabled: bool) -> Result<(), DeviceError>;
}
