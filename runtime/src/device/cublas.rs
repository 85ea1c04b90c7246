//! cuBLAS, through cudarc's bindings loaded at run time (no toolkit needed to build): the GEMM
//! of the CUDA device ([`super::driver`]). `libcublas.so.12` comes from PyPI's
//! `nvidia-cublas-cu12` or a CUDA installation; a machine without it gets
//! [`DeviceError::NoCublas`] when the device starts.
//!
//! The runtime's operands are row-major views with any strides; cuBLAS is column-major, and
//! reads a matrix whose elements are unit-strided along one axis, either axis through its
//! transpose flag. [`SgemmStridedBatched::plan`] maps a [`BatchedProduct`] to the arguments of
//! `cublasSgemmStridedBatched`: a row-major C is a column-major Cᵀ, so it computes
//! Cᵀ = Bᵀ·Aᵀ (a column-major C, C = A·B as given).

use std::ffi::{c_void, CStr};
use std::sync::Mutex;

use cudarc::cublas::sys::{self, cublasMath_t, cublasOperation_t, cublasStatus_t};

use super::gemm::{BatchedProduct, StridedMatrix};
use super::DeviceError;

/// Why a product's operands cannot be handed to cuBLAS.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GemmLayoutError {
    #[error("{operand} [{rows}, {cols}] has strides [{row_stride}, {col_stride}]: cuBLAS needs a unit stride along one axis")]
    NoUnitStride { operand: &'static str, rows: usize, cols: usize, row_stride: i64, col_stride: i64 },
    #[error(
        "{operand} [{rows}, {cols}] has strides [{row_stride}, {col_stride}]: cuBLAS needs its other stride to be at least {least}"
    )]
    LeadingDimension { operand: &'static str, rows: usize, cols: usize, row_stride: i64, col_stride: i64, least: usize },
    #[error("{what} {value} is more than cuBLAS's 32-bit arguments take")]
    TooLarge { what: &'static str, value: i64 },
    #[error("the shapes do not make a product: A [{}, {}] × B [{}, {}] → C [{}, {}]", a[0], a[1], b[0], b[1], c[0], c[1])]
    Shapes { a: [usize; 2], b: [usize; 2], c: [usize; 2] },
}

/// The arguments of `cublasSgemmStridedBatched`, which computes, for each item p of `batch`,
/// the column-major `C'[p] = op(A'[p]) · op(B'[p])` (m × n, inner dimension k), element (i, j)
/// of a stored matrix X' at `p·stride_x + i + j·ldx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgemmStridedBatched {
    pub transa: cublasOperation_t,
    pub transb: cublasOperation_t,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub batch: i32,
    /// Whether cuBLAS's A' is the product's B and its B' the product's A (Cᵀ = Bᵀ·Aᵀ).
    pub swapped: bool,
}

/// Whether an axis of `len` elements is unit-strided (one element has no stride to speak of).
fn unit(stride: i64, len: usize) -> bool {
    stride == 1 || len <= 1
}

fn int(what: &'static str, value: i64) -> Result<i32, GemmLayoutError> {
    i32::try_from(value).map_err(|_| GemmLayoutError::TooLarge { what, value })
}

/// How cuBLAS reads the operand `name`, or its transpose where `transposed`: as a stored
/// column-major matrix (unit row stride) or as the transpose of one (unit column stride), and
/// that stored matrix's leading dimension. Errors describe the operand as given.
fn operand(
    name: &'static str,
    given: StridedMatrix,
    transposed: bool,
) -> Result<(cublasOperation_t, i32), GemmLayoutError> {
    let StridedMatrix { rows, cols, row_stride, col_stride, .. } = if transposed { given.transposed() } else { given };
    // The stored matrix's rows, its stride between columns, and its columns.
    let (operation, stored_rows, leading, stored_cols) = if unit(row_stride, rows) {
        (cublasOperation_t::CUBLAS_OP_N, rows, col_stride, cols)
    } else if unit(col_stride, cols) {
        (cublasOperation_t::CUBLAS_OP_T, cols, row_stride, rows)
    } else {
        return Err(GemmLayoutError::NoUnitStride {
            operand: name,
            rows: given.rows,
            cols: given.cols,
            row_stride: given.row_stride,
            col_stride: given.col_stride,
        });
    };
    let least = stored_rows.max(1);
    // A single column has no stride between columns: it takes the least cuBLAS accepts.
    let leading = if stored_cols <= 1 { least as i64 } else { leading };
    if leading < least as i64 {
        return Err(GemmLayoutError::LeadingDimension {
            operand: name,
            rows: given.rows,
            cols: given.cols,
            row_stride: given.row_stride,
            col_stride: given.col_stride,
            least,
        });
    }
    Ok((operation, int("a leading dimension of", leading)?))
}

