#!/usr/bin/env python3
"""sealserve's engine vs sentence-transformers and ONNX Runtime on the same model files, texts and
token ids.

Run through scripts/bench-vs-python, which makes the venv, fetches the model files and builds the
Rust side. Why this shape:
- Same inputs: the Rust bench (`benches/workloads.rs --emit`) writes the workloads; this script
  checks that sentence-transformers tokenizes every text to exactly the same ids before timing.
- Same cores: torch.set_num_threads(THREADS) and candle's pool (rayon, sized to the cores) both
  use the machine's cores; nothing else of ours runs while the other side is timed.
- Drift cancelled: rounds alternate which side goes first (ABBA), so a background build or
  thermal change hits both sides alike; medians over all iterations of all rounds.
- Two levels: "engine" = token ids -> pooled vectors (our Embedder::embed vs the
  SentenceTransformer module stack's forward under inference_mode, vs an ONNX Runtime session +
  mean pooling), "encode" = texts -> vectors (our tokenizer + embed vs
  `model.encode(texts, batch_size=B, convert_to_numpy=True)`, vs the fast tokenizer + session).
- ONNX Runtime as its users deploy MiniLM: the Hugging Face BertModel (eager attention, the
  pattern the fusions recognise) exported with torch.onnx.export, then
  onnxruntime.transformers.optimizer (model_type bert) fusing EmbedLayerNormalization,
  Attention, SkipLayerNormalization and BiasGelu (the fused-op counts are recorded; the run
  stops if Attention was not fused); intra-op threads = --threads. Its pooled vectors are
  checked against sentence-transformers' (cosine > 0.9999) before anything is timed.
- Every run records the CPU model, its flags, the date and the load average before, during
  (per round) and after, since the machine may be shared.
- Cold start: `serve` exec -> /ready (and -> first /embed answer) vs a fresh Python process:
  imports, SentenceTransformer(local_dir), first encode.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Iterations per round for each workload (both sides), sized so one round of all four takes
# seconds, not minutes, on two cores.
ITERS_PER_ROUND = {"b1x16": 20, "b32x128": 2, "b256x32": 2, "b64x256": 1}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_pins(model_dir, model_toml):
    """The Python side must load exactly the bytes `serve` embeds: model.toml's sha256 pins."""
    with open(model_toml, "rb") as f:
        pins = tomllib.load(f)["files"]
    for pin in pins:
        path = os.path.join(model_dir, pin["name"])
        digest = sha256(path)
        if digest != pin["sha256"]:
            sys.exit(f"{path}: sha256 {digest} != pinned {pin['sha256']}")
    return {p["name"]: p["sha256"] for p in pins}


def cpuinfo_field(name):
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model():
    return cpuinfo_field("model name") or platform.processor()


def cpu_flags():
    """The vector/matrix extensions that decide which kernels run (the full list is long)."""
    flags = (cpuinfo_field("flags") or "").split()
    keep = ("avx", "fma", "amx", "sse4", "f16c", "vnni")
    return [f for f in flags if f.startswith(keep) or f in ("avx2", "fma")]


