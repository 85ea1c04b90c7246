"""Compares two COCO results files (RLE masks) image by image with the project's match criteria.

usage: compare_detections.py REF.json OURS.json [--min-match 0.95]
A reference detection matches one of OURS with the same category, box IoU >= 0.99, |score
difference| <= 1e-3 and mask IoU >= 0.98 or at most 2 differing pixels; one to one, greedily in
descending reference score. Unmatched detections within 1e-3 of the 0.05 score threshold or (when
the image has 100 detections) of its 100th score are exempt: listed, not failures. Exits 0 when
matched / (reference detections - exempt unmatched ones) >= --min-match, else 1.
"""
import argparse
import collections
import json
import sys

import coco_rle

SCORE_THRESH, MAX_DETECTIONS, SCORE_TOL = 0.05, 100, 1e-3


def box_iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else float(a == b)


def mask_agreement(a, b):
    """(mask IoU, differing pixels) of two detections' RLE masks."""
    ma, mb = coco_rle.decode(a["segmentation"]), coco_rle.decode(b["segmentation"])
    if ma.shape != mb.shape:
        return 0.0, max(ma.size, mb.size)
    union = (ma | mb).sum()
    return ((ma & mb).sum() / union if union else 1.0), int((ma ^ mb).sum())


def agreement(r, o):
    """Why r and o fail to match as a short string, or None when they match."""
    iou = box_iou(r["bbox"], o["bbox"])
    ds = abs(r["score"] - o["score"])
    if r["category_id"] != o["category_id"] or iou < 0.99 or ds > SCORE_TOL:
        return f"box IoU {iou:.4f}, score diff {ds:.2e}"
    m_iou, differ = mask_agreement(r, o)
    if m_iou < 0.98 and differ > 2:
        return f"box IoU {iou:.4f}, score diff {ds:.2e}, mask IoU {m_iou:.4f} ({differ} px differ)"
    return None


def exempt(det, dets):
    cutoffs = [SCORE_THRESH]
    if len(dets) == MAX_DETECTIONS:
        cutoffs.append(min(d["score"] for d in dets))
    return any(abs(det["score"] - c) <= SCORE_TOL for c in cutoffs)


def describe(d):
    x, y, w, h = d["bbox"]
    return f"cat {d['category_id']} score {d['score']:.4f} box [{x:.1f}, {y:.1f}, {w:.1f}, {h:.1f}]"


def compare_image(refs, ours):
    """Returns (matched, unmatched refs, unmatched ours); prints the unmatched ones."""
    refs = sorted(refs, key=lambda d: -d["score"])
    free = list(ours)
    matched, lost = 0, []
    for r in refs:
        found = next((o for o in free if agreement(r, o) is None), None)
        if found is None:
            lost.append(r)
        else:
            free.remove(found)
            matched += 1
    for r in lost:
        same = [o for o in ours if o["category_id"] == r["category_id"]]
        nearest = max(same, key=lambda o: box_iou(r["bbox"], o["bbox"]), default=None)
        why = (agreement(r, nearest) or "its match was taken") if nearest else "no same category"
        tag = "exempt" if exempt(r, refs) else "FAIL"
        print(f"    ref only  {tag:6} {describe(r)}; nearest: {why}")
    for o in free:
        tag = "exempt" if exempt(o, ours) else "extra"
        print(f"    ours only {tag:6} {describe(o)}")
    return matched, lost, free


def by_image(path):
    with open(path) as f:
        dets = json.load(f)
    images = collections.defaultdict(list)
    for d in dets:
        images[d["image_id"]].append(d)
    return images


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ref")
    parser.add_argument("ours")
    parser.add_argument("--min-match", type=float, default=0.95)
    args = parser.parse_args()
    ref, ours = by_image(args.ref), by_image(args.ours)

    total = matched = exempted = 0
    for image_id in sorted(set(ref) | set(ours)):
        r, o = ref.get(image_id, []), ours.get(image_id, [])
        print(f"image {image_id}: ref {len(r)}, ours {len(o)}")
        m, lost, extra = compare_image(r, o)
        ex = sum(exempt(d, r) for d in lost)
        print(f"  matched {m}, ref only {len(lost)} ({ex} exempt), "
              f"ours only {len(extra)} ({sum(exempt(d, o) for d in extra)} exempt)")
        total, matched, exempted = total + len(r), matched + m, exempted + ex

    counted = total - exempted
    fraction = matched / counted if counted else 1.0
    verdict = "ok" if fraction >= args.min_match else "FAIL"
    print(f"matched {matched} of {counted} reference detections ({exempted} exempt left out): "
          f"{fraction:.4f}, need {args.min_match}: {verdict}")
    sys.exit(0 if fraction >= args.min_match else 1)


if __name__ == "__main__":
    main()
