#!/usr/bin/env python3
"""GPU acceptance check of the CUDA `serve` binary; driven by scripts/gpu-check.

Standard library only for everything that talks to `serve`; torch + transformers (the lent GPU
machines have them in /opt/torch/.venv) only for the PyTorch baseline, which is skipped when
they are missing. Steps:

  a. serve --verify-only --allow-unpinned (empty environment; a local build is dev-signed)
  b. golden embeddings on the GPU in f16 and f32 (scripts/gpu-golden.json, derived from
     tests/data/reference/minilm_golden.json): f16 min cosine >= 0.9995, f32 max |diff| <= 1e-3
  c. every route once or twice (/embed, /v1/embeddings, /tokenize, /model, /info shows
     device cuda + hardening strict, /metrics, /health, /ready, /openapi.json)
  d. latency of four workloads (batch x tokens) through HTTP, median of N runs, and PyTorch
     f16 eager (same model files, exported from the binary with `seal export`, same token ids)

Writes OUT/gpu-check.json and OUT/serve-<dtype>.log; the caller tees stdout to gpu-check.log.
Exit status: 0 when every check passed, 1 otherwise (timings never fail the run).
"""

import argparse
import http.client
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = [(1, 16), (32, 128), (256, 32), (64, 256)]  # (batch, tokens per input incl. CLS/SEP)
F16_MIN_COSINE = 0.9995
F32_MAX_ABS = 1e-3
REFERENCE_TOLERANCE = 1e-4  # the CPU reference's own suggestion, reported for information

T0 = time.monotonic()


def log(message):
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


