"""Writes torchvision's outputs for the module-level detection steps (runtime/src/detection.rs):

    python make_detection_fixtures.py OUT_DIR   # writes OUT_DIR/detection/{cases.json,detection.safetensors}

The project's copy is tests/fixtures/detection (made with OUT_DIR = tests/fixtures), read by
runtime/tests/detection.rs. Each case runs torchvision's own module in eval mode on random head
outputs: RegionProposalNetwork (with its AnchorGenerator), RoIHeads.postprocess_detections,
maskrcnn_inference. Logits are continuous random values, so top-k meets no ties. Needs torch and
torchvision; the tests do not.
"""
import json, os, struct, sys
from collections import OrderedDict
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference

out = os.path.join(sys.argv[1], "detection")
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
DT = {torch.float32: "F32", torch.int64: "I64"}
tensors = {}


def save(path):
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[k] = {"dtype": DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class FixedHead(torch.nn.Module):
    """An RPN head that returns given objectness and deltas, whatever the features."""

    def __init__(self, objectness, deltas):
        super().__init__()
        self.objectness, self.deltas = objectness, deltas

    def forward(self, features):
        return self.objectness, self.deltas


def rand_boxes(n, h, w, outside):
    x = torch.rand(n) * w * (1 + 2 * outside) - w * outside
    y = torch.rand(n) * h * (1 + 2 * outside) - h * outside
    bw, bh = torch.rand(n) * w * 0.5 + 2, torch.rand(n) * h * 0.5 + 2
    return torch.stack([x, y, x + bw, y + bh], 1)


cases = {"rpn": [], "detections": [], "mask_probs": []}

# RPN: the second case has over 1,000 boxes after top-k, torchvision's per-level NMS path.
for i, (batch_hw, image_hw, maps, pre, post, nms, score) in enumerate([
    ([64, 96], [60, 90], [[16, 24], [8, 12], [4, 6]], 100, 50, 0.7, 0.0),
    ([96, 128], [96, 120], [[24, 32], [12, 16], [6, 8], [3, 4]], 1000, 1000, 0.7, 0.0),
    ([64, 64], [64, 50], [[16, 16], [8, 8]], 300, 40, 0.5, 0.4),
]):
    sizes = [[16 * 2 ** l] for l in range(len(maps))]
    ratios = [0.5, 1.0, 2.0]
    objectness = [torch.randn(1, 3, h, w) * 2 for h, w in maps]
    deltas = [torch.randn(1, 12, h, w) * 0.5 for h, w in maps]
    rpn = RegionProposalNetwork(
        AnchorGenerator(tuple(tuple(s) for s in sizes), (tuple(ratios),) * len(maps)),
        FixedHead(objectness, deltas), 0.7, 0.3, 256, 0.5,
        {"training": pre, "testing": pre}, {"training": post, "testing": post}, nms, score_thresh=score,
    ).eval()
    features = OrderedDict((str(l), torch.zeros(1, 1, h, w)) for l, (h, w) in enumerate(maps))
    with torch.no_grad():
        anchors = rpn.anchor_generator(ImageList(torch.zeros(1, 3, *batch_hw), [tuple(image_hw)]), list(features.values()))[0]
        boxes, _ = rpn(ImageList(torch.zeros(1, 3, *batch_hw), [tuple(image_hw)]), features)
    name = f"rpn{i}"
    for l in range(len(maps)):
        tensors[f"{name}.objectness{l}"] = objectness[l]
        tensors[f"{name}.deltas{l}"] = deltas[l]
    tensors[f"{name}.anchors"] = anchors
    tensors[f"{name}.proposals"] = boxes[0]
    cases["rpn"].append({"name": name, "batch_hw": batch_hw, "image_hw": image_hw, "feature_sizes": maps, "sizes": sizes,
                         "aspect_ratios": ratios, "pre_nms_top_n": pre, "post_nms_top_n": post, "nms_thresh": nms,
                         "min_size": rpn.min_size, "score_thresh": score})

# RoIHeads.postprocess_detections: the second case has over 1,000 candidates.
for i, (p, k, image_hw, score, nms, per_img) in enumerate([
    (6, 4, [50, 60], 0.05, 0.5, 100),
    (300, 5, [120, 160], 0.05, 0.5, 100),
    (40, 3, [80, 80], 0.3, 0.3, 10),
]):
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, score, nms, per_img).eval()
    logits, regression = torch.randn(p, k) * 2, torch.randn(p, 4 * k)
    proposals = rand_boxes(p, *image_hw, outside=0.1)
    with torch.no_grad():
        boxes, scores, labels = heads.postprocess_detections(logits, regression, [proposals], [tuple(image_hw)])
    name = f"det{i}"
    tensors.update({f"{name}.class_logits": logits, f"{name}.box_regression": regression, f"{name}.proposals": proposals,
                    f"{name}.boxes": boxes[0], f"{name}.scores": scores[0], f"{name}.labels": labels[0]})
    cases["detections"].append({"name": name, "image_hw": image_hw, "weights": list(heads.box_coder.weights),
                                "score_thresh": score, "nms_thresh": nms, "detections_per_img": per_img, "min_size": 1e-2})

logits = torch.randn(5, 4, 6, 6) * 3
labels = torch.tensor([1, 3, 2, 1, 3])
tensors.update({"mask.logits": logits, "mask.labels": labels, "mask.probs": maskrcnn_inference(logits, [labels])[0]})
cases["mask_probs"].append({"name": "mask"})

save(os.path.join(out, "detection.safetensors"))
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump({"torch": torch.__version__, "cases": cases}, f)
