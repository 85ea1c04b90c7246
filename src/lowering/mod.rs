//! Lowering of the dataflow graph to MLIR (melior), and the MLIR toolchain.
