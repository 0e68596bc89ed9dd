#!/usr/bin/env python3
"""Paired A/B of generation builds: the `generate` bench of each build (or of one build under
different environments), timed in the same alternating rounds, so a change is compared with its
baseline under the same machine conditions. This is how benches/RESULTS.md's "paired rounds"
are taken: a shared VM's memory bandwidth moves by 1.5x within minutes, so only per-round
quotients compare.

    scripts/bench_generate_ab.py [--rounds 10] [--streams 8] [--decode 64] [--threads 2] SPEC SPEC...

SPEC is a bench executable (`cargo bench --locked --no-run --bench generate` prints it; copy it
out before building the other variant), optionally preceded by environment settings for it:
`SEALSERVE_LLM_ISA=avx512:target/release/deps/generate-…` runs that binary with the variable
set. The first SPEC is the baseline. Per round, each SPEC runs once (the order reversed every
other round) at the model level with 1 and --streams streams. Prints each round, then one JSON
object per SPEC: the medians of its decode and prefill rates, of its streams ÷ 1 quotient, and,
for the others, of its per-round quotients against the baseline."""
import argparse
import json
import os
import statistics
import subprocess


def parse(spec):
    """`A=1,B=2:path` → ({"A": "1", "B": "2"}, "path"); a bare path has no settings."""
    if ":" not in spec or "=" not in spec.split(":", 1)[0]:
        return {}, spec
    settings, path = spec.split(":", 1)
    env = {}
    for pair in settings.split(","):
        key, value = pair.split("=", 1)
        env[key] = value
    return env, path


def run(spec, args):
    extra, path = parse(spec)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), BENCH_LEVELS="model",
               BENCH_STREAMS=str(args.streams), BENCH_DECODE_TOKENS=str(args.decode), **extra)
    done = subprocess.run([path, "--bench"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{spec} failed with exit code {done.returncode}: {last}")
    rates = {}
    for line in done.stdout.splitlines():
        if line.startswith("{") and '"decode_tok_s"' in line:
            m = json.loads(line)
            rates[m["streams"]] = (m["decode_tok_s"], m["prefill_tok_s"])
    if 1 not in rates or args.streams not in rates:
        raise SystemExit(f"{spec} printed no rates for 1 and {args.streams} streams")
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", help="bench executables, [ENV=VALUE,...:]path; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--decode", type=int, default=64, help="tokens generated per stream")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.streams < 2:
        ap.error("--streams must be at least 2 (one stream is always measured)")
    for spec in args.specs:
        path = parse(spec)[1]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            ap.error(f"{path} is not an executable (build it with cargo bench --locked --no-run --bench generate)")
    results = {spec: [] for spec in args.specs}
    for r in range(args.rounds):
        order = args.specs if r % 2 == 0 else args.specs[::-1]
        for spec in order:
            results[spec].append(run(spec, args))
        print(json.dumps({"round": r, "decode_tok_s": {
            spec: {"1": results[spec][-1][1][0], str(args.streams): results[spec][-1][args.streams][0]}
            for spec in args.specs}}), flush=True)
    base = results[args.specs[0]]
    n = args.streams
    for spec in args.specs:
        rounds = results[spec]
        out = {
            "spec": spec,
            "rounds": args.rounds,
            "streams": n,
            "decode_tok_s_1": statistics.median(x[1][0] for x in rounds),
            f"decode_tok_s_{n}": statistics.median(x[n][0] for x in rounds),
            "prefill_tok_s_1": statistics.median(x[1][1] for x in rounds),
            f"{n}_over_1": statistics.median(x[n][0] / x[1][0] for x in rounds),
        }
        if spec != args.specs[0]:
            out["over_baseline"] = {
                "decode_1": statistics.median(x[1][0] / b[1][0] for x, b in zip(rounds, base)),
                f"decode_{n}": statistics.median(x[n][0] / b[n][0] for x, b in zip(rounds, base)),
                "prefill_1": statistics.median(x[1][1] / b[1][1] for x, b in zip(rounds, base)),
            }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
