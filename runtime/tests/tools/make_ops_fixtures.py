"""Writes a directory with the layout of shared/fixtures/torchvision/ops (same files, tensor
names and cases.json keys) but other values and other numbers of cases, computed with the
installed torchvision. Used to check that the golden tests read their cases from cases.json:

    python make_ops_fixtures.py OUT_DIR SEED   # writes OUT_DIR/ops/...
    MRC_FIXTURES=OUT_DIR cargo test -p mrc-runtime --test golden

Naming operators writes only theirs, merged into an existing OUT_DIR/ops/cases.json; the
project's fixtures of the operators torchvision's shared vectors lack were made so:

    python make_ops_fixtures.py tests/fixtures 1 roi_pool multiscale_roi_pool heatmaps_to_keypoints

Needs torch and torchvision; the tests themselves do not.
"""
import json, math, os, struct, sys
import torch, torchvision
from torchvision.ops import roi_align, roi_pool, nms, batched_nms, MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints, paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

out, only = sys.argv[1], sys.argv[3:]
os.makedirs(f"{out}/ops", exist_ok=True)
torch.manual_seed(int(sys.argv[2]))
g = torch.Generator().manual_seed(int(sys.argv[2]))
DT = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}

def save(name, tensors):
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        t = t.contiguous()
        b = t.numpy().tobytes()
        header[k] = {"dtype": DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(f"{out}/ops/{name}.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h); [f.write(b) for b in blobs]

def rand_boxes(n, h, w, lo, hi, outside=0.0):
    cx = torch.rand(n) * w * (1 + 2 * outside) - w * outside
    cy = torch.rand(n) * h * (1 + 2 * outside) - h * outside
    bw = torch.exp(torch.rand(n) * (math.log(hi) - math.log(lo)) + math.log(lo))
    bh = torch.exp(torch.rand(n) * (math.log(hi) - math.log(lo)) + math.log(lo))
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)

# roi_align: 7 cases
def make_roi_align():
    T, C = {}, []
    for i, (scale, o, sr, al) in enumerate([(0.5, (2, 4), 3, False), (1.0, (5, 5), 0, True), (0.125, (7, 7), -1, False),
                                            (0.25, (3, 2), 1, True), (0.0625, (14, 14), 2, False), (0.5, (1, 1), 0, False), (1.0, (4, 4), 2, True)]):
        n = 1 + i % 3
        x = torch.randn(n, 2 + i, 13 + i, 17 + 2 * i)
        H, W = x.shape[2] / scale, x.shape[3] / scale
        b = rand_boxes(9 + i, H, W, 1, max(H, W), outside=0.2)
        b[0] = torch.tensor([5.0, 5.0, 5.0, 5.0])
        rois = torch.cat([torch.randint(0, n, (b.shape[0], 1)).float(), b], 1)
        T[f"case{i}.input"], T[f"case{i}.rois"] = x, rois
        T[f"case{i}.output"] = roi_align(x, rois, o, scale, sr, al)
        C.append({"name": f"case{i}", "spatial_scale": scale, "output_size": list(o), "sampling_ratio": sr, "aligned": al})
    return T, C


# multiscale: 3 cases
def make_multiscale_roi_align():
    T, C = {}, []
    for i, (hw, o) in enumerate([((96, 128), 7), ((320, 256), 14), ((224, 224), 5)]):
        feats = {str(l): torch.randn(1, 3, math.ceil(hw[0] / 2 ** (l + 2)), math.ceil(hw[1] / 2 ** (l + 2))) for l in range(4)}
        b = rand_boxes(30, hw[0], hw[1], 4, 400)
        pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], o, 2)
        res = pooler(feats, [b], [hw])
        for l in range(4): T[f"case{i}.feat{l}"] = feats[str(l)]
        T[f"case{i}.boxes"], T[f"case{i}.output"] = b, res
        C.append({"name": f"case{i}", "image_size": list(hw), "output_size": o, "sampling_ratio": 2, "canonical_scale": 224,
                  "canonical_level": 4, "scales": pooler.scales})
    return T, C