impl SgemmStridedBatched {
    /// The call computing `product`, or why cuBLAS cannot read its operands as laid out.
    pub fn plan(product: &BatchedProduct) -> Result<SgemmStridedBatched, GemmLayoutError> {
        let BatchedProduct { batch, a, b, c } = *product;
        if a.rows != c.rows || a.cols != b.rows || b.cols != c.cols {
            return Err(GemmLayoutError::Shapes { a: [a.rows, a.cols], b: [b.rows, b.cols], c: [c.rows, c.cols] });
        }
        // cuBLAS writes a column-major C': C' is Cᵀ = Bᵀ·Aᵀ when C is row-major (unit column
        // stride, as the runtime allocates results), C = A·B itself otherwise.
        let swapped = unit(c.col_stride, c.cols);
        let ((first_name, first), (second_name, second)) =
            if swapped { (("B", b), ("A", a)) } else { (("A", a), ("B", b)) };
        let (transa, lda) = operand(first_name, first, swapped)?;
        let (transb, ldb) = operand(second_name, second, swapped)?;
        // Read as stored (by the choice above, C' is unit-strided along its rows), or an error
        // when C has no unit stride.
        let (_, ldc) = operand("C", c, swapped)?;
        let (m, n) = if swapped { (c.cols, c.rows) } else { (c.rows, c.cols) };
        Ok(SgemmStridedBatched {
            transa,
            transb,
            m: int("a dimension of", m as i64)?,
            n: int("a dimension of", n as i64)?,
            k: int("a dimension of", a.cols as i64)?,
            lda,
            ldb,
            ldc,
            stride_a: first.batch_stride,
            stride_b: second.batch_stride,
            stride_c: c.batch_stride,
            batch: int("a batch of", batch as i64)?,
            swapped,
        })
    }

    /// cuBLAS's (A', B') for the product's (A, B).
    pub fn operands<T>(&self, a: T, b: T) -> (T, T) {
        if self.swapped {
            (b, a)
        } else {
            (a, b)
        }
    }
}

/// The cuBLAS functions called here, as cudarc resolves them: cudarc panics at the first call
/// of a function the library lacks, so their presence is checked before any call.
const CUBLAS_FUNCTIONS: &[&str] = &[
    "cublasCreate_v2",
    "cublasSetMathMode",
    "cublasSgemmStridedBatched",
    "cublasGetStatusName",
    "cublasGetStatusString",
];

/// Whether cuBLAS can be loaded and has every function called here; never panics.
pub fn probe() -> Result<(), DeviceError> {
    // SAFETY: loading the library runs its initializers, which expect nothing of us.
    if !unsafe { sys::is_culib_present() } {
        return Err(DeviceError::NoCublas);
    }
    for &symbol in CUBLAS_FUNCTIONS {
        // SAFETY: the library is present (checked above); looking a symbol up calls nothing.
        if unsafe { sys::culib().get::<*const c_void>(symbol.as_bytes()) }.is_err() {
            return Err(DeviceError::CublasTooOld { symbol });
        }
    }
    Ok(())
}

/// cuBLAS's status codes as names and messages ("CUBLAS_STATUS_INVALID_VALUE: an invalid
/// value was used as an argument").
fn describe(status: cublasStatus_t) -> String {
    // SAFETY: both functions are present (`probe`) and return static strings, or null.
    let (name, text) = unsafe { (sys::cublasGetStatusName(status), sys::cublasGetStatusString(status)) };
    if name.is_null() || text.is_null() {
        return format!("cuBLAS status {}", status as u32);
    }
    // SAFETY: non-null, NUL-terminated static strings.
    let (name, text) = unsafe { (CStr::from_ptr(name), CStr::from_ptr(text)) };
    format!("{}: {}", name.to_string_lossy(), text.to_string_lossy())
}

fn check(call: &'static str, status: cublasStatus_t) -> Result<(), DeviceError> {
    match status {
        cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        _ => Err(DeviceError::Cublas { call, message: describe(status) }),
    }
}

