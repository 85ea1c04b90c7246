"""Writes a directory with the layout of shared/fixtures/torchvision/ops (same files, tensor
names and cases.json keys) but other values and other numbers of cases, computed with the
installed torchvision. Used to check that the golden tests read their cases from cases.json:

    python make_ops_fixtures.py OUT_DIR SEED   # writes OUT_DIR/ops/...
    MRC_FIXTURES=OUT_DIR cargo test -p mrc-runtime --test golden

Needs torch and torchvision; the tests themselves do not.
"""
import json, math, os, struct, sys
import torch, torchvision
from torchvision.ops import roi_align, nms, batched_nms, MultiScaleRoIAlign
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

out = sys.argv[1]
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

cases = {}
# roi_align: 7 cases
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
save("roi_align", T); cases["roi_align"] = C

# multiscale: 3 cases
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
save("multiscale_roi_align", T); cases["multiscale_roi_align"] = C

# anchors: 3 cases
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
save("anchors", T); cases["anchors"] = C

# box_coder: 3 cases
T, C = {}, []
for i, w in enumerate([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 4.0, 3.0, 1.5)]):
    coder = BoxCoder(w)
    p = rand_boxes(40, 600, 800, 4, 300); gt = rand_boxes(40, 600, 800, 4, 300)
    d = torch.randn(40, 4) * 2; d[:5, 2:] = 50
    T[f"case{i}.proposals"], T[f"case{i}.gt"], T[f"case{i}.deltas"] = p, gt, d
    T[f"case{i}.encoded"] = coder.encode_single(gt, p)
    T[f"case{i}.decoded"] = coder.decode_single(d, p)
    C.append({"name": f"case{i}", "weights": list(w), "bbox_xform_clip": math.log(1000.0 / 16)})
save("box_coder", T); cases["box_coder"] = C

# nms: 6 cases
T, C = {}, []
for i, (n, thr, batched) in enumerate([(500, 0.5, False), (1500, 0.7, True), (50, 0.3, False), (0, 0.5, True), (2500, 0.6, False), (800, 0.5, True)]):
    b = rand_boxes(n, 200, 200, 5, 80)
    s = torch.randint(0, 30, (n,)).float() / 30
    lab = torch.randint(0, 4, (n,))
    k = batched_nms(b, s, lab, thr) if batched else nms(b, s, thr)
    T[f"case{i}.boxes"], T[f"case{i}.scores"], T[f"case{i}.labels"], T[f"case{i}.keep"] = b, s, lab, k
    C.append({"name": f"case{i}", "iou_threshold": thr, "batched": batched})
save("nms", T); cases["nms"] = C

# paste: 3 cases
T, C = {}, []
for i, hw in enumerate([(64, 90), (480, 360), (150, 150)]):
    m = torch.rand(8, 1, 28, 28)
    b = rand_boxes(8, hw[0], hw[1], 1, 200)
    T[f"case{i}.masks"], T[f"case{i}.boxes"] = m, b
    T[f"case{i}.pasted"] = paste_masks_in_image(m, b, hw, padding=1)
    C.append({"name": f"case{i}", "image_size": list(hw), "padding": 1})
save("paste_masks", T); cases["paste_masks"] = C

# transform: 2 cases
T, C = {}, []
for i, (hw, mn, mx) in enumerate([((333, 251), 400, 600), ((120, 700), 256, 512)]):
    img = torch.randint(0, 256, (*hw, 3), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tr = GeneralizedRCNNTransform(mn, mx, mean, std); tr.eval()
    il, _ = tr([img.permute(2, 0, 1).float() / 255])
    T[f"case{i}.image_u8"], T[f"case{i}.batched"] = img, il.tensors[0]
    C.append({"name": f"case{i}", "min_size": mn, "max_size": mx, "image_hw": list(hw), "resized_hw": list(il.image_sizes[0]),
              "size_divisible": 32, "mean": mean, "std": std})
save("transform", T); cases["transform"] = C

json.dump({"cases": cases}, open(f"{out}/ops/cases.json", "w"), indent=1)
print("ok")
