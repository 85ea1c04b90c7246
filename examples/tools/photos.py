"""Writes the project's real photos as PNG for the CPU benchmark and the R50-FPN parity check.

usage: photos.py OUTDIR
photoN.png: the `caseN.image_u8` photos of tests/fixtures/ops/transform.safetensors, then
tests/fixtures/model/images/img3.png unless it is one of them; bench_800x1066.png: photo0
resized (PIL bilinear) to 800x1066, a size torchvision's transform (min 800, max 1333) keeps.
"""
import json
import pathlib
import sys

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(FIXTURES / "ops" / "transform.safetensors")
    cases = json.loads((FIXTURES / "ops" / "cases.json").read_text())["cases"]["transform"]
    photos = [tensors[f"{case['name']}.image_u8"] for case in cases]
    img3 = np.asarray(Image.open(FIXTURES / "model" / "images" / "img3.png").convert("RGB"))
    if not any(p.shape == img3.shape and (p == img3).all() for p in photos):
        photos.append(img3)
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(out / f"photo{i}.png")
    Image.fromarray(photos[0]).resize((1066, 800), Image.BILINEAR).save(out / "bench_800x1066.png")
    print(f"wrote {len(photos)} photos and bench_800x1066.png to {out}")


if __name__ == "__main__":
    main()
