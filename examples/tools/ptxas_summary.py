"""Summarizes `ptxas -v` output: registers, spills and shared memory per kernel.

usage: ptxas -v -arch=sm_90 kernels.ptx -o /dev/null 2>&1 | ptxas_summary.py
"""
import re
import statistics
import sys


def main():
    kernels, current = {}, None
    for line in sys.stdin:
        if m := re.search(r"Compiling entry function '([^']+)'", line):
            current = kernels.setdefault(m.group(1), {"registers": 0, "shared": 0, "spills": 0})
        elif current is not None and (m := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current["shared"] = int(s.group(1))
        elif current is not None and (m := re.search(r"(\d+) bytes spill stores", line)):
            current["spills"] = int(m.group(1))
    if not kernels:
        sys.exit("no kernels in the input")
    registers = [k["registers"] for k in kernels.values()]
    shared = [k["shared"] for k in kernels.values()]
    print(f"kernels: {len(kernels)}")
    print(f"registers per thread: min {min(registers)}, median {statistics.median(registers):.0f}, max {max(registers)}")
    print(f"shared memory per block: max {max(shared)} bytes; kernels spilling: {sum(k['spills'] > 0 for k in kernels.values())}")


if __name__ == "__main__":
    main()
