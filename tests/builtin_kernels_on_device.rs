//! The built-ins' kernels on the emulated device (`Executor::on_emulated_device`: the CUDA
//! target, kernels run as their CPU forms), against torchvision's goldens and the runtime
//! (`common::builtins`). Its own test binary: selecting the emulator is for the whole process.

mod common;

use mrc::run::Executor;

#[test]
fn mask_probs() {
    common::builtins::mask_probs(Executor::on_emulated_device);
}

#[test]
fn rescale_boxes() {
    common::builtins::rescale_boxes(Executor::on_emulated_device);
}

#[test]
fn roi_align() {
    common::builtins::roi_align(Executor::on_emulated_device);
}

#[test]
fn multiscale_roi_align() {
    common::builtins::multiscale_roi_align(Executor::on_emulated_device);
}

#[test]
fn paste_masks() {
    common::builtins::paste_masks(Executor::on_emulated_device);
}

#[test]
fn anchors() {
    common::builtins::anchors(Executor::on_emulated_device);
}

#[test]
fn preprocess() {
    common::builtins::preprocess(Executor::on_emulated_device);
}

#[test]
fn roi_pool() {
    common::builtins::roi_pool(Executor::on_emulated_device);
}

#[test]
fn multiscale_roi_pool() {
    common::builtins::multiscale_roi_pool(Executor::on_emulated_device);
}

#[test]
fn postprocess_detections() {
    common::builtins::postprocess_detections(Executor::on_emulated_device);
}

#[test]
fn rpn_proposals() {
    common::builtins::rpn_proposals(Executor::on_emulated_device);
}
