"""Prints the CPU benchmark's table from the --timings files of every side.

usage: bench_summary.py --title T --compile-seconds S --bar B --mrc T.json... --torch T.json...
                        [--onnxruntime T.json... --onnxruntime-bar B]
Each file is one process: {"seconds": [one per run], "peak_rss_mb": x}. The first run of each
process is warm-up and dropped; each side's time is the median of the remaining runs. mrc is
compared with each peer: the ratio of the medians against that peer's bar.
"""
import argparse
import json
import statistics


def side(paths):
    """(seconds of each run but each process's first, peak RSS MB)."""
    runs, rss = [], 0.0
    for path in paths:
        with open(path) as f:
            timings = json.load(f)
        runs += timings["seconds"][1:]
        rss = max(rss, timings["peak_rss_mb"])
    return runs, rss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--title", required=True)
    parser.add_argument("--compile-seconds", type=float, required=True)
    parser.add_argument("--bar", type=float, required=True)
    parser.add_argument("--mrc", nargs="+", required=True)
    parser.add_argument("--torch", nargs="+", required=True)
    parser.add_argument("--onnxruntime", nargs="+")
    parser.add_argument("--onnxruntime-bar", type=float, default=0.8)
    args = parser.parse_args()

    sides = [("mrc", args.mrc, None), ("torchvision", args.torch, args.bar)]
    if args.onnxruntime:
        sides.append(("ONNX Runtime", args.onnxruntime, args.onnxruntime_bar))
    measured = [(name, *side(paths), bar) for name, paths, bar in sides]
    medians = [statistics.median(runs) for _, runs, _, _ in measured]
    print(args.title)
    print(f"{'':24}" + "".join(f"{name:>14}" for name, *_ in measured))
    print(f"{'median seconds':24}" + "".join(f"{m:14.3f}" for m in medians))
    print(f"{'fastest-slowest':24}" + "".join(f"{f'{min(runs):.2f}-{max(runs):.2f}':>14}" for _, runs, _, _ in measured))
    print(f"{'runs (warm-up dropped)':24}" + "".join(f"{len(runs):14d}" for _, runs, _, _ in measured))
    print(f"{'peak RSS MB':24}" + "".join(f"{rss:14.0f}" for _, _, rss, _ in measured))
    mrc_rss = measured[0][2]
    for (name, _, rss, bar), median in zip(measured[1:], medians[1:]):
        ratio = medians[0] / median
        verdict = "met" if ratio <= bar else "NOT met"
        print(f"mrc / {name}: {ratio:.3f}; bar {bar}: {verdict}; peak RSS {mrc_rss:.0f} MB against {rss:.0f} MB")
    print(f"mrc compile seconds: {args.compile_seconds:.1f}")


if __name__ == "__main__":
    main()