class Ours:
    """The Rust workloads bench in --serve mode: one process, model loaded once."""

    def __init__(self, binary, max_forward_tokens=None):
        cmd = [binary, "--bench", "--serve"]
        if max_forward_tokens:
            cmd += ["--max-forward-tokens", str(max_forward_tokens)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = json.loads(self.proc.stdout.readline())

    def run(self, mode, name, iters):
        self.proc.stdin.write(f"{'embed' if mode == 'engine' else 'e2e'} {name} {iters}\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            sys.exit(f"workloads bench: {reply['error']}")
        return reply["times_ms"]

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)


class Theirs:
    def __init__(self, model_dir, workloads):
        import torch
        from sentence_transformers import SentenceTransformer

        self.torch = torch
        self.model = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
        self.model.eval()
        self.workloads = {w["name"]: w for w in workloads}
        self.features = {}
        for w in workloads:
            features = self.model.tokenize(w["texts"])
            ids = features["input_ids"].tolist()
            if ids != w["ids"]:
                bad = next(i for i, (a, b) in enumerate(zip(ids, w["ids"])) if a != b)
                sys.exit(f"{w['name']}: sentence-transformers tokenizes text {bad} differently")
            self.features[w["name"]] = features

    def run(self, mode, name, iters):
        torch = self.torch
        w = self.workloads[name]
        times = []
        for _ in range(iters):
            started = time.perf_counter()
            if mode == "engine":
                with torch.inference_mode():
                    out = self.model.forward(dict(self.features[name]))["sentence_embedding"]
                assert out.shape[0] == w["batch"]
            else:
                out = self.model.encode(w["texts"], batch_size=w["batch"], convert_to_numpy=True)
                assert out.shape[0] == w["batch"]
            times.append((time.perf_counter() - started) * 1000.0)
        return times


class Ort:
    """ONNX Runtime on the optimised export of the same model (see the module docs)."""

    def __init__(self, model_dir, workloads, cache_dir, threads):
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.np = np
        self.workloads = {w["name"]: w for w in workloads}
        path, self.fused = export_optimised(model_dir, cache_dir)
        if self.fused.get("Attention", 0) == 0:
            sys.exit(f"onnxruntime optimizer did not fuse Attention: {self.fused}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        # tokenizer.json pads every input to 128 (Fixed); like sentence-transformers, pad each
        # batch to its longest input instead and mask the padding.
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.enable_truncation(256)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.version = ort.__version__

    def pooled(self, ids, mask=None):
        np = self.np
        ids = np.asarray(ids, dtype=np.int64)
        mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64)
        hidden = self.session.run(None, {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
        })[0]
        summed = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return summed / np.linalg.norm(summed, axis=1, keepdims=True)

    def run(self, mode, name, iters):
        w = self.workloads[name]
        times = []
        for _ in range(iters):
            started = time.perf_counter()
            if mode == "engine":
                out = self.pooled(w["ids"])
            else:
                encoded = self.tokenizer.encode_batch(w["texts"])
                out = self.pooled([e.ids for e in encoded], [e.attention_mask for e in encoded])
            assert out.shape[0] == w["batch"]
            times.append((time.perf_counter() - started) * 1000.0)
        return times


def export_optimised(model_dir, cache_dir):
    """torch.onnx.export of the BertModel, then onnxruntime's transformer optimizer; cached."""
    import onnxruntime
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import AutoConfig, AutoModel

    tag = f"ort{onnxruntime.__version__}-torch{torch.__version__.split('+')[0]}"
    path = os.path.join(cache_dir, f"model-{tag}.opt.onnx")
    stats_path = path + ".json"
    if os.path.exists(path) and os.path.exists(stats_path):
        with open(stats_path) as f:
            return path, json.load(f)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.randint(1000, 2000, (2, 16))
    raw = os.path.join(cache_dir, f"model-{tag}.onnx")
    axes = {"b": 0, "s": 1}
    dynamic = {name: {v: k for k, v in axes.items()}
               for name in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")}
    with torch.inference_mode():
        torch.onnx.export(Hidden(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), raw,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], dynamic_axes=dynamic,
                          opset_version=17, dynamo=False)
    optimised = optimizer.optimize_model(raw, model_type="bert",
                                         num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size)
    stats = {k: v for k, v in optimised.get_fused_operator_statistics().items() if v}
    optimised.save_model_to_file(path)
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    return path, stats


def compare(sides, workloads, rounds, modes):
    """Rounds over every side; the order rotates and reverses between rounds, so drift and
    background load hit every side alike."""
    names = list(sides)
    samples = {(m, w["name"], side): [] for m in modes for w in workloads for side in names}
    for mode in modes:  # warm-up: first touch of every shape on every side
        for w in workloads:
            for impl in sides.values():
                impl.run(mode, w["name"], 1)
    round_loads = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        for mode in modes:
            for w in workloads:
                iters = ITERS_PER_ROUND.get(w["name"], 1)
                for side in order:
                    samples[(mode, w["name"], side)] += sides[side].run(mode, w["name"], iters)
        round_loads.append(os.getloadavg()[0])
        print(f"  round {r + 1}/{rounds} done (load {round_loads[-1]:.2f})", file=sys.stderr, flush=True)
    rows = []
    for mode in modes:
        for w in workloads:
            tokens = w["batch"] * w["tokens"]
            row = {"mode": mode, "workload": w["name"],
                   "iters_each": len(samples[(mode, w["name"], names[0])])}
            for side in names:
                times = samples[(mode, w["name"], side)]
                row[f"{side}_median_ms"] = statistics.median(times)
                row[f"{side}_min_ms"] = min(times)
                row[f"{side}_tokens_per_s"] = tokens / statistics.median(times) * 1000.0
            peers = [side for side in names if side not in ("ours", "baseline")]
            best = min(peers, key=lambda side: row[f"{side}_median_ms"])
            row["best_peer"] = best
            row["speedup_vs_best_peer"] = row[f"{best}_median_ms"] / row["ours_median_ms"]
            for side in peers:
                row[f"speedup_vs_{side}"] = row[f"{side}_median_ms"] / row["ours_median_ms"]
            if "baseline" in names:
                row["time_ratio_ours_over_baseline"] = row["ours_median_ms"] / row["baseline_median_ms"]
            rows.append(row)
    return rows, round_loads


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, body=None, timeout=5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def serve_cold_start(serve, harden, runs):
    """exec -> /ready 200 and exec -> first /embed answer, plus serve's own `ready startup_ms=`."""
    results = []
    for i in range(runs + 1):  # the first run warms the page cache and is not counted
        port = free_port()
        cmd = [serve, "--host", "127.0.0.1", "--port", str(port), "--harden", harden, "--device", "cpu"]
        log = tempfile.TemporaryFile()
        started = time.perf_counter()
        # The benched build is dev-signed (no release key to pin): the waiver only adds a warning.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                env={**os.environ, "SEALSERVE_ALLOW_UNPINNED": "1"})
        ready_at = None
        while time.perf_counter() - started < 60:
            try:
                status, _ = http(f"http://127.0.0.1:{port}/ready", timeout=2)
                if status == 200:
                    ready_at = time.perf_counter()
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.002)
        if ready_at is None:
            proc.kill()
            log.seek(0)
            sys.exit(f"serve did not become ready: {log.read().decode(errors='replace')[-2000:]}")
        http(f"http://127.0.0.1:{port}/embed", {"inputs": "first request after start"})
        embedded_at = time.perf_counter()
        proc.terminate()
        proc.wait(timeout=30)
        log.seek(0)
        # tracing's text format colours field names; strip the escapes before parsing.
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read().decode(errors="replace"))
        startup_ms = None
        for line in text.splitlines():
            if "startup_ms=" in line and "ready" in line:
                startup_ms = int(line.split("startup_ms=", 1)[1].split()[0].strip(",}"))
        if i > 0:
            results.append({
                "exec_to_ready_ms": (ready_at - started) * 1000.0,
                "exec_to_first_embed_ms": (embedded_at - started) * 1000.0,
                "logged_startup_ms": startup_ms,
            })
    return results


