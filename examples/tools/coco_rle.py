"""COCO compressed RLE in numpy, as pycocotools writes it (rleEncode + rleToString, rleFrString).

Counts are runs over the mask in column-major order, starting with a run of zeros. In the string,
count i (for i > 2, minus count i - 2) is written as a signed number in 5-bit groups, low first,
each char = group + 48, with 0x20 set on all but the last group.
"""
import json
import resource

import numpy as np


def encode(mask):
    """mask: [H, W] bool -> {"size": [H, W], "counts": str}."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [int(h), int(w)], "counts": counts_to_string(counts)}


def counts_to_string(counts):
    chars = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            group = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not group & 0x10) or (x == -1 and group & 0x10))
            chars.append(chr(group + 48 + (0x20 if more else 0)))
    return "".join(chars)


def string_to_counts(s):
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode(rle):
    """{"size": [H, W], "counts": str} -> [H, W] bool."""
    h, w = rle["size"]
    counts = string_to_counts(rle["counts"])
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, size is {h}x{w}")
    return flat.reshape((w, h)).T


def detections(image_id, boxes, labels, scores, masks):
    """COCO results entries of one image: boxes [K, 4] as x1, y1, x2, y2, masks [K, H, W] bool."""
    return [{
        "image_id": image_id,
        "category_id": int(label),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": float(score),
        "segmentation": encode(mask),
    } for (x1, y1, x2, y2), label, score, mask in zip(boxes, labels, scores, masks)]


def write_results(json_path, results, timings_path, seconds):
    """The results JSON, and the timings file with the process's peak RSS when asked for."""
    with open(json_path, "w") as f:
        json.dump(results, f)
    if timings_path:
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(timings_path, "w") as f:
            json.dump({"seconds": seconds, "peak_rss_mb": peak_rss_mb}, f)