# anchors: 3 cases
def make_anchors():
    T, C = {}, []
    for i, (img, sizes, ars, fs) in enumerate([((512, 640), ((24,), (48,), (96,)), (0.25, 1.0, 4.0), [(128, 160), (64, 80), (32, 40)]),
                                               ((800, 1216), ((32,), (64,), (128,), (256,), (512,)), (0.5, 1.0, 2.0), [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]),
                                               ((96, 96), ((10,), (20,)), (0.7, 1.3), [(24, 24), (12, 12)])]):
        gen = AnchorGenerator(sizes, (ars,) * len(sizes))
        il = ImageList(torch.zeros(1, 3, *img), [img])
        a = gen(il, [torch.zeros(1, 1, *f) for f in fs])[0]
        T[f"case{i}.anchors"] = a
        C.append({"name": f"case{i}", "image_size": list(img), "sizes": [list(s) for s in sizes], "aspect_ratios": list(ars),
                  "feature_sizes": [list(f) for f in fs], "order": "levels concatenated; within a level: for each (y, x) cell row-major, the A base anchors"})
    return T, C


# box_coder: 3 cases
def make_box_coder():
    T, C = {}, []
    for i, w in enumerate([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 4.0, 3.0, 1.5)]):
        coder = BoxCoder(w)
        p = rand_boxes(40, 600, 800, 4, 300); gt = rand_boxes(40, 600, 800, 4, 300)
        d = torch.randn(40, 4) * 2; d[:5, 2:] = 50
        T[f"case{i}.proposals"], T[f"case{i}.gt"], T[f"case{i}.deltas"] = p, gt, d
        T[f"case{i}.encoded"] = coder.encode_single(gt, p)
        T[f"case{i}.decoded"] = coder.decode_single(d, p)
        C.append({"name": f"case{i}", "weights": list(w), "bbox_xform_clip": math.log(1000.0 / 16)})
    return T, C


# nms: 6 cases
def make_nms():
    T, C = {}, []
    for i, (n, thr, batched) in enumerate([(500, 0.5, False), (1500, 0.7, True), (50, 0.3, False), (0, 0.5, True), (2500, 0.6, False), (800, 0.5, True)]):
        b = rand_boxes(n, 200, 200, 5, 80)
        s = torch.randint(0, 30, (n,)).float() / 30
        lab = torch.randint(0, 4, (n,))
        k = batched_nms(b, s, lab, thr) if batched else nms(b, s, thr)
        T[f"case{i}.boxes"], T[f"case{i}.scores"], T[f"case{i}.labels"], T[f"case{i}.keep"] = b, s, lab, k
        C.append({"name": f"case{i}", "iou_threshold": thr, "batched": batched})
    return T, C


# paste: 3 cases
def make_paste_masks():
    T, C = {}, []
    for i, hw in enumerate([(64, 90), (480, 360), (150, 150)]):
        m = torch.rand(8, 1, 28, 28)
        b = rand_boxes(8, hw[0], hw[1], 1, 200)
        T[f"case{i}.masks"], T[f"case{i}.boxes"] = m, b
        T[f"case{i}.pasted"] = paste_masks_in_image(m, b, hw, padding=1)
        C.append({"name": f"case{i}", "image_size": list(hw), "padding": 1})
    return T, C


# transform: 2 cases
def make_transform():
    T, C = {}, []
    for i, (hw, mn, mx) in enumerate([((333, 251), 400, 600), ((120, 700), 256, 512)]):
        img = torch.randint(0, 256, (*hw, 3), dtype=torch.uint8)
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        tr = GeneralizedRCNNTransform(mn, mx, mean, std); tr.eval()
        il, _ = tr([img.permute(2, 0, 1).float() / 255])
        T[f"case{i}.image_u8"], T[f"case{i}.batched"] = img, il.tensors[0]
        C.append({"name": f"case{i}", "min_size": mn, "max_size": mx, "image_hw": list(hw), "resized_hw": list(il.image_sizes[0]),
                  "size_divisible": 32, "mean": mean, "std": std})
    return T, C


