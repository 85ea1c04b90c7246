//! Memref descriptors as MLIR lays them out, and buffers that generated code may free.
//!
//! In a CUDA program (a device is selected) the runtime's functions still compute on the host:
//! [`MemRef::elements`] reads a device buffer back, and the results they make
//! ([`MemRef::owned`], [`MemRef::allocate`]) are device memory, which generated code frees with
//! the device. That round trip is where a built-in has no kernel yet.

use std::ffi::c_void;

extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn free(pointer: *mut c_void);
    fn mallopt(parameter: i32, value: i32) -> i32;
}

/// glibc serves allocations over 128 KiB with fresh `mmap`s and returns them on `free`, so
/// every large tensor of every image (or training step) would be page-faulted and zeroed anew (a
/// quarter of the run time of R50-FPN and of the mini model's training step): keep freed memory
/// in the heap for reuse instead. One arena for all threads, because a thread's own arena grows
/// in 64 MiB heaps that it unmaps as soon as they empty, whatever the thresholds (the training
/// step, which runs on a pool thread, page-faulted ~220 MB per step that way). Call it once,
/// first, before other threads allocate.
pub fn keep_freed_memory() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    // SAFETY: plain glibc tuning calls; glibc serializes them with allocation.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, i32::MAX);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_ARENA_MAX, 1);
    }
}

/// MLIR's `StridedMemRefType<T, R>`: the buffer's allocation, the aligned base, an offset and
/// per-axis sizes and strides, in elements.
#[repr(C)]
#[derive(Debug)]
pub struct MemRef<T, const R: usize> {
    pub allocated: *mut T,
    pub aligned: *mut T,
    pub offset: i64,
    pub sizes: [i64; R],
    pub strides: [i64; R],
}

impl<T: Copy, const R: usize> MemRef<T, R> {
    /// A row-major descriptor of `data` (borrowed: generated code must not free or write it).
    pub fn borrowed(data: &[T], shape: [usize; R]) -> Self {
        let pointer = data.as_ptr() as *mut T;
        MemRef { allocated: pointer, aligned: pointer, offset: 0, sizes: shape.map(|d| d as i64), strides: row_major(shape) }
    }

