//! The runtime's description of an emitted `@forward` ([`Interface`]): where each argument comes
//! from (a network input, a state tensor, a tensor derived from the state when the weights are
//! loaded), the results' element types and ranks, and the state a checkpoint must hold. `mrc
//! run` and compiled programs (in their manifest) hand the same description to
//! `mrc_runtime::abi::forward::Forward`.

use super::Signature;
use crate::graph::types::DType;
use crate::graph::{Graph, NodeKind};
use mrc_runtime::abi::forward::{Element, Interface, ResultSpec, Source};
use mrc_runtime::weights::{Dtype, TensorSpec};

/// The state tensors a checkpoint must hold for `graph`: its `state_dict`.
pub fn expected_state(graph: &Graph) -> Vec<TensorSpec> {
    graph
        .state
        .iter()
        .map(|&s| {
            let ty = &graph.nodes[s].outputs[0];
            TensorSpec {
                name: graph.nodes[s].name.clone(),
                shape: ty.dims.iter().map(|d| d.value().unwrap_or(0) as usize).collect(),
                dtype: if ty.dtype == DType::I64 { Dtype::I64 } else { Dtype::F32 },
            }
        })
        .collect()
}

/// The interface of the `@forward` emitted from `graph` with `signature`.
pub fn interface(graph: &Graph, signature: &Signature) -> Interface {
    let by_name = |name: &str| {
        graph
            .nodes
            .node_indices()
            .find(|&n| graph.nodes[n].name == name && !matches!(graph.nodes[n].kind, NodeKind::Op { .. }))
    };
    let element = |dtype| match dtype {
        DType::I64 => Element::I64,
        DType::U8 => Element::U8,
        _ => Element::F32,
    };
    Interface {
        arguments: signature
            .arguments
            .iter()
            .map(|a| match by_name(&a.name).map(|n| (n, &graph.nodes[n].kind)) {
                Some((_, NodeKind::Input)) => Source::Input(a.name.clone()),
                Some((node, NodeKind::Derived(transform))) => Source::Derived {
                    name: a.name.clone(),
                    transform: transform.clone(),
                    from: graph.inputs_of(node).iter().map(|p| graph.nodes[p.node].name.clone()).collect(),
                },
                _ => Source::State(a.name.clone()),
            })
            .collect(),
        results: signature
            .results
            .iter()
            .map(|r| (r.name.clone(), ResultSpec { element: element(r.ty.dtype), rank: r.ty.rank() }))
            .collect(),
        state: expected_state(graph),
    }
}
