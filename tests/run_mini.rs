//! `models/mini.model` executed in process (dense segments JIT-compiled, built-ins in the
//! runtime) against torchvision's intermediate tensors of the fixtures (`model/outputs.safetensors`).

mod common;

use mrc::run::Executor;

#[test]
fn fpn_maps_of_img0_match_torchvision() {
    common::mini::assert_fpn_maps_of_img0_match_torchvision(Executor::new);
}

#[test]
fn detections_and_proposals_match_torchvision_on_every_fixture_image() {
    common::mini::assert_detections_and_proposals_match_torchvision(Executor::new, 3);
}

/// `-O0`: no graph passes (batch norms computed per image, not folded into the convolutions).
#[test]
fn without_graph_passes_detections_and_proposals_match_torchvision_too() {
    common::mini::assert_detections_and_proposals_match_torchvision(Executor::new, 0);
}