PY_COLD = r"""
import os, sys, time, json
t0 = time.perf_counter()
os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["TRANSFORMERS_OFFLINE"] = "1"
import torch
torch.set_num_threads(int(sys.argv[2]))
from sentence_transformers import SentenceTransformer
t1 = time.perf_counter()
m = SentenceTransformer(sys.argv[1], device="cpu", local_files_only=True)
t2 = time.perf_counter()
m.encode(["first request after start"], convert_to_numpy=True)
t3 = time.perf_counter()
print(json.dumps({"import_ms": (t1-t0)*1e3, "load_ms": (t2-t1)*1e3, "first_encode_ms": (t3-t2)*1e3}))
sys.stdout.flush()
"""


def python_cold_start(model_dir, threads, runs):
    results = []
    for i in range(runs + 1):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PY_COLD, model_dir, str(threads)],
                             capture_output=True, text=True, check=True)
        # The child prints after its first encode; process exit is excluded.
        ended = time.perf_counter()
        inner = json.loads(out.stdout.strip().splitlines()[-1])
        if i > 0:
            inner["exec_to_first_embed_ms"] = (ended - started) * 1000.0
            inner["load_plus_first_encode_ms"] = inner["load_ms"] + inner["first_encode_ms"]
            results.append(inner)
    return results