/// A cuBLAS handle of the device's context, in full single precision until TF32 is allowed.
/// Its calls are serialized: threads may share a handle, but not while its math mode changes.
pub struct Cublas {
    handle: Mutex<sys::cublasHandle_t>,
}

// SAFETY: the handle is only used under its mutex, from any thread where the context is
// current.
unsafe impl Send for Cublas {}
unsafe impl Sync for Cublas {}

impl Cublas {
    /// Loads cuBLAS and creates a handle in the current context, with `CUBLAS_DEFAULT_MATH`
    /// (no TF32 for single precision) set explicitly.
    ///
    /// # Safety
    /// The device's context is current on the calling thread.
    pub unsafe fn create() -> Result<Cublas, DeviceError> {
        probe()?;
        let mut handle = std::ptr::null_mut();
        match sys::cublasCreate_v2(&mut handle) {
            cublasStatus_t::CUBLAS_STATUS_SUCCESS => {}
            failure => return Err(DeviceError::CublasStart(describe(failure))),
        }
        check("cublasSetMathMode", sys::cublasSetMathMode(handle, cublasMath_t::CUBLAS_DEFAULT_MATH))?;
        Ok(Cublas { handle: Mutex::new(handle) })
    }

    /// TF32 tensor-op math (`CUBLAS_TF32_TENSOR_OP_MATH`) or full single precision
    /// (`CUBLAS_DEFAULT_MATH`).
    pub fn set_tf32(&self, enabled: bool) -> Result<(), DeviceError> {
        let mode = if enabled { cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH } else { cublasMath_t::CUBLAS_DEFAULT_MATH };
        let handle = super::lock(&self.handle);
        // SAFETY: the handle is live; setting its mode reaches no device.
        check("cublasSetMathMode", unsafe { sys::cublasSetMathMode(*handle, mode) })
    }

    /// Enqueues `product` on the legacy default stream (the handle's), where the runtime
    /// allocates its results.
    ///
    /// # Safety
    /// As [`super::gemm::DeviceGemm::batched_product`]; the device's context is current.
    pub unsafe fn sgemm(
        &self,
        product: &BatchedProduct,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) -> Result<(), DeviceError> {
        let plan = SgemmStridedBatched::plan(product)?;
        let (first, second) = plan.operands(a, b);
        let (alpha, beta) = (1.0_f32, 0.0_f32);
        let handle = super::lock(&self.handle);
        check(
            "cublasSgemmStridedBatched",
            sys::cublasSgemmStridedBatched(
                *handle,
                plan.transa,
                plan.transb,
                plan.m,
                plan.n,
                plan.k,
                &alpha,
                first,
                plan.lda,
                plan.stride_a,
                second,
                plan.ldb,
                plan.stride_b,
                &beta,
                c,
                plan.ldc,
                plan.stride_c,
                plan.batch,
            ),
        )
    }
}

