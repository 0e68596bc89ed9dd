#!/usr/bin/env python3
"""Writes the tiny random llama-family GGUFs that seed the `gguf` fuzz target.

    python3 tests/data/make_tiny_gguf.py crates/fuzz/seeds/gguf

Standard library only, deterministic (fixed seeds, no timestamps): running it again writes the
same bytes. Each file is a complete model that sealserve loads and runs (`Gguf::read`,
`LlamaConfig::from_gguf`, `TextTokenizer::from_gguf`, `LlamaModel::load`, one forward step;
tests/fuzz_regressions.rs `seeds_reach_the_deep_paths` checks it), with random weights: the
outputs mean nothing. Written by hand from the GGUF spec
(https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), version 3, little-endian.

Variants, chosen to reach the loader's different paths:
  llama-q8_0.gguf   llama, 2 blocks, Q8_0 matrices (our packed kernels), tied output,
                    pre-tokenizer "smollm", ChatML template
  qwen2-f32.gguf    qwen2, 1 block, F32 matrices (candle's fallback), Q/K/V biases,
                    separate output.weight, pre-tokenizer "qwen2"
  qwen3-q4_0.gguf   qwen3, 1 block, Q4_0 matrices, per-head Q/K norms, pre-tokenizer "llama-bpe"
All: hidden 32, 4 query heads sharing 2 key/value heads of 8, feed-forward 64, a byte-level BPE
vocabulary of 256 byte tokens, 3 control tokens and 48 merges learnt from a fixed text.
"""

import random
import re
import struct
import sys
from pathlib import Path

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 32, 4, 2, 8, 64
ALIGNMENT = 32
MERGES = 48
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox "
    "runs into the forest. Hello, world! Sealed models serve tokens: the server verifies "
    "the signature, then the weights load and the model answers. 12 34 567 890."
)

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
# ggml tensor types.
GGML_F32, GGML_Q4_0, GGML_Q8_0 = 0, 2, 8


