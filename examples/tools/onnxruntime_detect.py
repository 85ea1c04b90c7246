"""Runs torchvision's R50-FPN Mask R-CNN exported to ONNX on ONNX Runtime (CPU), the benchmark's
second peer: the same weights, the same images, the same timing file as torchvision_detect.py.

usage: onnxruntime_detect.py --weights W.safetensors --onnx MODEL.onnx --threads N --json OUT.json
                             [--repeat K] [--timings T.json] IMAGE...
MODEL.onnx is exported first when missing (torch.onnx.export with dynamo=False and opset 17:
torch's default dynamo exporter fails on torchvision's detection models). image_id is the
image's 1-based position on the command line. --timings writes {"seconds": [one per call],
"peak_rss_mb": peak RSS}: the export happens in a process of its own, so that its memory does
not count.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

import coco_rle


def export(weights, onnx_path, example):
    """Exports the model traced on the image `example` (sizes stay dynamic)."""
    import torch
    from safetensors.torch import load_file

    import r50

    model = r50.build()
    model.load_state_dict(load_file(weights))
    model.eval()
    rgb = np.asarray(Image.open(example).convert("RGB"))
    tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    partial = onnx_path + ".tmp"
    torch.onnx.export(
        model,
        ([tensor],),
        partial,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["boxes", "labels", "scores", "masks"],
        dynamic_axes={"image": {1: "height", 2: "width"}},
    )
    os.replace(partial, onnx_path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timings")
    parser.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()

    if args.export_only:
        export(args.weights, args.onnx, args.images[0])
        return
    if not os.path.exists(args.onnx):
        subprocess.run([sys.executable, __file__, "--export-only", "--weights", args.weights, "--onnx", args.onnx,
                        "--threads", "1", "--json", "/dev/null", args.images[0]], check=True)

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])

    results, seconds = [], []
    for image_id, path in enumerate(args.images, start=1):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        image = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255
        for _ in range(args.repeat):
            start = time.perf_counter()
            boxes, labels, scores, masks = session.run(None, {"image": image})
            seconds.append(time.perf_counter() - start)
        results += coco_rle.detections(image_id, boxes.tolist(), labels.tolist(), scores.tolist(), masks[:, 0] > 0.5)
        print(f"{path}: {len(scores)} detections, {seconds[-1]:.3f} s")

    coco_rle.write_results(args.json, results, args.timings, seconds)

if __name__ == "__main__":
    main()
