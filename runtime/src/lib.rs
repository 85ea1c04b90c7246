//! The runtime that programs compiled by `mrc` link: the CPU built-in operators.