    /// A row-major tensor in a fresh buffer that the receiver frees: `malloc`ed, or device
    /// memory in a CUDA program.
    pub fn owned(data: &[T], shape: [usize; R]) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let memref = Self::allocate(shape);
        let bytes = std::mem::size_of_val(data);
        // SAFETY: the fresh buffer holds `data.len()` elements.
        unsafe {
            match crate::device::selected() {
                Some(device) => {
                    if let Err(error) = device.copy(memref.aligned.cast(), data.as_ptr().cast(), bytes, std::ptr::null_mut()) {
                        super::set_error(error.to_string());
                    }
                }
                None => std::ptr::copy_nonoverlapping(data.as_ptr(), memref.aligned, data.len()),
            }
        }
        memref
    }

    /// An uninitialized row-major tensor in a fresh buffer (`malloc`ed, or device memory in a
    /// CUDA program), for a kernel to fill.
    pub fn allocate(shape: [usize; R]) -> Self {
        // At least one byte: malloc(0) may return null.
        let bytes = (shape.iter().product::<usize>() * std::mem::size_of::<T>()).max(1);
        let pointer = match crate::device::selected() {
            // SAFETY: a plain allocation on the default stream.
            Some(device) => unsafe { device.allocate(bytes, false, std::ptr::null_mut()) }.unwrap_or_else(|error| {
                super::set_error(error.to_string());
                std::ptr::null_mut()
            }),
            // SAFETY: malloc; the caller writes every element before reading.
            None => unsafe { malloc(bytes) },
        } as *mut T;
        assert!(!pointer.is_null() || super::error_pending(), "out of memory");
        MemRef { allocated: pointer, aligned: pointer, offset: 0, sizes: shape.map(|d| d as i64), strides: row_major(shape) }
    }

    /// A row-major tensor in a fresh buffer, zeros that `fill` writes over: in place where the
    /// buffer is host memory (a runtime function's large result made where it is returned, not
    /// copied there), else on the host first, then copied to the device. The buffer is freed
    /// when `fill` fails.
    pub fn written<E>(shape: [usize; R], fill: impl FnOnce(&mut [T]) -> Result<(), E>) -> Result<Self, E>
    where
        T: bytemuck::Zeroable,
    {
        let len = shape.iter().product::<usize>();
        if crate::device::selected().is_some() {
            let mut values = vec![T::zeroed(); len];
            fill(&mut values)?;
            return Ok(Self::owned(&values, shape));
        }
        let memref = Self::allocate(shape);
        if memref.aligned.is_null() {
            // Out of memory: the error is recorded.
            return Ok(memref);
        }
        let base = memref.aligned as usize;
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 18;
        // SAFETY: the tasks zero disjoint parts of the fresh buffer of `len` elements, for which
        // all-zero bytes are a value (`Zeroable`).
        (0..len.div_ceil(CHUNK)).into_par_iter().for_each(|chunk| unsafe {
            let first = chunk * CHUNK;
            std::ptr::write_bytes((base as *mut T).add(first), 0, CHUNK.min(len - first));
        });
        // SAFETY: the buffer holds `len` initialized elements, and only this function sees it.
        match fill(unsafe { std::slice::from_raw_parts_mut(memref.aligned, len) }) {
            Ok(()) => Ok(memref),
            Err(error) => {
                // SAFETY: allocated above, never handed out.
                unsafe { memref.free() };
                Err(error)
            }
        }
    }

    /// Frees a host buffer that [`MemRef::allocate`] made and no one else holds.
    ///
    /// # Safety
    /// As said; the descriptor is not used again.
    pub unsafe fn free(self) {
        free(self.allocated.cast());
    }

    pub fn shape(&self) -> [usize; R] {
        self.sizes.map(|d| d as usize)
    }

    /// Whether the elements are row-major and contiguous.
    pub fn is_contiguous(&self) -> bool {
        self.strides == row_major(self.shape()) || self.shape().contains(&0)
    }

    /// The elements in row-major order: a view when contiguous, else a gathered copy.
    ///
    /// # Safety
    /// The descriptor must describe live memory holding its elements.
    pub unsafe fn elements(&self) -> std::borrow::Cow<'_, [T]> {
        let count: usize = self.shape().iter().product();
        if count == 0 {
            return std::borrow::Cow::Owned(vec![]);
        }
        let mut base = self.aligned.offset(self.offset as isize) as *const T;
        let shape = self.shape();
        // Device memory is read back: the extent of the view, copied whole.
        let on_host: Vec<T>;
        if let Some(device) = crate::device::selected().filter(|device| device.owns(self.allocated.cast())) {
            let extent = 1 + (0..R).map(|axis| (shape[axis] as i64 - 1) * self.strides[axis]).sum::<i64>() as usize;
            let mut bytes = vec![0_u8; extent * std::mem::size_of::<T>()];
            if let Err(error) = device.download(base.cast(), &mut bytes) {
                super::set_error(error.to_string());
                return std::borrow::Cow::Owned(vec![]);
            }
            on_host = (0..extent).map(|i| std::ptr::read_unaligned((bytes.as_ptr() as *const T).add(i))).collect();
            base = on_host.as_ptr();
            if self.is_contiguous() {
                return std::borrow::Cow::Owned(on_host);
            }
        } else if self.is_contiguous() {
            return std::borrow::Cow::Borrowed(std::slice::from_raw_parts(base, count));
        }
        let mut out = Vec::with_capacity(count);
        for flat in 0..count {
            let (mut rest, mut position) = (flat, 0_i64);
            for axis in (0..R).rev() {
                position += (rest % shape[axis]) as i64 * self.strides[axis];
                rest /= shape[axis];
            }
            out.push(*base.offset(position as isize));
        }
        std::borrow::Cow::Owned(out)
    }

    /// A mutable slice over a buffer from [`MemRef::allocate`].
    ///
    /// # Safety
    /// The descriptor must be contiguous and own its buffer.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.aligned.offset(self.offset as isize), self.shape().iter().product())
    }
}

pub(crate) fn row_major<const R: usize>(shape: [usize; R]) -> [i64; R] {
    let mut strides = [1_i64; R];
    for axis in (0..R.saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1] as i64;
    }
    strides
}

/// MLIR's `UnrankedMemRefType`: a rank and a pointer to a ranked descriptor.
#[repr(C)]
pub struct UnrankedMemRef {
    rank: i64,
    descriptor: *const i64,
}

