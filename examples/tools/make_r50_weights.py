"""Writes deterministic random weights for R50-FPN Mask R-CNN (torchvision's names) as safetensors.

usage: make_r50_weights.py OUT.safetensors [--seed S]
Every FrozenBatchNorm2d gets random statistics, so the eps = 0 folding is exercised.
"""
import argparse

import torch
from safetensors.torch import save_file

import r50


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = r50.build()
    with torch.no_grad():
        for bn in r50.frozen_batch_norms(model):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.running_mean.normal_(0.0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, args.out)
    print(f"wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
