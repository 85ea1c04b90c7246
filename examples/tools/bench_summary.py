"""Prints the CPU benchmark's table from the --timings files of both sides.

usage: bench_summary.py --title T --compile-seconds S --bar B --mrc T.json... --torch T.json...
Each file is one process: {"seconds": [one per run], "peak_rss_mb": x}. The first run of each
process is warm-up and dropped; each side's time is the median of the remaining runs.
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
    args = parser.parse_args()

    (mrc, mrc_rss), (torch, torch_rss) = side(args.mrc), side(args.torch)
    mrc_s, torch_s = statistics.median(mrc), statistics.median(torch)
    ratio = mrc_s / torch_s
    print(args.title)
    print(f"{'':24}{'mrc':>12}{'torchvision':>14}")
    print(f"{'median seconds':24}{mrc_s:12.3f}{torch_s:14.3f}")
    spread = [f"{min(runs):.2f}-{max(runs):.2f}" for runs in (mrc, torch)]
    print(f"{'fastest-slowest':24}{spread[0]:>12}{spread[1]:>14}")
    print(f"{'runs (warm-up dropped)':24}{len(mrc):12d}{len(torch):14d}")
    print(f"{'peak RSS MB':24}{mrc_rss:12.0f}{torch_rss:14.0f}")
    verdict = "met" if ratio <= args.bar else "NOT met"
    print(f"mrc / torchvision: {ratio:.3f}; bar {args.bar}: {verdict}")
    print(f"mrc compile seconds: {args.compile_seconds:.1f}")


if __name__ == "__main__":
    main()
