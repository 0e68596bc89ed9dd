#!/usr/bin/env python3
"""GPU check of the CUDA generation `serve` (SmolLM2-135M-Instruct sealed in); driven by
scripts/gpu-check --generate. Standard library only; shares its HTTP and server helpers with
scripts/gpu_check.py.

  a. serve --verify-only --allow-unpinned (empty environment; a local build is dev-signed)
  b. serve --device cuda --harden strict: /info says device cuda; greedy tokens of the three
     prompts of tests/data/reference/smollm2_golden.json through /generate (details: token ids):
     the chat prompt exactly llama.cpp's tokens, the others the f32 reference's up to its first
     near tie (top-2 gap < 0.5), as tests/generate_model.rs asks of the CPU engine
  c. /generate_stream and /generate give the same text; so do streamed and plain
     /v1/chat/completions; 8 concurrent greedy requests give the same tokens as 8 sequential ones
  d. throughput through HTTP: prefill tokens/s and time to first token of a ~400-token prompt,
     decode tokens/s of 1, 8 and 16 concurrent streams (128 new tokens each), on the GPU and, for
     comparison on the same host, the same binary with --device cpu

Writes OUT/gpu-check-generate.json and OUT/serve-generate-<device>.log. Exit status 0 when
every check passed (timings never fail the run).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_check import Checks, Client, Server, gpu_description, log  # noqa: E402

EOS_IDS = (0, 2)  # <|endoftext|>, <|im_end|>
STORY_PROMPTS = [
    "Write a long story about a robot who learns to paint.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in Marrakesh.",
    "Tell the history of the printing press.",
    "Write a letter from a lighthouse keeper to his sister.",
    "Explain why the sky is blue, step by step.",
    "Describe the life cycle of a star.",
    "Write a recipe for bread and explain each step.",
]


def confident_prefix(result):
    for i, step in enumerate(result["per_step_top5"]):
        if step["top5_logits"][0] - step["top5_logits"][1] < 0.5:
            return i
    return len(result["per_step_top5"])


def generate(client, text, max_new_tokens):
    status, _, body = client.json("POST", "/generate", {
        "inputs": text, "parameters": {"max_new_tokens": max_new_tokens, "details": True}})
    if status != 200:
        raise RuntimeError(f"/generate: {status} {body}")
    return [t["id"] for t in body["details"]["tokens"]], body["generated_text"]


def stream(port, path, body, timeout=300):
    """POSTs and reads server-sent events; returns (events as parsed JSON, arrival times,
    start time). The last OpenAI event is the literal [DONE]."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.monotonic()
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {resp.read()[:300]!r}")
    events, times = [], []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        times.append(time.monotonic())
        events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    conn.close()
    return events, times, start


def stream_tokens(port, text, max_new_tokens):
    events, times, start = stream(port, "/generate_stream", {
        "inputs": text, "parameters": {"max_new_tokens": max_new_tokens}})
    ids = [e["token"]["id"] for e in events]
    final = events[-1].get("generated_text") if events else None
    return {"ids": ids, "text": final, "start": start, "times": times}


