//! One training step of the mini model on the CPU against torchvision's
//! ([`common::train_replay`] says how it is replayed and compared).

mod common;

use common::train_replay;
use mrc::train::JitStep;

#[test]
fn one_step_equals_torchvisions() {
    let training = train_replay::training_graph();
    let step = JitStep::compile(&training, 2).unwrap();
    let mut state = train_replay::initial_state(&training);
    let inputs = train_replay::inputs();
    let borrowed: Vec<(&str, &_)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    let output = step.run(&borrowed, &mut state).unwrap();
    train_replay::assert_matches_torchvision(&output, &state);
}
