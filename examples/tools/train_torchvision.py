"""Trains torchvision's mini Mask R-CNN (the fixtures' model: `model/model.json`) with the shapes
recipe for N iterations and times each step, the peer of `mrc train models/mini.model`.

usage: train_torchvision.py --data train/annotations.json --iterations N --threads T
                            [--timings T.json]
Batches are the next 4 images of the data set in order, decoded before timing starts; a step is
forward, backward and the optimizer's update. --timings writes {"seconds": [one per step],
"losses": [the summed loss per step], "peak_rss_mb": peak RSS}.
"""
import argparse
import json
import os
import resource
import time

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

BATCH = 4


def mini_model():
    """The architecture of the fixtures' `model/model.json`, randomly initialized."""
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2"}, [64, 128, 256], 64)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 4)
    return MaskRCNN(
        backbone,
        min_size=320,
        max_size=320,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 7, 2),
        box_head=TwoMLPHead(64 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, 4),
        box_batch_size_per_image=128,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], 14, 2),
        mask_head=MaskRCNNHeads(64, (64, 64, 64, 64), 1),
        mask_predictor=MaskRCNNPredictor(64, 64, 4),
    )


def batches(annotations, count):
    """The first `count` batches of 4 annotated images, in file order, as torchvision's inputs."""
    coco = COCO(annotations)
    folder = os.path.join(os.path.dirname(annotations), "images")
    ids = [i for i in sorted(coco.getImgIds()) if coco.getAnnIds(imgIds=i, iscrowd=False)]
    out = []
    for b in range(count):
        images, targets = [], []
        for image_id in ids[b * BATCH:(b + 1) * BATCH]:
            info = coco.loadImgs(image_id)[0]
            pixels = np.asarray(Image.open(os.path.join(folder, info["file_name"])).convert("RGB"))
            images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            targets.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                "masks": torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])),
            })
        out.append((images, targets))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--timings")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mini_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=100)
    steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1400, 1800], gamma=0.1)
    data = batches(args.data, args.iterations)

    seconds, losses = [], []
    for iteration, (images, targets) in enumerate(data):
        start = time.perf_counter()
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
        steps.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
        print(f"iteration {iteration + 1}: loss {losses[-1]:.4f}, {seconds[-1]:.2f} s", flush=True)

    if args.timings:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(args.timings, "w") as f:
            json.dump({"seconds": seconds, "losses": losses, "peak_rss_mb": peak}, f)


if __name__ == "__main__":
    main()