def correctness(client, port, golden, checks, device):
    report = {}
    for result in golden["results"]:
        name = result["name"]
        status, _, tok = client.json("POST", "/tokenize", {"inputs": result["prompt"]})
        ids = [t["id"] for t in tok[0]] if status == 200 else None
        checks.add(f"/tokenize {name} gives the reference prompt ids", ids == result["prompt_ids"],
                   f"{len(ids or [])} ids")
        got, _ = generate(client, result["prompt"], len(result["generated_ids"]))
        ref_cpp = next(g for g in golden["llama_cpp_gguf"]["greedy"] if g["name"] == name)
        if name == "chat_template":
            want = ref_cpp["generated_ids"]
            ok = got == want
            detail = f"{len(got)} tokens equal llama.cpp's" if ok else f"got {got}, llama.cpp {want}"
        else:
            n = confident_prefix(result)
            ok = got[:n] == result["generated_ids"][:n]
            agree = next((i for i, (a, b) in enumerate(zip(got, result["generated_ids"])) if a != b),
                         min(len(got), len(result["generated_ids"])))
            detail = f"first {n} (confident) tokens equal the f32 reference; {agree} agree in all"
            if not ok:
                detail += f"; got {got}, reference {result['generated_ids']}"
        checks.add(f"greedy {name} on {device}", ok, detail)
        report[name] = got

    # Streaming and non-streaming: same text.
    text = STORY_PROMPTS[0]
    plain_ids, plain_text = generate(client, text, 40)
    streamed = stream_tokens(port, text, 40)
    checks.add("/generate_stream == /generate (40 tokens)",
               streamed["ids"] == plain_ids and streamed["text"] == plain_text,
               f"{len(plain_ids)} tokens")
    chat = {"model": "x", "messages": [{"role": "user", "content": "Name three colors."}],
            "max_tokens": 30, "temperature": 0}
    status, _, body = client.json("POST", "/v1/chat/completions", chat)
    plain = body["choices"][0]["message"]["content"] if status == 200 else None
    events, _, _ = stream(port, "/v1/chat/completions", dict(chat, stream=True))
    streamed_text = "".join((e["choices"][0]["delta"].get("content") or "")
                            for e in events if e != "[DONE]" and e.get("choices"))
    checks.add("streamed /v1/chat/completions == plain", plain is not None and streamed_text == plain
               and events[-1] == "[DONE]", repr((plain or "")[:60]))

    # Batching must not change results: 8 sequential vs 8 concurrent.
    sequential = [generate(client, p, 32)[0] for p in STORY_PROMPTS]
    concurrent = [None] * len(STORY_PROMPTS)

    def one(i):
        c = Client(port)
        try:
            concurrent[i] = generate(c, STORY_PROMPTS[i], 32)[0]
        finally:
            c.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(STORY_PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    same = sum(a == b for a, b in zip(sequential, concurrent))
    checks.add("8 concurrent greedy requests == 8 sequential", same == len(STORY_PROMPTS),
               f"{same}/{len(STORY_PROMPTS)} identical")
    return report


def bench(client, port, rounds):
    out = {}
    # Prefill: a ~400-token prompt, one new token; time to first token.
    long_prompt = " ".join(STORY_PROMPTS) * 5
    status, _, tok = client.json("POST", "/tokenize", {"inputs": long_prompt})
    n_prompt = len(tok[0]) if status == 200 else None
    ttfts = []
    for _ in range(rounds):
        r = stream_tokens(port, long_prompt, 1)
        ttfts.append(r["times"][0] - r["start"])
    ttft = statistics.median(ttfts)
    out["prefill"] = {"prompt_tokens": n_prompt, "ttft_s_median": ttft,
                      "tokens_per_s": n_prompt / ttft if n_prompt else None}
    for streams in (1, 8, 16):
        runs = []
        for _ in range(rounds if streams == 1 else max(1, rounds - 1)):
            results = [None] * streams

            def one(i):
                results[i] = stream_tokens(port, STORY_PROMPTS[i % len(STORY_PROMPTS)], 128)
            threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            start = min(r["start"] for r in results)
            end = max(r["times"][-1] for r in results)
            tokens = sum(len(r["ids"]) for r in results)
            first = [r["times"][0] - r["start"] for r in results]
            # Decode rate of each stream: tokens after the first over the time after the first.
            per_stream = [(len(r["ids"]) - 1) / (r["times"][-1] - r["times"][0])
                          for r in results if len(r["ids"]) > 1 and r["times"][-1] > r["times"][0]]
            runs.append({"tokens": tokens, "wall_s": end - start,
                         "aggregate_tokens_per_s": tokens / (end - start),
                         "per_stream_decode_tokens_per_s_mean": statistics.mean(per_stream) if per_stream else None,
                         "ttft_s_mean": statistics.mean(first)})
        best = sorted(runs, key=lambda r: r["aggregate_tokens_per_s"])[len(runs) // 2]
        out[f"streams_{streams}"] = {"median_run": best, "runs": runs}
    return out


def session(serve, device, env, out_dir, checks, golden, rounds, full, harden="strict"):
    log_path = os.path.join(out_dir, f"serve-generate-{device}-{harden}.log")
    server = Server(serve, ["--device", device, "--harden", harden, "--log-format", "json"],
                    env, log_path)
    up = server.wait_ready(150)
    checks.add(f"generation serve --device {device} --harden {harden} is ready", up,
               f"exec->ready {server.ready_s:.2f} s" if up else f"exit {server.proc.poll()}: {server.tail(3)}")
    if not up:
        server.stop()
        return None
    result = {"exec_to_ready_s": server.ready_s, "harden": harden}
    client = Client(server.port, timeout=300)
    try:
        status, _, info = client.json("GET", "/info")
        checks.add(f"/info device {device}", status == 200 and info.get("device") == device,
                   f"device {info.get('device')}, hardening {json.dumps(info.get('hardening'))[:200]}")
        if full:
            result["greedy"] = correctness(client, server.port, golden, checks, device)
        result["bench"] = bench(client, server.port, rounds)
        log(f"{device}: {json.dumps(result['bench'], default=str)[:1500]}")
    except Exception as e:  # noqa: BLE001 - record and go on
        checks.add(f"{device} generation session", False, f"{type(e).__name__}: {e}")
        if server.proc.poll() is not None:
            result["died"] = f"exit {server.proc.poll()}: {server.tail(3)}"
    finally:
        client.close()
        code = server.stop()
        checks.add(f"{device} generation server stops cleanly on SIGTERM", code == 0, f"exit {code}")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", required=True)
    p.add_argument("--golden", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda", help="cpu for a dry run without a GPU")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpu-compare", action="store_true", help="also bench --device cpu")
    args = p.parse_args()
    args.serve = os.path.abspath(args.serve)
    os.makedirs(args.out, exist_ok=True)
    golden = json.load(open(args.golden))
    checks = Checks()
    report = {"gpu": gpu_description(), "serve_bytes": os.path.getsize(args.serve),
              "checks": checks.items, "host_cpu": cpu_model()}
    log(f"GPU: {report['gpu']}; host CPU: {report['host_cpu']}")
    r = subprocess.run([args.serve, "--verify-only", "--allow-unpinned"], env={}, capture_output=True, text=True,
                       cwd=tempfile.gettempdir(), timeout=120)
    checks.add("serve --verify-only (env -i)", r.returncode == 0 and r.stdout.startswith("OK "),
               (r.stdout if r.returncode == 0 else r.stdout + r.stderr).strip()[-400:])
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    # A local build is dev-signed (ephemeral key): serve refuses it unless told it is unpinned.
    env["SEALSERVE_ALLOW_UNPINNED"] = "1"
    report[args.device] = session(args.serve, args.device, env, args.out, checks, golden,
                                  args.rounds, True)
    if report[args.device] is None or "died" in report[args.device]:
        # Strict hardening was never tried with the CUDA driver before: when it is what stops
        # the server, the rest is still measured without it (the failure above stays).
        log("retrying with --harden off to measure the rest")
        report[f"{args.device}_harden_off"] = session(args.serve, args.device, env, args.out,
                                                      checks, golden, args.rounds, True, "off")
    if args.cpu_compare and args.device != "cpu":
        report["cpu_same_host"] = session(args.serve, "cpu", env, args.out, checks, golden,
                                          max(1, args.rounds - 1), False)
    lines = ["", f"GPU: {report['gpu']}; host CPU: {report['host_cpu']}",
             "| | prefill tok/s (TTFT s) | 1 stream tok/s | 8 streams tok/s (TTFT s) | 16 streams tok/s |",
             "|---|---|---|---|---|"]
    for key in (args.device, f"{args.device}_harden_off", "cpu_same_host"):
        b = (report.get(key) or {}).get("bench")
        if not b:
            continue

        def agg(n):
            return b[f"streams_{n}"]["median_run"]
        lines.append(
            f"| {key} | {b['prefill']['tokens_per_s']:.0f} ({b['prefill']['ttft_s_median']:.3f}) | "
            f"{agg(1)['aggregate_tokens_per_s']:.1f} | {agg(8)['aggregate_tokens_per_s']:.1f} "
            f"({agg(8)['ttft_s_mean']:.3f}) | {agg(16)['aggregate_tokens_per_s']:.1f} |")
    report["passed"] = not checks.failed
    lines.append(f"{len(checks.items) - len(checks.failed)} passed, {len(checks.failed)} failed")
    print("\n".join(lines), flush=True)
    with open(os.path.join(args.out, "gpu-check-generate.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    return 0 if not checks.failed else 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x {len(names)}" if names else "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
