//! One training step of the mini model compiled for CUDA and run on the emulated device, against
//! torchvision's step as the CPU's is ([`common::train_replay`]). Its own test binary: selecting
//! the emulator is for the whole process.

mod common;

use common::train_replay;
use mrc::train::JitStep;

#[test]
fn one_step_on_the_emulated_device_equals_torchvisions() {
    let training = train_replay::training_graph();
    let step = JitStep::on_emulated_device(&training, 2).unwrap_or_else(|e| panic!("{e}"));
    let mut state = train_replay::initial_state(&training);
    let inputs = train_replay::inputs();
    let borrowed: Vec<(&str, &_)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    let output = step.run(&borrowed, &mut state).unwrap_or_else(|e| panic!("{e}"));
    train_replay::assert_matches_torchvision(&output, &state);
}
