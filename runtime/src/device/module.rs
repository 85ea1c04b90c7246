//! Modules loaded lazily. Generated code loads its kernels' module from a global constructor
//! (`mgpuModuleLoadJIT`), before `main` has parsed `--device`: a [`LazyModule`] only keeps the
//! image then, and loads it on the selected device at the first function lookup.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Mutex;

use super::{lock, DeviceError, FunctionHandle, ModuleHandle, SelectedDevice};

/// A kernel found in a module: what `mgpuModuleGetFunction` hands generated code.
pub struct KernelFunction {
    pub name: String,
    pub handle: FunctionHandle,
}

/// A module image, loaded on the device at its first function lookup.
pub struct LazyModule {
    /// PTX text with its terminating NUL, or a binary image followed by a NUL (which the
    /// driver, reading the image's own sizes, ignores).
    image: Vec<u8>,
    optimization_level: Option<i32>,
    state: Mutex<ModuleState>,
}

#[derive(Default)]
struct ModuleState {
    loaded: Option<ModuleHandle>,
    /// Boxed, so that the addresses handed to generated code stay put.
    functions: HashMap<String, Box<KernelFunction>>,
}

impl LazyModule {
    /// A module of PTX text, for the driver's JIT at `optimization_level`.
    pub fn from_ptx(ptx: &CStr, optimization_level: Option<i32>) -> LazyModule {
        LazyModule { image: ptx.to_bytes_with_nul().to_vec(), optimization_level, state: Mutex::default() }
    }

    /// A module of `image` (PTX text or a binary).
    pub fn from_image(image: &[u8]) -> LazyModule {
        let mut owned = Vec::with_capacity(image.len() + 1);
        owned.extend_from_slice(image);
        owned.push(0);
        LazyModule { image: owned, optimization_level: None, state: Mutex::default() }
    }

    /// The kernel `name`, loading the module on `device` first if this is its first lookup.
    /// The kernel lives as long as the module.
    pub fn function(&self, device: &SelectedDevice, name: &str) -> Result<*const KernelFunction, DeviceError> {
        let mut state = lock(&self.state);
        if let Some(function) = state.functions.get(name) {
            return Ok(function.as_ref());
        }
        let module = match state.loaded {
            Some(module) => module,
            None => *state.loaded.insert(device.device().load_module(&self.image, self.optimization_level)?),
        };
        let handle = device.device().function(module, name)?;
        let function = state
            .functions
            .entry(name.to_owned())
            .or_insert(Box::new(KernelFunction { name: name.to_owned(), handle }));
        Ok(function.as_ref())
    }

    /// Unloads the module from `device` if it was loaded there.
    pub fn unload(self, device: &SelectedDevice) -> Result<(), DeviceError> {
        let state = self.state.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.loaded {
            Some(module) => device.device().unload_module(module),
            None => Ok(()),
        }
    }
}