# roi_pool: 6 cases, the last without RoIs
def make_roi_pool():
    T, C = {}, []
    for i, (scale, o, k) in enumerate([(0.5, (2, 4), 9), (1.0, (5, 5), 10), (0.125, (7, 7), 11), (0.25, (3, 2), 12),
                                       (0.0625, (14, 14), 8), (0.25, (7, 7), 0)]):
        n = 1 + i % 3
        x = torch.randn(n, 2 + i, 13 + i, 17 + 2 * i)
        H, W = x.shape[2] / scale, x.shape[3] / scale
        b = rand_boxes(k, H, W, 1, max(H, W), outside=0.2)
        if k:
            b[0] = torch.tensor([5.0, 5.0, 5.0, 5.0])
        rois = torch.cat([torch.randint(0, n, (k, 1)).float(), b], 1)
        T[f"case{i}.input"], T[f"case{i}.rois"] = x, rois
        T[f"case{i}.output"] = roi_pool(x, rois, o, scale)
        C.append({"name": f"case{i}", "spatial_scale": scale, "output_size": list(o)})
    return T, C


def multiscale_roi_pool(feats, boxes, image_size, output_size, canonical_scale, canonical_level):
    """MultiScaleRoIAlign's scales and level mapper, pooling each level with roi_pool."""
    scales, mapper = _setup_scales(feats, [image_size], canonical_scale, canonical_level)
    rois, levels = _convert_to_roi_format([boxes]), mapper([boxes])
    result = torch.zeros(len(rois), feats[0].shape[1], *output_size)
    for level, (feat, scale) in enumerate(zip(feats, scales)):
        idx = torch.where(levels == level)[0]
        result[idx] = roi_pool(feat, rois[idx], output_size, scale)
    return result, scales


# multiscale_roi_pool: 4 cases, the last without boxes
def make_multiscale_roi_pool():
    T, C = {}, []
    for i, (hw, o, k, s0) in enumerate([((96, 128), 7, 30, 224), ((320, 256), 7, 30, 224), ((200, 200), 5, 20, 112),
                                        ((64, 96), 7, 0, 224)]):
        feats = [torch.randn(1, 3, math.ceil(hw[0] / 2 ** (l + 2)), math.ceil(hw[1] / 2 ** (l + 2))) for l in range(4)]
        b = rand_boxes(k, hw[0], hw[1], 4, 400)
        res, scales = multiscale_roi_pool(feats, b, hw, (o, o), s0, 4)
        for l in range(4): T[f"case{i}.feat{l}"] = feats[l]
        T[f"case{i}.boxes"], T[f"case{i}.output"] = b, res
        C.append({"name": f"case{i}", "image_size": list(hw), "output_size": o, "canonical_scale": s0,
                  "canonical_level": 4, "scales": scales})
    return T, C


# heatmaps_to_keypoints: 4 cases, the last without RoIs; boxes from under a pixel (clamped to 1)
# to 300 pixels, fractional sides (the resized map rounds them up)
def make_heatmaps_to_keypoints():
    T, C = {}, []
    for i, (k, n, s, lo, hi) in enumerate([(6, 5, 28, 0.5, 120), (3, 2, 56, 20, 300), (6, 17, 14, 2, 60), (0, 17, 56, 1, 10)]):
        maps = torch.randn(k, n, s, s)
        b = rand_boxes(k, 400, 500, lo, hi)
        xy, scores = heatmaps_to_keypoints(maps, b)
        T[f"case{i}.heatmaps"], T[f"case{i}.boxes"] = maps, b
        T[f"case{i}.keypoints"], T[f"case{i}.scores"] = xy.contiguous(), scores
        C.append({"name": f"case{i}"})
    return T, C


MAKERS = {"roi_align": make_roi_align, "roi_pool": make_roi_pool, "multiscale_roi_align": make_multiscale_roi_align,
          "multiscale_roi_pool": make_multiscale_roi_pool, "anchors": make_anchors, "box_coder": make_box_coder,
          "nms": make_nms, "paste_masks": make_paste_masks, "transform": make_transform,
          "heatmaps_to_keypoints": make_heatmaps_to_keypoints}
unknown = [op for op in only if op not in MAKERS]
if unknown:
    sys.exit(f"no fixtures for {unknown}; known: {list(MAKERS)}")
index = f"{out}/ops/cases.json"
everything = json.load(open(index)) if only else {"torch": torch.__version__, "torchvision": torchvision.__version__}
everything.setdefault("cases", {})
for op in only or MAKERS:
    T, C = MAKERS[op]()
    save(op, T)
    everything["cases"][op] = C
json.dump(everything, open(index, "w"), indent=1)
print("ok")
