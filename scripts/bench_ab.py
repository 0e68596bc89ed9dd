#!/usr/bin/env python3
"""Engine A/B of several builds: the `workloads --serve` bench of each build, timed in the same
rotated rounds, so a change is compared with its baseline under the same machine conditions.

    scripts/bench_ab.py W_base W_new [W_other ...] [--workloads b32x128,b256x32] [--rounds 5] [--iters 2]

W_* are `workloads` bench binaries (`cargo bench --no-run --bench workloads` prints the path).
For each workload and each build after the first: the median ms of both, and the geometric mean
of the per-round ratios (build / first build) with a 95% bootstrap interval. Ratios, not
absolute times, are what carry across machines; run it with nothing else on the CPU.
"""
import argparse
import importlib.util
import os
import random
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_vs_python", os.path.join(HERE, "bench_vs_python.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", help="workloads bench binaries; the first is the baseline")
    ap.add_argument("--workloads", default="b1x16,b32x128,b256x32,b64x256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2, help="calls per build, workload and round")
    ap.add_argument("--mode", choices=["engine", "e2e"], default="engine")
    args = ap.parse_args()
    if len(args.binaries) < 2:
        ap.error("give at least two builds")
    names = args.workloads.split(",")
    procs = [bench.Ours(b) for b in args.binaries]
    try:
        for p in procs:  # warm-up, not recorded
            for n in names:
                p.run(args.mode, n, 1)
        k = len(procs)
        medians = {(i, n): [] for i in range(k) for n in names}
        ratios = {(i, n): [] for i in range(1, k) for n in names}
        for r in range(args.rounds):
            order = list(range(k)) if r % 2 == 0 else list(reversed(range(k)))
            for n in names:
                t = {}
                for i in order:
                    t[i] = statistics.median(procs[i].run(args.mode, n, args.iters))
                    medians[(i, n)].append(t[i])
                for i in range(1, k):
                    ratios[(i, n)].append(t[i] / t[0])
    finally:
        for p in procs:
            p.close()
    print(f"cpu: {bench.cpu_model()}; load average {os.getloadavg()}; {args.rounds} rounds x {args.iters} calls")
    base = os.path.basename(args.binaries[0])
    for n in names:
        for i in range(1, k):
            rs = ratios[(i, n)]
            boots = sorted(statistics.geometric_mean(random.choices(rs, k=len(rs))) for _ in range(2000))
            print(f"{n}: {base} {statistics.median(medians[(0, n)]):.2f} ms, "
                  f"{os.path.basename(args.binaries[i])} {statistics.median(medians[(i, n)]):.2f} ms, "
                  f"ratio {statistics.geometric_mean(rs):.3f} (95% CI {boots[50]:.3f}-{boots[1949]:.3f})")


if __name__ == "__main__":
    main()