class Checks:
    def __init__(self):
        self.items = []

    def add(self, name, ok, detail=""):
        self.items.append({"name": name, "ok": bool(ok), "detail": detail})
        log(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        return ok

    @property
    def failed(self):
        return [c for c in self.items if not c["ok"]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive HTTP/1.1 connection, as a real client would hold."""

    def __init__(self, port, timeout=120):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                data = None if body is None else json.dumps(body).encode()
                headers = {"Content-Type": "application/json"} if data is not None else {}
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, body=None):
        status, headers, payload = self.request(method, path, body)
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return status, headers, parsed

    def close(self):
        if self.conn is not None:
            self.conn.close()


class Server:
    def __init__(self, binary, args, env, log_path):
        self.port = free_port()
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, *args, "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )
        self.ready_s = None

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    self.ready_s = time.monotonic() - self.started
                    conn.close()
                    return True
                conn.close()
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def tail(self, lines=15):
        self.log_file.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode


def compare(got, want):
    dot = sum(a * b for a, b in zip(got, want))
    na = math.sqrt(sum(a * a for a in got))
    nb = math.sqrt(sum(b * b for b in want))
    cosine = dot / (na * nb) if na and nb else float("nan")
    max_abs = max(abs(a - b) for a, b in zip(got, want))
    return cosine, max_abs


def golden_check(client, golden, dtype, checks):
    inputs = golden["inputs"]
    texts = [i["text"] for i in inputs]
    results = []
    status, _, body = client.json("POST", "/embed", {"inputs": texts, "truncate": True})
    batch_ok = status == 200 and isinstance(body, list) and len(body) == len(texts)
    checks.add(f"golden {dtype}: one batched /embed of {len(texts)} inputs", batch_ok,
               "" if batch_ok else f"status {status}: {str(body)[:300]}")
    for n, item in enumerate(inputs):
        if batch_ok:
            vector = body[n]
        else:
            s, _, b = client.json("POST", "/embed", {"inputs": item["text"], "truncate": True})
            if s != 200:
                results.append({"index": item["index"], "error": f"{s}: {str(b)[:200]}"})
                continue
            vector = b[0]
        if len(vector) != len(item["embedding"]):
            results.append({"index": item["index"], "error": f"dimension {len(vector)}"})
            continue
        cosine, max_abs = compare(vector, item["embedding"])
        results.append({"index": item["index"], "num_tokens": item["num_tokens"],
                        "cosine": cosine, "max_abs": max_abs})
    scored = [r for r in results if "cosine" in r]
    errors = [r for r in results if "error" in r]
    summary = {
        "inputs": len(inputs),
        "errors": errors,
        "min_cosine": min((r["cosine"] for r in scored), default=float("nan")),
        "max_abs": max((r["max_abs"] for r in scored), default=float("nan")),
        "per_input": results,
    }
    summary["within_reference_tolerance_1e-4"] = summary["max_abs"] <= REFERENCE_TOLERANCE
    detail = (f"min cosine {summary['min_cosine']:.7f}, max |diff| {summary['max_abs']:.2e} "
              f"over {len(scored)} inputs")
    if errors:
        detail += f", {len(errors)} errors: {errors}"
    if dtype == "f16":
        ok = not errors and summary["min_cosine"] >= F16_MIN_COSINE
        checks.add(f"golden f16: min cosine >= {F16_MIN_COSINE}", ok, detail)
    else:
        ok = not errors and summary["max_abs"] <= F32_MAX_ABS
        checks.add(f"golden f32: max |diff| <= {F32_MAX_ABS}", ok,
                   detail + f" (<= 1e-4: {summary['within_reference_tolerance_1e-4']})")
    return summary


def route_checks(client, device, dtype, checks):
    info = {}
    s, _, b = client.json("GET", "/health")
    checks.add("GET /health", s == 200, f"{s} {b}")
    s, _, b = client.json("GET", "/ready")
    checks.add("GET /ready", s == 200, f"{s} {b}")
    s, h, b = client.json("POST", "/embed", {"inputs": "Hello world"})
    checks.add("POST /embed (string)", s == 200 and len(b) == 1 and len(b[0]) == 384,
               f"{s}, x-inference-time {h.get('x-inference-time')} ms")
    s, _, b = client.json("POST", "/embed", {"inputs": ["a", "b c", "d e f"], "normalize": False})
    checks.add("POST /embed (3 inputs, normalize false)",
               s == 200 and len(b) == 3 and abs(math.sqrt(sum(x * x for x in b[0])) - 1) > 1e-3,
               f"{s}")
    s, _, b = client.json("POST", "/v1/embeddings", {"input": ["Hello world", "second"], "model": "x"})
    ok = (s == 200 and isinstance(b, dict) and len(b.get("data", [])) == 2
          and len(b["data"][0]["embedding"]) == 384 and b.get("usage", {}).get("prompt_tokens", 0) > 0)
    checks.add("POST /v1/embeddings", ok, f"{s} usage={b.get('usage') if isinstance(b, dict) else b}")
    s, _, b = client.json("POST", "/tokenize", {"inputs": "Hello world"})
    ids = [t.get("id") for t in b[0]] if s == 200 and b else None
    checks.add("POST /tokenize", ids == [101, 7592, 2088, 102], f"{s} ids={ids}")
    s, _, b = client.json("POST", "/model", {"request": {"inputs": ["Hello world"]}})
    ok = (s == 200 and isinstance(b, dict) and b.get("success") is True
          and len(b["response"]["embeddings"][0]) == 384)
    checks.add("POST /model (CML)", ok, f"{s}")
    s, _, b = client.json("GET", "/info")
    if s == 200 and isinstance(b, dict):
        info = b
    hardening = (info.get("hardening") or {})
    checks.add(f"GET /info: device {device}, dtype {dtype}, hardening strict",
               info.get("device") == device and info.get("dtype") == dtype
               and hardening.get("level") == "strict",
               f"device={info.get('device')} dtype={info.get('dtype')} hardening={hardening}")
    log(f"device_reason: {info.get('device_reason')}")
    status, _, payload = client.request("GET", "/metrics")
    text = payload.decode(errors="replace")
    checks.add("GET /metrics", status == 200 and "sealserve_requests_total" in text
               and "sealserve_inference_seconds" in text, f"{status}, {len(text)} bytes")
    s, _, b = client.json("GET", "/openapi.json")
    checks.add("GET /openapi.json", s == 200 and isinstance(b, dict) and "paths" in b, f"{s}")
    s, _, b = client.json("POST", "/embed", {"inputs": []})
    checks.add("POST /embed (empty list) is refused with 4xx", 400 <= s < 500, f"{s}")
    return info


def workload_text(client, tokens):
    """'hello hello ...' with exactly `tokens` tokens including [CLS] and [SEP]."""
    text = " ".join(["hello"] * (tokens - 2))
    s, _, b = client.json("POST", "/tokenize", {"inputs": text, "truncate": False})
    if s != 200:
        raise RuntimeError(f"/tokenize failed: {s} {b}")
    ids = [t["id"] for t in b[0]]
    if len(ids) != tokens:
        raise RuntimeError(f"'hello' x {tokens - 2} gives {len(ids)} tokens, not {tokens}")
    return text, ids


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_serve(client, runs, warmup):
    results = {}
    ids_by_tokens = {}
    for batch, tokens in WORKLOADS:
        text, ids = workload_text(client, tokens)
        ids_by_tokens[tokens] = ids
        body = {"inputs": [text] * batch, "truncate": False}
        wall, inference = [], []
        for i in range(warmup + runs):
            t = time.perf_counter()
            s, h, payload = client.request("POST", "/embed", body)
            elapsed = (time.perf_counter() - t) * 1000
            if s != 200:
                raise RuntimeError(f"/embed b{batch}x{tokens}: {s} {payload[:200]!r}")
            if i >= warmup:
                wall.append(elapsed)
                if "x-inference-time" in h:
                    inference.append(float(h["x-inference-time"]))
        key = f"b{batch}x{tokens}"
        results[key] = {
            "batch": batch, "tokens": tokens, "runs": runs,
            "http_ms_median": statistics.median(wall),
            "http_ms_p90": percentile(wall, 0.9),
            "inference_ms_median": statistics.median(inference) if inference else None,
        }
        r = results[key]
        log(f"serve {key}: HTTP median {r['http_ms_median']:.2f} ms (p90 {r['http_ms_p90']:.2f}), "
            f"engine {r['inference_ms_median']} ms")
    return results, ids_by_tokens


def torch_baseline(model_dir, ids_by_tokens, golden, runs, warmup):
    try:
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer
    except Exception as e:  # noqa: BLE001 - any import problem means: no baseline
        return {"skipped": f"torch/transformers not importable: {e}"}
    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name(0)}
    try:
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float16)
    except TypeError:
        model = AutoModel.from_pretrained(model_dir, torch_dtype=torch.float16)
    model = model.to("cuda").eval()
    out["attn_implementation"] = getattr(model.config, "_attn_implementation", None)

    def embed(input_ids, mask):
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    with torch.inference_mode():
        # Sanity: the exported files give the golden vectors in f16 too.
        try:
            tok = AutoTokenizer.from_pretrained(model_dir)
            worst = 1.0
            for item in golden["inputs"]:
                enc = tok(item["text"], truncation=True, max_length=256, return_tensors="pt").to("cuda")
                vec = embed(enc["input_ids"], enc["attention_mask"])[0].tolist()
                worst = min(worst, compare(vec, item["embedding"])[0])
            out["golden_f16_min_cosine"] = worst
            log(f"torch f16 golden min cosine {worst:.7f}")
        except Exception as e:  # noqa: BLE001
            out["golden_f16_min_cosine"] = f"skipped: {e}"
        timings = {}
        for batch, tokens in WORKLOADS:
            ids = torch.tensor([ids_by_tokens[tokens]] * batch, device="cuda")
            mask = torch.ones_like(ids)
            samples = []
            for i in range(warmup + runs):
                torch.cuda.synchronize()
                t = time.perf_counter()
                embed(ids, mask).cpu()
                samples.append((time.perf_counter() - t) * 1000)
            samples = samples[warmup:]
            key = f"b{batch}x{tokens}"
            timings[key] = {"ms_median": statistics.median(samples), "ms_p90": percentile(samples, 0.9)}
            log(f"torch f16 eager {key}: median {timings[key]['ms_median']:.2f} ms")
        out["timings"] = timings
    return out


def gpu_description():
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi unavailable: {e}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", required=True)
    p.add_argument("--seal", default="")
    p.add_argument("--golden", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cuda-lib-dir", default="", help="folder with libcublas.so.13 etc. (for the f32 run)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ready-timeout", type=float, default=150)
    p.add_argument("--device", default="cuda", help="cpu for a dry run of this script without a GPU")
    p.add_argument("--dtypes", default="f16,f32")
    args = p.parse_args()
    args.serve = os.path.abspath(args.serve)
    args.seal = os.path.abspath(args.seal) if args.seal else ""
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    golden = json.load(open(args.golden))
    checks = Checks()
    report = {"gpu": gpu_description(), "serve": os.path.abspath(args.serve),
              "serve_bytes": os.path.getsize(args.serve), "checks": checks.items}
    log(f"GPU: {report['gpu']}")
    log(f"serve: {args.serve} ({report['serve_bytes'] / 1e6:.1f} MB)")

    # a. verify-only, empty environment
    r = subprocess.run([args.serve, "--verify-only", "--allow-unpinned"], env={}, capture_output=True, text=True,
                       cwd=tempfile.gettempdir(), timeout=120)
    checks.add("serve --verify-only (env -i)", r.returncode == 0 and r.stdout.startswith("OK "),
               r.stdout.strip()[:400] if r.returncode == 0 else (r.stdout + r.stderr).strip()[-600:])

    base_env = {k: v for k, v in os.environ.items() if k not in ("SEALSERVE_CUDA_LIB_DIRS",)}
    base_env.setdefault("RUST_LOG", "info")
    # A local build is dev-signed (ephemeral key): serve refuses it unless told it is unpinned.
    base_env["SEALSERVE_ALLOW_UNPINNED"] = "1"
    common = ["--harden", "strict", "--max-client-batch-size", "256", "--log-format", "json"]
    serve_bench = {}
    ids_by_tokens = None
    for dtype in args.dtypes.split(","):
        env = dict(base_env)
        how = "automatic discovery (no SEALSERVE_CUDA_LIB_DIRS)"
        if dtype == "f32" and args.cuda_lib_dir:
            env["SEALSERVE_CUDA_LIB_DIRS"] = args.cuda_lib_dir
            how = f"SEALSERVE_CUDA_LIB_DIRS={args.cuda_lib_dir}"
        log_path = os.path.join(args.out, f"serve-{dtype}.log")
        server = Server(args.serve, ["--device", args.device, "--dtype", dtype, *common], env, log_path)
        up = server.wait_ready(args.ready_timeout)
        if not up and dtype == "f16" and args.cuda_lib_dir:
            checks.add("CUDA libraries found by automatic discovery", False,
                       f"exit {server.proc.poll()}: {server.tail(3)}")
            server.stop()
            env["SEALSERVE_CUDA_LIB_DIRS"] = args.cuda_lib_dir
            how = f"SEALSERVE_CUDA_LIB_DIRS={args.cuda_lib_dir} (retry)"
            server = Server(args.serve, ["--device", args.device, "--dtype", dtype, *common], env, log_path)
            up = server.wait_ready(args.ready_timeout)
        checks.add(f"serve --device {args.device} --dtype {dtype} --harden strict is ready", up,
                   f"{how}; exec->ready {server.ready_s:.2f} s" if up
                   else f"exit {server.proc.poll()}: {server.tail(2)}")
        if not up:
            # Strict hardening was never tried with the CUDA driver before: measure the rest
            # without it (the failure above stays).
            server.stop()
            off = [a if a != "strict" else "off" for a in common]
            server = Server(args.serve, ["--device", args.device, "--dtype", dtype, *off], env,
                            log_path.replace(".log", "-harden-off.log"))
            up = server.wait_ready(args.ready_timeout)
            checks.add(f"serve --device {args.device} --dtype {dtype} --harden off is ready", up,
                       f"exec->ready {server.ready_s:.2f} s" if up
                       else f"exit {server.proc.poll()}: {server.tail(2)}")
        if not up:
            server.stop()
            continue
        report[f"exec_to_ready_s_{dtype}"] = server.ready_s
        client = Client(server.port)
        try:
            report[f"golden_{dtype}"] = golden_check(client, golden, dtype, checks)
            if "info" not in report:
                report["info"] = route_checks(client, args.device, dtype, checks)
            else:
                s, _, info = client.json("GET", "/info")
                checks.add(f"GET /info ({dtype}): device {args.device}",
                           s == 200 and info.get("device") == args.device and info.get("dtype") == dtype,
                           f"{info.get('device')} {info.get('dtype')}")
            bench, ids = bench_serve(client, args.runs if dtype == "f16" else max(3, args.runs // 2),
                                     args.warmup)
            serve_bench[dtype] = bench
            ids_by_tokens = ids_by_tokens or ids
        except Exception as e:  # noqa: BLE001 - record and go on to the next step
            checks.add(f"{dtype} server session", False, f"{type(e).__name__}: {e}")
        finally:
            client.close()
            code = server.stop()
            checks.add(f"{dtype} server stops cleanly on SIGTERM", code == 0, f"exit {code}")
    report["serve_timings"] = serve_bench

    # d. PyTorch baseline from the same model files
    torch_result = {"skipped": "no seal binary given"}
    # MiniLM's vocabulary: [CLS]=101, "hello"=7592, [SEP]=102 (what /tokenize gave, if it ran).
    ids_by_tokens = ids_by_tokens or {n: [101] + [7592] * (n - 2) + [102] for _, n in WORKLOADS}
    if args.seal and os.path.exists(args.seal):
        model_dir = tempfile.mkdtemp(prefix="sealserve-export-")
        r = subprocess.run([args.seal, "export", args.serve, model_dir], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            torch_result = {"skipped": f"seal export failed: {(r.stdout + r.stderr)[-400:]}"}
        else:
            log(f"exported model files to {model_dir}: {sorted(os.listdir(model_dir))}")
            try:
                torch_result = torch_baseline(model_dir, ids_by_tokens, golden, args.runs, args.warmup + 2)
            except Exception as e:  # noqa: BLE001
                torch_result = {"skipped": f"torch baseline failed: {type(e).__name__}: {e}"}
    report["torch_f16_eager"] = torch_result
    if "skipped" in torch_result:
        log(f"torch baseline skipped: {torch_result['skipped']}")

    # table
    lines = ["", f"GPU: {report['gpu']}",
             "| workload | sealserve f16 ms (HTTP, median) | sealserve f16 engine ms | "
             "sealserve f32 ms (HTTP) | torch f16 eager ms | f16 HTTP / torch |",
             "|---|---|---|---|---|---|"]
    table = []
    for batch, tokens in WORKLOADS:
        key = f"b{batch}x{tokens}"
        f16 = serve_bench.get("f16", {}).get(key, {})
        f32 = serve_bench.get("f32", {}).get(key, {})
        th = (torch_result.get("timings") or {}).get(key, {})
        ratio = (f16["http_ms_median"] / th["ms_median"]) if f16 and th else None
        row = {"workload": key, "serve_f16_http_ms": f16.get("http_ms_median"),
               "serve_f16_engine_ms": f16.get("inference_ms_median"),
               "serve_f32_http_ms": f32.get("http_ms_median"),
               "torch_f16_eager_ms": th.get("ms_median"), "ratio": ratio}
        table.append(row)

        def fmt(v):
            return "-" if v is None else f"{v:.2f}"
        lines.append(f"| b{batch} x {tokens} | {fmt(row['serve_f16_http_ms'])} | "
                     f"{fmt(row['serve_f16_engine_ms'])} | {fmt(row['serve_f32_http_ms'])} | "
                     f"{fmt(row['torch_f16_eager_ms'])} | {fmt(ratio)} |")
    report["table"] = table
    report["passed"] = not checks.failed
    report["elapsed_s"] = time.monotonic() - T0
    lines.append("")
    lines.append(f"{len(checks.items) - len(checks.failed)} passed, {len(checks.failed)} failed")
    print("\n".join(lines), flush=True)
    with open(os.path.join(args.out, "gpu-check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    return 0 if not checks.failed else 1


if __name__ == "__main__":
    sys.exit(main())
