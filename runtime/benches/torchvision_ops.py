"""torchvision's side of `cargo bench -p mrc-runtime --bench ops`.

Reads the inputs the Rust benchmark wrote (a safetensors file, parsed by hand so that only
torch and torchvision are needed), times the same calls in torchvision on 2 threads, and prints
one JSON object: {case: seconds (median)} plus, to check that both sides computed the same
thing, the NMS keep lists and the sums of the RoIAlign and pasted outputs.
"""
import json
import struct
import sys
import time

import torch
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign, nms


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32).reshape(info["shape"])
    return out


def median_time(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main():
    path, runs = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    t = load(path)
    results = {}
    for n in ("4000", "20000"):
        boxes, scores = t[f"nms{n}.boxes"], t[f"nms{n}.scores"]
        results[f"nms{n}"] = median_time(lambda: nms(boxes, scores, 0.7), runs)
        results[f"nms{n}.keep"] = nms(boxes, scores, 0.7).tolist()

    feats = {str(l): t[f"roi.feat{l}"] for l in range(4)}
    boxes = t["roi.boxes"]
    h, w = (int(v) for v in t["roi.image_size"].tolist())
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    with torch.no_grad():
        results["roi_align"] = median_time(lambda: pooler(feats, [boxes], [(h, w)]), runs)
        results["roi_align.sum"] = pooler(feats, [boxes], [(h, w)]).double().abs().sum().item()

    masks, mboxes = t["paste.masks"], t["paste.boxes"]
    ph, pw = (int(v) for v in t["paste.image_size"].tolist())
    results["paste"] = median_time(lambda: paste_masks_in_image(masks, mboxes, (ph, pw), padding=1), runs)
    results["paste.sum"] = paste_masks_in_image(masks, mboxes, (ph, pw), padding=1).double().sum().item()
    results["versions"] = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