def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(0xA1, 0xAC + 1))
        + list(range(0xAE, 0xFF + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def vocabulary():
    """Control tokens, the 256 byte tokens, then merges learnt greedily on TRAINING_TEXT."""
    table = bytes_to_unicode()
    tokens = SPECIALS + [table[b] for b in range(256)]
    words = [
        [table[b] for b in w.encode()]
        for w in re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", TRAINING_TEXT)
    ]
    merges = []
    for _ in range(MERGES):
        counts = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(f"{best[0]} {best[1]}")
        if best[0] + best[1] not in tokens:
            tokens.append(best[0] + best[1])
        merged = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged.append(out)
        words = merged
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, merges


def f16(x):
    return struct.pack("<e", x)


def quantize(values, ggml_type):
    """Row-major values as GGUF bytes of `ggml_type` (blocks of 32 for the quantized ones)."""
    if ggml_type == GGML_F32:
        return struct.pack(f"<{len(values)}f", *values)
    out = bytearray()
    for start in range(0, len(values), 32):
        block = values[start : start + 32]
        if ggml_type == GGML_Q8_0:
            d = max(abs(v) for v in block) / 127 or 1.0
            out += f16(d) + struct.pack("<32b", *(round(v / d) for v in block))
        elif ggml_type == GGML_Q4_0:
            peak = max(block, key=abs)
            d = peak / -8 or 1.0
            q = [min(15, max(0, int(v / d + 8.5))) for v in block]
            out += f16(d) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
        else:
            raise ValueError(ggml_type)
    return bytes(out)


class Writer:
    def __init__(self):
        self.kv = []
        self.tensors = []

    def meta(self, key, kind, value, element=None):
        self.kv.append((key, kind, value, element))

    def tensor(self, name, shape, values, ggml_type):
        """`shape` as sealserve sees it ([rows, columns]); GGUF stores it innermost first."""
        assert len(values) == product(shape)
        self.tensors.append((name, shape, ggml_type, quantize(values, ggml_type)))

    def bytes(self):
        out = bytearray(b"GGUF")
        out += struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for key, kind, value, element in self.kv:
            out += string(key) + struct.pack("<I", kind) + encode(kind, value, element)
        offset = 0
        layout = []
        for name, shape, ggml_type, data in self.tensors:
            out += string(name) + struct.pack("<I", len(shape))
            out += b"".join(struct.pack("<Q", d) for d in reversed(shape))
            out += struct.pack("<IQ", ggml_type, offset)
            layout.append((offset, data))
            offset += -(-len(data) // ALIGNMENT) * ALIGNMENT
        out += bytes(-len(out) % ALIGNMENT)
        start = len(out)
        for offset, data in layout:
            out += bytes(start + offset - len(out)) + data
        return bytes(out)


def product(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


SCALARS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
           U64: "Q", I64: "q", F64: "d"}


def encode(kind, value, element):
    if kind == STRING:
        return string(value)
    if kind == ARRAY:
        head = struct.pack("<IQ", element, len(value))
        return head + b"".join(encode(element, v, None) for v in value)
    return struct.pack("<" + SCALARS[kind], value)


def model(arch, layers, ggml_type, pre, seed, tied, biases, qk_norm):
    rng = random.Random(seed)
    tokens, types, merges = vocabulary()
    vocab = len(tokens)

    def rand(n, scale):
        return [rng.uniform(-scale, scale) for _ in range(n)]

    w = Writer()
    w.meta("general.architecture", STRING, arch)
    w.meta("general.name", STRING, f"tiny random {arch} (sealserve fuzz seed)")
    w.meta("general.alignment", U32, ALIGNMENT)
    w.meta(f"{arch}.context_length", U32, 256)
    w.meta(f"{arch}.embedding_length", U32, HIDDEN)
    w.meta(f"{arch}.block_count", U32, layers)
    w.meta(f"{arch}.feed_forward_length", U32, FFN)
    w.meta(f"{arch}.attention.head_count", U32, HEADS)
    w.meta(f"{arch}.attention.head_count_kv", U32, KV_HEADS)
    w.meta(f"{arch}.attention.key_length", U32, HEAD_DIM)
    w.meta(f"{arch}.rope.dimension_count", U32, HEAD_DIM)
    w.meta(f"{arch}.rope.freq_base", F32, 10000.0)
    w.meta(f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5)
    w.meta(f"{arch}.vocab_size", U32, vocab)
    w.meta("tokenizer.ggml.model", STRING, "gpt2")
    w.meta("tokenizer.ggml.pre", STRING, pre)
    w.meta("tokenizer.ggml.tokens", ARRAY, tokens, STRING)
    w.meta("tokenizer.ggml.token_type", ARRAY, types, I32)
    w.meta("tokenizer.ggml.merges", ARRAY, merges, STRING)
    w.meta("tokenizer.ggml.bos_token_id", U32, 1)
    w.meta("tokenizer.ggml.eos_token_id", U32, 2)
    w.meta("tokenizer.ggml.add_bos_token", BOOL, False)
    w.meta("tokenizer.chat_template", STRING, CHAT_TEMPLATE)

    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    w.tensor("token_embd.weight", [vocab, HIDDEN], rand(vocab * HIDDEN, 1.0), ggml_type)
    if not tied:
        w.tensor("output.weight", [vocab, HIDDEN], rand(vocab * HIDDEN, 0.2), ggml_type)
    w.tensor("output_norm.weight", [HIDDEN], [1.0] * HIDDEN, GGML_F32)
    for i in range(layers):
        p = f"blk.{i}."
        w.tensor(p + "attn_norm.weight", [HIDDEN], [1.0] * HIDDEN, GGML_F32)
        w.tensor(p + "attn_q.weight", [q, HIDDEN], rand(q * HIDDEN, 0.2), ggml_type)
        w.tensor(p + "attn_k.weight", [kv, HIDDEN], rand(kv * HIDDEN, 0.2), ggml_type)
        w.tensor(p + "attn_v.weight", [kv, HIDDEN], rand(kv * HIDDEN, 0.2), ggml_type)
        if biases:
            w.tensor(p + "attn_q.bias", [q], rand(q, 0.1), GGML_F32)
            w.tensor(p + "attn_k.bias", [kv], rand(kv, 0.1), GGML_F32)
            w.tensor(p + "attn_v.bias", [kv], rand(kv, 0.1), GGML_F32)
        if qk_norm:
            w.tensor(p + "attn_q_norm.weight", [HEAD_DIM], [1.0] * HEAD_DIM, GGML_F32)
            w.tensor(p + "attn_k_norm.weight", [HEAD_DIM], [1.0] * HEAD_DIM, GGML_F32)
        w.tensor(p + "attn_output.weight", [HIDDEN, q], rand(HIDDEN * q, 0.2), ggml_type)
        w.tensor(p + "ffn_norm.weight", [HIDDEN], [1.0] * HIDDEN, GGML_F32)
        w.tensor(p + "ffn_gate.weight", [FFN, HIDDEN], rand(FFN * HIDDEN, 0.2), ggml_type)
        w.tensor(p + "ffn_up.weight", [FFN, HIDDEN], rand(FFN * HIDDEN, 0.2), ggml_type)
        w.tensor(p + "ffn_down.weight", [HIDDEN, FFN], rand(HIDDEN * FFN, 0.2), ggml_type)
    return w.bytes()


VARIANTS = {
    "llama-q8_0.gguf": dict(arch="llama", layers=2, ggml_type=GGML_Q8_0, pre="smollm", seed=1,
                            tied=True, biases=False, qk_norm=False),
    "qwen2-f32.gguf": dict(arch="qwen2", layers=1, ggml_type=GGML_F32, pre="qwen2", seed=2,
                           tied=False, biases=True, qk_norm=False),
    "qwen3-q4_0.gguf": dict(arch="qwen3", layers=1, ggml_type=GGML_Q4_0, pre="llama-bpe",
                            seed=3, tied=True, biases=False, qk_norm=True),
}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_gguf.py OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, params in VARIANTS.items():
        data = model(**params)
        assert len(data) <= 200 * 1024, (name, len(data))
        (out / name).write_bytes(data)
        print(f"{out / name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
