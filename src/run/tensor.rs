//! Host-side tensors passed between compiled segments and runtime built-ins.

/// A row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub enum HostTensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
    U8 { shape: Vec<usize>, data: Vec<u8> },
}

impl HostTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32 { shape, .. } | HostTensor::I64 { shape, .. } | HostTensor::U8 { shape, .. } => shape,
        }
    }

    pub fn f32(&self) -> Option<&[f32]> {
        match self {
            HostTensor::F32 { data, .. } => Some(data),
            _ => None,
        }
    }

    pub fn i64(&self) -> Option<&[i64]> {
        match self {
            HostTensor::I64 { data, .. } => Some(data),
            _ => None,
        }
    }
}