/// `memrefCopy`, which `finalize-memref-to-llvm` calls to copy between strided views (as MLIR's
/// C runner utilities define it): `element_size` bytes per element, any rank and strides.
///
/// # Safety
/// Both descriptors must describe live buffers of the same shape.
#[export_name = "memrefCopy"]
pub unsafe extern "C" fn memref_copy(element_size: i64, source: *const UnrankedMemRef, target: *const UnrankedMemRef) {
    let (source, target) = (&*source, &*target);
    let rank = source.rank as usize;
    // Descriptor words: allocated, aligned, offset, sizes[rank], strides[rank].
    let words = |d: *const i64| std::slice::from_raw_parts(d, 3 + 2 * rank);
    let (s, t) = (words(source.descriptor), words(target.descriptor));
    let sizes = &s[3..3 + rank];
    let count: i64 = sizes.iter().product();
    if count == 0 {
        return;
    }
    let size = element_size as usize;
    let (from, to) = ((s[1] as *const u8).add(s[2] as usize * size), (t[1] as *mut u8).add(t[2] as usize * size));
    let contiguous = |strides: &[i64]| {
        let mut expected = 1;
        (0..rank).rev().all(|axis| {
            let ok = sizes[axis] == 1 || strides[axis] == expected;
            expected *= sizes[axis];
            ok
        })
    };
    if contiguous(&s[3 + rank..]) && contiguous(&t[3 + rank..]) {
        std::ptr::copy_nonoverlapping(from, to, count as usize * size);
        return;
    }
    let (source_strides, target_strides) = (&s[3 + rank..], &t[3 + rank..]);
    // Innermost runs are copied at once when both sides are unit-strided along the last axis.
    let inner = if rank > 0 && source_strides[rank - 1] == 1 && target_strides[rank - 1] == 1 { sizes[rank - 1] } else { 1 };
    let outer_rank = if inner > 1 { rank - 1 } else { rank };
    let outer: i64 = sizes[..outer_rank].iter().product();
    let (from, to) = (from as usize, to as usize);
    let copy_run = |flat: i64| {
        let (mut rest, mut a, mut b) = (flat, 0_i64, 0_i64);
        for axis in (0..outer_rank).rev() {
            let i = rest % sizes[axis];
            rest /= sizes[axis];
            a += i * source_strides[axis];
            b += i * target_strides[axis];
        }
        // SAFETY: run `flat` of the two views, which the caller promised are live; the runs
        // of the target do not overlap.
        unsafe { std::ptr::copy_nonoverlapping((from as *const u8).add(a as usize * size), (to as *mut u8).add(b as usize * size), inner as usize * size) };
    };
    // A large copy (an activation into its padded buffer) is split among the threads.
    if count as usize * size >= PARALLEL_COPY_BYTES {
        use rayon::prelude::*;
        (0..outer as usize).into_par_iter().with_min_len(64).for_each(|flat| copy_run(flat as i64));
    } else {
        (0..outer).for_each(copy_run);
    }
}

/// The size from which [`memref_copy`] copies on every thread.
const PARALLEL_COPY_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// An activation copied into the interior of its padded buffer, once below and once above
    /// [`PARALLEL_COPY_BYTES`]: every element lands in place and the border stays as it was.
    #[test]
    fn a_copy_into_a_padded_buffer_writes_the_interior_only() {
        for [n, c, h, w] in [[1, 2, 5, 7], [4, 16, 64, 70]] {
            let (hp, wp) = (h + 2, w + 2);
            let source: Vec<f32> = (0..n * c * h * w).map(|i| i as f32).collect();
            let mut target = vec![-1.0_f32; n * c * hp * wp];
            let descriptor = |base: *const f32, offset: usize, strides: [usize; 4]| -> Vec<i64> {
                let mut words = vec![base as i64, base as i64, offset as i64];
                words.extend([n, c, h, w].map(|d| d as i64));
                words.extend(strides.map(|s| s as i64));
                words
            };
            let from = descriptor(source.as_ptr(), 0, [c * h * w, h * w, w, 1]);
            let to = descriptor(target.as_mut_ptr(), wp + 1, [c * hp * wp, hp * wp, wp, 1]);
            let (from, to) = (UnrankedMemRef { rank: 4, descriptor: from.as_ptr() }, UnrankedMemRef { rank: 4, descriptor: to.as_ptr() });
            // SAFETY: both descriptors describe the buffers above, of the same shape.
            unsafe { memref_copy(4, &from, &to) };
            for plane in 0..n * c {
                for y in 0..hp {
                    for x in 0..wp {
                        let got = target[(plane * hp + y) * wp + x];
                        let interior = (1..=h).contains(&y) && (1..=w).contains(&x);
                        let expected = if interior { source[(plane * h + y - 1) * w + x - 1] } else { -1.0 };
                        assert_eq!(got, expected, "{:?} plane {plane} ({y}, {x})", [n, c, h, w]);
                    }
                }
            }
        }
    }
}
