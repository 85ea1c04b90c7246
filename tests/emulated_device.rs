//! The CUDA target in process, on the emulated device (`Executor::on_emulated_device`): every
//! kernel's CPU form, every allocation, copy and launch as a CUDA program makes them. Its own
//! test binary: selecting the emulator is for the whole process.

mod common;

use mrc::run::Executor;

#[test]
fn fpn_maps_of_img0_on_the_emulated_device_match_torchvision() {
    common::mini::assert_fpn_maps_of_img0_match_torchvision(Executor::on_emulated_device);
}

#[test]
fn detections_and_proposals_on_the_emulated_device_match_torchvision() {
    common::mini::assert_detections_and_proposals_match_torchvision(Executor::on_emulated_device, 3);
}