def git_commit():
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def check_ort_matches(ort_side, theirs, workloads):
    """The ONNX export must compute what sentence-transformers computes before it is timed."""
    import numpy as np
    torch = theirs.torch
    for w in workloads:
        with torch.inference_mode():
            ref = theirs.model.forward(dict(theirs.features[w["name"]]))["sentence_embedding"].numpy()
        got = ort_side.pooled(w["ids"])
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        cos = float((got * ref).sum(axis=1).min())
        if cos < 0.9999:
            sys.exit(f"{w['name']}: ONNX Runtime vectors differ from sentence-transformers (cos {cos})")
        # Texts too: its own tokenizer, batch padding and mask against model.encode.
        ref = theirs.model.encode(w["texts"], batch_size=w["batch"], convert_to_numpy=True)
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        encoded = ort_side.tokenizer.encode_batch(w["texts"])
        got = ort_side.pooled([e.ids for e in encoded], [e.attention_mask for e in encoded])
        cos = float((got * ref).sum(axis=1).min())
        if cos < 0.9999:
            sys.exit(f"{w['name']}: ONNX Runtime text vectors differ from model.encode (cos {cos})")


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


PEER_TITLES = {"theirs": "sentence-transformers", "ort": "ONNX Runtime"}
BASELINE_TITLE = "baseline build"


