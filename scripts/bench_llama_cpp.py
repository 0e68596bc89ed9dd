#!/usr/bin/env python3
"""llama.cpp side of the generation benchmark (scripts/bench-generate): the same GGUF, the same
prompt and thread count as `cargo bench --bench generate`, measured through llama-cpp-python's
low-level API (llama_decode on hand-built batches), so one and eight sequences are both measured
the way llama.cpp's own batched example decodes them.

Usage: bench_llama_cpp.py GGUF THREADS [PROMPT_TOKENS] [DECODE_TOKENS] [STREAMS] [--extra-bufts]
Prints one JSON object per measurement, with the same fields as the Rust bench."""
import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np

GGUF, THREADS = sys.argv[1], int(sys.argv[2])
PROMPT_TOKENS = int(sys.argv[3]) if len(sys.argv) > 3 else 128
DECODE_TOKENS = int(sys.argv[4]) if len(sys.argv) > 4 else 64
STREAMS = int(sys.argv[5]) if len(sys.argv) > 5 else 8
TEXT = "The history of the city is long and complicated. " * 64

llama_cpp.llama_backend_init()
llama_cpp.llama_log_set(ctypes.cast(None, llama_cpp.llama_log_callback), None) if hasattr(llama_cpp, "llama_log_callback") else None
mparams = llama_cpp.llama_model_default_params()
# llama.cpp's "extra buffer types" repack weights for AMX when the CPU has it; on the AMX-capable
# Xeon this was measured on (llama-cpp-python 0.3.36, GGML_NATIVE) its Q4_1 AMX path crashes in
# llama_decode (SIGSEGV). For Q4_1 the other repacks do not apply, so without them llama.cpp runs
# its AVX-512 CPU kernels. --extra-bufts turns them back on.
mparams.use_extra_bufts = "--extra-bufts" in sys.argv
model = llama_cpp.llama_model_load_from_file(GGUF.encode(), mparams)
vocab = llama_cpp.llama_model_get_vocab(model)
n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
cparams = llama_cpp.llama_context_default_params()
cparams.n_ctx = 4096
cparams.n_batch = 512
cparams.n_ubatch = 512
cparams.n_seq_max = STREAMS
cparams.n_threads = THREADS
cparams.n_threads_batch = THREADS
ctx = llama_cpp.llama_init_from_model(model, cparams)
memory = llama_cpp.llama_get_memory(ctx)

buf = (llama_cpp.llama_token * 4096)()
n = llama_cpp.llama_tokenize(vocab, TEXT.encode(), len(TEXT.encode()), buf, 4096, False, True)
prompt = list(buf[:n])[:PROMPT_TOKENS]
batch = llama_cpp.llama_batch_init(512, 0, STREAMS)


def decode(entries):
    """entries: (token, pos, seq, want_logits)."""
    batch.n_tokens = len(entries)
    for i, (tok, pos, seq, want) in enumerate(entries):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = want
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise SystemExit(f"llama_decode failed: {rc}")


def argmax(i):
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
    return int(row.argmax())


def run(streams):
    llama_cpp.llama_memory_clear(memory, True)
    start = time.perf_counter()
    # Prefill: each stream's prompt in one batch (<= 512 tokens per llama_decode).
    nexts = []
    for s in range(streams):
        decode([(t, p, s, p == len(prompt) - 1) for p, t in enumerate(prompt)])
        nexts.append(argmax(len(prompt) - 1))
        if s == 0:
            ttft = time.perf_counter() - start
    prefill = time.perf_counter() - start
    pos = len(prompt)
    start = time.perf_counter()
    for step in range(DECODE_TOKENS - 1):
        decode([(nexts[s], pos, s, True) for s in range(streams)])
        nexts = [argmax(s) for s in range(streams)]
        pos += 1
    decode_s = time.perf_counter() - start
    return {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "threads": THREADS,
        "streams": streams,
        "prompt_tokens": len(prompt),
        "decode_tokens": DECODE_TOKENS,
        "prefill_tok_s": streams * len(prompt) / prefill,
        "decode_tok_s": streams * (DECODE_TOKENS - 1) / decode_s,
        "ttft_s": ttft,
    }


run(1)  # warm-up
for streams in (1, STREAMS):
    print(json.dumps(run(streams)), flush=True)