/// A naive `cublasSgemmStridedBatched` (alpha 1, beta 0), with the argument checks by which
/// cuBLAS refuses a call (`CUBLAS_STATUS_INVALID_VALUE`), for testing plans on the host.
#[cfg(test)]
pub(crate) fn reference_sgemm_strided_batched(
    plan: &SgemmStridedBatched,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) -> Result<(), String> {
    use cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let SgemmStridedBatched { transa, transb, m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c, batch, .. } = *plan;
    if m < 0 || n < 0 || k < 0 || batch < 0 {
        return Err(format!("negative size: m {m}, n {n}, k {k}, batch {batch}"));
    }
    let stored_rows = |operation, rows, cols| match operation {
        CUBLAS_OP_N => Ok(rows),
        CUBLAS_OP_T => Ok(cols),
        other => Err(format!("{other:?} is not used for real matrices")),
    };
    let (rows_a, rows_b) = (stored_rows(transa, m, k)?, stored_rows(transb, k, n)?);
    for (name, ld, rows) in [("lda", lda, rows_a), ("ldb", ldb, rows_b), ("ldc", ldc, m)] {
        if ld < rows.max(1) {
            return Err(format!("{name} {ld} < max(1, {rows})"));
        }
    }
    let (m, n, k, lda, ldb, ldc) = (m as i64, n as i64, k as i64, lda as i64, ldb as i64, ldc as i64);
    let at = |stored: &[f32], operation, ld: i64, i: i64, j: i64| -> f32 {
        let index = if operation == CUBLAS_OP_N { i + j * ld } else { j + i * ld };
        stored[usize::try_from(index).unwrap()]
    };
    for p in 0..batch as i64 {
        let (a, b) = (&a[(p * stride_a) as usize..], &b[(p * stride_b) as usize..]);
        for j in 0..n {
            for i in 0..m {
                let sum = (0..k).fold(0.0_f32, |sum, l| sum + at(a, transa, lda, i, l) * at(b, transb, ldb, l, j));
                c[usize::try_from(p * stride_c + i + j * ldc).unwrap()] = sum;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A [rows, cols] matrix with the given strides, not batched.
    fn matrix(rows: usize, cols: usize, row_stride: i64, col_stride: i64) -> StridedMatrix {
        StridedMatrix { rows, cols, row_stride, col_stride, batch_stride: 0 }
    }

    /// The buffer holding every element of `matrix` at `batch` items, each element a distinct
    /// small integer (products and sums exact), and the rest NaN.
    fn filled(matrix: StridedMatrix, batch: usize, seed: usize) -> Vec<f32> {
        let mut buffer = vec![f32::NAN; extent(matrix, batch)];
        for (n, index) in indices(matrix, batch).into_iter().enumerate() {
            buffer[index] = ((n * 7 + seed) % 11) as f32 - 5.0;
        }
        buffer
    }

    /// Every element's index, item by item, row-major.
    fn indices(matrix: StridedMatrix, batch: usize) -> Vec<usize> {
        let mut indices = vec![];
        for p in 0..batch as i64 {
            for i in 0..matrix.rows as i64 {
                for j in 0..matrix.cols as i64 {
                    indices.push((p * matrix.batch_stride + i * matrix.row_stride + j * matrix.col_stride) as usize);
                }
            }
        }
        indices
    }

    fn extent(matrix: StridedMatrix, batch: usize) -> usize {
        indices(matrix, batch).into_iter().max().map_or(0, |last| last + 1)
    }

    /// Runs `product`'s plan on the reference and compares with the row-major product.
    fn check_plan(product: BatchedProduct) -> SgemmStridedBatched {
        let plan = SgemmStridedBatched::plan(&product).unwrap();
        let (a, b) = (filled(product.a, product.batch, 1), filled(product.b, product.batch, 4));
        let mut c = vec![f32::NAN; extent(product.c, product.batch)];
        let (first, second) = plan.operands(&a, &b);
        reference_sgemm_strided_batched(&plan, first, second, &mut c).unwrap();
        let element = |buffer: &[f32], matrix: StridedMatrix, p: usize, i: usize, j: usize| {
            buffer[p * matrix.batch_stride as usize + i * matrix.row_stride as usize + j * matrix.col_stride as usize]
        };
        for p in 0..product.batch {
            for i in 0..product.c.rows {
                for j in 0..product.c.cols {
                    let expected = (0..product.a.cols)
                        .fold(0.0, |sum, l| sum + element(&a, product.a, p, i, l) * element(&b, product.b, p, l, j));
                    assert_eq!(
                        element(&c, product.c, p, i, j),
                        expected,
                        "C[{p}][{i}, {j}] of {product:?} by {plan:?}"
                    );
                }
            }
        }
        plan
    }

    #[test]
    fn a_row_major_product_is_computed_transposed() {
        let plan = check_plan(BatchedProduct {
            batch: 1,
            a: matrix(2, 3, 3, 1),
            b: matrix(3, 4, 4, 1),
            c: matrix(2, 4, 4, 1),
        });
        // Cᵀ [4, 2] = Bᵀ [4, 3] · Aᵀ [3, 2]: row-major B and A are column-major Bᵀ and Aᵀ.
        assert_eq!((plan.m, plan.n, plan.k), (4, 2, 3));
        assert_eq!((plan.transa, plan.transb), (cublasOperation_t::CUBLAS_OP_N, cublasOperation_t::CUBLAS_OP_N));
        assert_eq!((plan.lda, plan.ldb, plan.ldc), (4, 3, 4));
        assert!(plan.swapped);
    }

    #[test]
    fn operands_with_either_unit_stride_padding_and_shared_items() {
        let products = [
            // Column-major A, padded row-major B, per item; shared A.
            BatchedProduct {
                batch: 3,
                a: matrix(5, 3, 1, 7),
                b: StridedMatrix { batch_stride: 40, ..matrix(3, 6, 9, 1) },
                c: StridedMatrix { batch_stride: 30, ..matrix(5, 6, 6, 1) },
            },
            // Column-major B with padded columns, padded C and items apart.
            BatchedProduct {
                batch: 2,
                a: StridedMatrix { batch_stride: 20, ..matrix(4, 3, 4, 1) },
                b: StridedMatrix { batch_stride: 25, ..matrix(3, 5, 1, 4) },
                c: StridedMatrix { batch_stride: 37, ..matrix(4, 5, 8, 1) },
            },
            // A column-major C: computed as given, C = A·B.
            BatchedProduct {
                batch: 2,
                a: StridedMatrix { batch_stride: 12, ..matrix(3, 4, 4, 1) },
                b: matrix(4, 2, 1, 4),
                c: StridedMatrix { batch_stride: 8, ..matrix(3, 2, 1, 4) },
            },
            // Single rows and columns, whose strides are anything.
            BatchedProduct { batch: 1, a: matrix(1, 3, 0, 1), b: matrix(3, 1, 2, 5), c: matrix(1, 1, 9, 9) },
            BatchedProduct { batch: 2, a: matrix(4, 1, 1, 0), b: matrix(1, 3, 3, 1), c: matrix(4, 3, 3, 1) },
        ];
        for product in products {
            check_plan(product);
        }
        let column_major_c = SgemmStridedBatched::plan(&products[2]).unwrap();
        assert!(!column_major_c.swapped);
    }

    #[test]
    fn operands_without_a_unit_stride_are_refused_by_name() {
        let refused =
            |a, b, c| SgemmStridedBatched::plan(&BatchedProduct { batch: 1, a, b, c }).unwrap_err().to_string();
        assert_eq!(
            refused(matrix(2, 3, 6, 2), matrix(3, 4, 4, 1), matrix(2, 4, 4, 1)),
            "A [2, 3] has strides [6, 2]: cuBLAS needs a unit stride along one axis"
        );
        assert_eq!(
            refused(matrix(2, 3, 3, 1), matrix(3, 4, 8, 2), matrix(2, 4, 4, 1)),
            "B [3, 4] has strides [8, 2]: cuBLAS needs a unit stride along one axis"
        );
        assert_eq!(
            refused(matrix(2, 3, 3, 1), matrix(3, 4, 4, 1), matrix(2, 4, 8, 2)),
            "C [2, 4] has strides [8, 2]: cuBLAS needs a unit stride along one axis"
        );
        // Rows that overlap (a broadcast column) have no leading dimension cuBLAS takes.
        assert_eq!(
            refused(matrix(2, 3, 0, 1), matrix(3, 4, 4, 1), matrix(2, 4, 4, 1)),
            "A [2, 3] has strides [0, 1]: cuBLAS needs its other stride to be at least 3"
        );
        assert_eq!(
            refused(matrix(2, 3, 3, 1), matrix(2, 4, 4, 1), matrix(2, 4, 4, 1)),
            "the shapes do not make a product: A [2, 3] × B [2, 4] → C [2, 4]"
        );
    }

    #[test]
    fn the_reference_refuses_what_cublas_refuses() {
        let plan = SgemmStridedBatched::plan(&BatchedProduct {
            batch: 1,
            a: matrix(2, 3, 3, 1),
            b: matrix(3, 4, 4, 1),
            c: matrix(2, 4, 4, 1),
        })
        .unwrap();
        let (a, b, mut c) = (vec![0.0; 6], vec![0.0; 12], vec![0.0; 8]);
        let short = SgemmStridedBatched { lda: 3, ..plan };
        assert_eq!(reference_sgemm_strided_batched(&short, &b, &a, &mut c).unwrap_err(), "lda 3 < max(1, 4)");
        let conjugate = SgemmStridedBatched { transb: cublasOperation_t::CUBLAS_OP_C, ..plan };
        assert!(reference_sgemm_strided_batched(&conjugate, &b, &a, &mut c).is_err());
    }

    #[test]
    fn probing_a_missing_cublas_names_it_without_panicking() {
        // SAFETY: as in `probe`.
        if unsafe { sys::is_culib_present() } {
            return;
        }
        assert_eq!(probe(), Err(DeviceError::NoCublas));
    }
}
