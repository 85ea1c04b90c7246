"""FLOPs and bytes moved per stage of R50-FPN Mask R-CNN on one image, and the roofline bound of
each stage on an A100 and an H100: the performance of the CUDA target on paper.

usage: cuda_roofline.py --weights W.safetensors IMAGE [--json OUT.json]

Runs torchvision's model (the same network and weights as mrc's) on the CPU and records every
aten operator: its FLOPs (torch's flop counter rules: convolutions, matrix products) and the
bytes it reads and writes (inputs and outputs, as if nothing stayed in cache: an upper bound
per operator, a fair estimate of HBM traffic for unfused kernels). A convolution that mrc
computes through an im2col matrix (any kernel but 1x1 stride 1) also writes and reads that
matrix. Stages are torchvision's modules. The bound of a stage is max(FLOPs / peak, bytes /
bandwidth) at FP32 (mrc's default: cuBLAS SGEMM, TF32 off), TF32 (--tf32) and FP16 tensor-core
peaks, dense, SXM parts.
"""
import argparse
import collections
import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import r50

# (FP32, TF32 tensor, FP16 tensor) TFLOP/s dense, and HBM GB/s.
GPUS = {
    "A100 SXM 80GB": ((19.5, 156.0, 312.0), 2039.0),
    "H100 SXM5": ((66.9, 494.7, 989.4), 3350.0),
}
PRECISIONS = ("fp32", "tf32", "fp16")

STAGES = [
    "transform", "backbone.body", "backbone.fpn", "rpn", "roi_heads.box_roi_pool",
    "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_roi_pool",
    "roi_heads.mask_head", "roi_heads.mask_predictor", "roi_heads",
]


def tensor_bytes(value):
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.stack = ["other"]
        self.flops = collections.Counter()
        self.bytes = collections.Counter()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        stage = self.stack[-1]
        packet = func._overloadpacket
        moved = tensor_bytes(list(args)) + tensor_bytes(list(kwargs.values())) + tensor_bytes(out)
        if packet in (torch.ops.aten.conv2d, torch.ops.aten.convolution):
            # Under inference mode a convolution is dispatched whole (conv2d), before the
            # decomposition the flop counter's rules expect.
            weight = args[1]
            stride = args[3] if len(args) > 3 else [1, 1]
            rows = weight.shape[1] * weight.shape[2] * weight.shape[3]
            pixels = out.shape[0] * out.shape[2] * out.shape[3]
            self.flops[stage] += 2 * weight.shape[0] * rows * pixels
            if tuple(weight.shape[2:]) != (1, 1) or any(s != 1 for s in stride):
                moved += 2 * 4 * rows * pixels
        elif packet is torch.ops.aten.linear:
            x, weight = args[0], args[1]
            self.flops[stage] += 2 * x.numel() // x.shape[-1] * weight.shape[0] * weight.shape[1]
        elif packet in flop_registry:
            self.flops[stage] += flop_registry[packet](*args, **kwargs, out=out)
        self.bytes[stage] += moved
        self.ops[stage] += 1
        return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--json")
    parser.add_argument("image")
    args = parser.parse_args()

    model = r50.build()
    model.load_state_dict(load_file(args.weights))
    model.eval()
    recorder = Recorder()
    def leave(module, inputs, outputs):
        recorder.stack.pop()  # returns None: the module's output stays

    for name in STAGES:
        module = model.get_submodule(name)
        module.register_forward_pre_hook(lambda m, i, name=name: recorder.stack.append(name))
        module.register_forward_hook(leave)

    rgb = np.asarray(Image.open(args.image).convert("RGB"))
    tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    with torch.inference_mode(), recorder:
        model([tensor])

    rows = []
    header = f"{'stage':26}{'GFLOP':>9}{'GB moved':>10}"
    for gpu in GPUS:
        header += "".join(f"{gpu.split()[0] + ' ' + p + ' ms':>15}" for p in PRECISIONS)
    print(header)
    totals = collections.Counter()
    for stage in ["other"] + STAGES:
        if not recorder.ops[stage]:
            continue
        flops, moved = recorder.flops[stage], recorder.bytes[stage]
        line = f"{stage:26}{flops / 1e9:9.1f}{moved / 1e9:10.2f}"
        row = {"stage": stage, "gflop": flops / 1e9, "gb_moved": moved / 1e9, "aten_ops": recorder.ops[stage]}
        for gpu, (peaks, bandwidth) in GPUS.items():
            for precision, peak in zip(PRECISIONS, peaks):
                bound = max(flops / (peak * 1e12), moved / (bandwidth * 1e9)) * 1e3
                totals[(gpu, precision)] += bound
                row[f"{gpu} {precision} ms"] = bound
                line += f"{bound:15.2f}"
        rows.append(row)
        print(line)
    total_flops = sum(recorder.flops.values())
    total_bytes = sum(recorder.bytes.values())
    line = f"{'total':26}{total_flops / 1e9:9.1f}{total_bytes / 1e9:10.2f}"
    for gpu in GPUS:
        line += "".join(f"{totals[(gpu, p)]:15.2f}" for p in PRECISIONS)
    print(line)
    print(f"aten operators: {sum(recorder.ops.values())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"stages": rows, "gflop": total_flops / 1e9, "gb_moved": total_bytes / 1e9,
                       "bounds_ms": {f"{g} {p}": totals[(g, p)] for g in GPUS for p in PRECISIONS}}, f, indent=1)


if __name__ == "__main__":
    main()
