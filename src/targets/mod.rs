//! Targets: from a lowered module to something that runs. [`cpu`] writes native executables.

pub mod cpu;
