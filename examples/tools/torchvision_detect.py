"""Runs torchvision's R50-FPN Mask R-CNN on images and writes COCO results JSON (RLE masks).

usage: torchvision_detect.py --weights W.safetensors --threads N --json OUT.json
                             [--repeat K] [--timings T.json] [--device cpu|cuda] IMAGE...
image_id is the image's 1-based position on the command line. --timings writes
{"seconds": [one per model call, image by image, K calls each], "peak_rss_mb": peak RSS}.
On cuda, each call is timed to the end of its GPU work, with TF32 off (as mrc's default).
"""
import argparse
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import coco_rle
import r50


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timings")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = r50.build()
    model.load_state_dict(load_file(args.weights))
    model.eval().to(args.device)

    results, seconds = [], []
    with torch.inference_mode():
        for image_id, path in enumerate(args.images, start=1):
            rgb = np.asarray(Image.open(path).convert("RGB"))
            tensor = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255).to(args.device)
            for _ in range(args.repeat):
                start = time.perf_counter()
                output = model([tensor])[0]
                if args.device == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
            output = {key: value.cpu() for key, value in output.items()}
            masks = (output["masks"][:, 0] > 0.5).numpy()
            results += coco_rle.detections(image_id, output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist(), masks)
            print(f"{path}: {len(output['scores'])} detections, {seconds[-1]:.3f} s")

    coco_rle.write_results(args.json, results, args.timings, seconds)

if __name__ == "__main__":
    main()
