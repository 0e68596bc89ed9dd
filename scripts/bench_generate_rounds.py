#!/usr/bin/env python3
"""Alternating rounds of sealserve's generation bench and llama.cpp's (scripts/bench-generate
with ROUNDS > 1): per round one process of each, the order swapped every round, so that both see
the same machine. A shared VM's memory bandwidth moves by 1.5x within minutes, so absolute rates
from different minutes do not compare; the quotients are taken per round, then their median.

Usage: bench_generate_rounds.py ROUNDS BENCH_BINARY PYTHON GGUF THREADS PROMPT DECODE STREAMS
BENCH_BINARY is `cargo bench --no-run --bench generate`'s executable; PYTHON has llama-cpp-python.
SEALSERVE_LLM_ISA, if set, reaches the sealserve process (e.g. avx2). Prints each round, then the
medians (per-round range) of each engine's rates and of the quotients, as one JSON object."""
import json
import os
import statistics
import subprocess
import sys

if len(sys.argv) != 9:
    raise SystemExit(__doc__)
ROUNDS, BIN, PY, GGUF = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
THREADS, PROMPT, DECODE, STREAMS = sys.argv[5:9]
LLAMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_llama_cpp.py")


def lines(cmd, env=None):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        hint = " (is llama-cpp-python installed in PYTHON?)" if cmd[0] == PY else ""
        raise SystemExit(f"{' '.join(cmd[:2])} failed with exit code {done.returncode}: {last}{hint}")
    out = done.stdout
    by_streams = {}
    for line in out.splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            if "decode_tok_s" in j:
                by_streams[j["streams"]] = j
    if set(by_streams) != {1, int(STREAMS)}:
        raise SystemExit(f"{cmd[0]}: expected results for 1 and {STREAMS} streams, got {sorted(by_streams)}")
    return by_streams


def sealserve():
    env = dict(os.environ, RAYON_NUM_THREADS=THREADS, BENCH_LEVELS="model",
               BENCH_PROMPT_TOKENS=PROMPT, BENCH_DECODE_TOKENS=DECODE, BENCH_STREAMS=STREAMS)
    env.pop("BENCH_ONLY_STREAMS", None)
    return lines([BIN, "--bench"], env)


def llama_cpp():
    return lines([PY, LLAMA, GGUF, THREADS, PROMPT, DECODE, STREAMS])


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


n = int(STREAMS)
rounds = []
for r in range(ROUNDS):
    order = [("sealserve", sealserve), ("llama.cpp", llama_cpp)]
    if r % 2:
        order.reverse()
    got = {name: run() for name, run in order}
    rounds.append(got)
    s, l = got["sealserve"], got["llama.cpp"]
    print(json.dumps({"round": r, "first": order[0][0],
                      "sealserve": {k: s[k]["decode_tok_s"] for k in (1, n)},
                      "llama.cpp": {k: l[k]["decode_tok_s"] for k in (1, n)}}), flush=True)

result = {"rounds": ROUNDS, "threads": int(THREADS), "streams": n,
          "isa": os.environ.get("SEALSERVE_LLM_ISA", "best")}
for name in ("sealserve", "llama.cpp"):
    one = [g[name][1]["decode_tok_s"] for g in rounds]
    many = [g[name][n]["decode_tok_s"] for g in rounds]
    ratio = [b / a for a, b in zip(one, many)]
    result[name] = {
        "decode_tok_s_1": summary(one),
        f"decode_tok_s_{n}": summary(many),
        f"{n}_over_1": summary(ratio),
        f"rounds_{n}_over_1_at_least_4": sum(x >= 4 for x in ratio),
        "prefill_tok_s_1": statistics.median(g[name][1]["prefill_tok_s"] for g in rounds),
        "ttft_s_1": statistics.median(g[name][1]["ttft_s"] for g in rounds),
    }


def over_llama_cpp(streams, field):
    """sealserve's figure divided by llama.cpp's, per round."""
    return [g["sealserve"][streams][field] / g["llama.cpp"][streams][field] for g in rounds]


one_stream = over_llama_cpp(1, "decode_tok_s")
result["sealserve_over_llama_cpp_prefill_1"] = summary(over_llama_cpp(1, "prefill_tok_s"))
result["sealserve_over_llama_cpp_decode_1"] = summary(one_stream)
result["rounds_one_stream_at_least_llama_cpp"] = sum(x >= 1 for x in one_stream)
result[f"sealserve_over_llama_cpp_decode_{n}"] = summary(over_llama_cpp(n, "decode_tok_s"))
print(json.dumps({"summary": result}))