def print_throughput(rows, rounds, env):
    """The throughput comparison as a markdown table."""
    peers = [p for p in PEER_TITLES if rows and f"{p}_median_ms" in rows[0]]
    print(f"\nThroughput, CPU f32, {rounds} interleaved rounds (rotating order), medians; "
          f"torch threads {env['torch_num_threads']}, ORT intra-op threads {env.get('ort_threads')}, "
          f"our compute threads {env['ours_compute_threads']}, our forward budget "
          f"{env['ours_max_forward_tokens']} tokens; load per round {env.get('round_loads')}")
    base = bool(rows) and "baseline_median_ms" in rows[0]
    head = " | ".join(f"{PEER_TITLES[p]} ms" for p in peers)
    extra_head = f" {BASELINE_TITLE} ms | ours/baseline (time) |" if base else ""
    print(f"| level | workload | iters each | sealserve ms | {head} | speed-up vs the faster peer |{extra_head}")
    print("|---|---|---:|---:|" + "---:|" * len(peers) + "---:|" + ("---:|---:|" if base else ""))
    for r in rows:
        cells = " | ".join(f"{r[f'{p}_median_ms']:.2f}" for p in peers)
        extra = f" {r['baseline_median_ms']:.2f} | {r['time_ratio_ours_over_baseline']:.3f} |" if base else ""
        print(f"| {r['mode']} | {r['workload']} | {r['iters_each']} | {r['ours_median_ms']:.2f} | {cells} | "
              f"**{r['speedup_vs_best_peer']:.2f}×** (vs {PEER_TITLES[r['best_peer']]}) |{extra}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads-bin", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--model-toml", default="models/all-MiniLM-L6-v2/model.toml")
    ap.add_argument("--serve", help="release serve binary, for the cold-start comparison")
    ap.add_argument("--baseline-workloads-bin",
                    help="the workloads bench of another build (e.g. the previous commit), timed in the same rounds")
    ap.add_argument("--baseline-serve", help="that build's release serve, for the cold start")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--modes", default="engine,encode")
    ap.add_argument("--max-forward-tokens", type=int)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--peers", default="theirs,ort",
                    help="comparison sides: theirs (sentence-transformers), ort (ONNX Runtime)")
    ap.add_argument("--cache-dir", help="where the optimised ONNX export is kept between runs "
                    "(default: next to --model-dir)")
    args = ap.parse_args()

    pins = check_pins(args.model_dir, args.model_toml)

    import numpy
    import sentence_transformers
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    env = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "commit": git_commit(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__, "numpy": numpy.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "model_sha256": pins,
    }
    print(json.dumps(env, indent=1), file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "workloads.json")
        subprocess.run([args.workloads_bin, "--emit", path], check=True)
        with open(path) as f:
            workloads = json.load(f)["workloads"]

    rows = []
    if args.rounds > 0:  # --rounds 0: cold start only
        peers = args.peers.split(",")
        sides = {}
        if "theirs" in peers:
            sides["theirs"] = Theirs(args.model_dir, workloads)
        if "ort" in peers:
            cache_dir = args.cache_dir or os.path.join(os.path.dirname(os.path.abspath(args.model_dir)), "onnx")
            os.makedirs(cache_dir, exist_ok=True)
            ort_side = Ort(args.model_dir, workloads, cache_dir, args.threads)
            env["onnxruntime"] = ort_side.version
            env["ort_fused_ops"] = ort_side.fused
            env["ort_threads"] = args.threads
            if "theirs" in sides:
                check_ort_matches(ort_side, sides["theirs"], workloads)
            sides["ort"] = ort_side
        ours = Ours(args.workloads_bin, args.max_forward_tokens)
        baseline = (Ours(args.baseline_workloads_bin, args.max_forward_tokens)
                    if args.baseline_workloads_bin else None)
        sides = {"ours": ours, **sides, **({"baseline": baseline} if baseline else {})}
        env["ours_compute_threads"] = ours.hello["compute_threads"]
        env["ours_max_forward_tokens"] = ours.hello["max_forward_tokens"]
        env["ours_kernels"] = ours.hello.get("kernels")
        try:
            rows, env["round_loads"] = compare(sides, workloads, args.rounds, args.modes.split(","))
        finally:
            ours.close()
            if baseline:
                baseline.close()
    env["loadavg_end"] = os.getloadavg()

    if rows:
        print_throughput(rows, args.rounds, env)

    cold = {}
    if not args.skip_cold:
        if args.serve:
            for harden in ("off", "strict"):
                cold[f"serve_harden_{harden}"] = serve_cold_start(args.serve, harden, args.cold_runs)
                if args.baseline_serve:
                    cold[f"baseline_harden_{harden}"] = serve_cold_start(args.baseline_serve, harden, args.cold_runs)
        cold["python"] = python_cold_start(args.model_dir, args.threads, args.cold_runs)
        print(f"\nCold start, median of {args.cold_runs} runs (page cache warm; one discarded run before)")
        print("| implementation | exec → ready ms | exec → first embedding ms | in-process ms |")
        print("|---|---:|---:|---:|")
        for harden in ("off", "strict"):
            runs = cold.get(f"serve_harden_{harden}")
            if runs:
                print(f"| serve --harden {harden} | {med(runs, 'exec_to_ready_ms'):.1f} | "
                      f"{med(runs, 'exec_to_first_embed_ms'):.1f} | startup_ms={med(runs, 'logged_startup_ms')} |")
            runs = cold.get(f"baseline_harden_{harden}")
            if runs:
                print(f"| baseline serve --harden {harden} | {med(runs, 'exec_to_ready_ms'):.1f} | "
                      f"{med(runs, 'exec_to_first_embed_ms'):.1f} | startup_ms={med(runs, 'logged_startup_ms')} |")
        py = cold["python"]
        print(f"| python: import {med(py, 'import_ms'):.0f} ms + SentenceTransformer() {med(py, 'load_ms'):.0f} ms "
              f"+ first encode {med(py, 'first_encode_ms'):.0f} ms | — | {med(py, 'exec_to_first_embed_ms'):.1f} | "
              f"load+first encode {med(py, 'load_plus_first_encode_ms'):.1f} |")

    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "throughput": rows, "cold_start": cold}, f, indent=1)
    print(f"\nenvironment: {json.dumps(env)}")


if __name__ == "__main__":
    main()
