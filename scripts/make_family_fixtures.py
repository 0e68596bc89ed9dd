"""Generates the tiny model-family fixtures under tests/data/families/ (see scripts/make-family-fixtures).

For each family and head: a random checkpoint (fixed seed, 2 layers, hidden <= 64) saved by
`transformers`, a tokenizer of the family's kind trained on the small corpus below, the
sentence-transformers files where the family is an embedding model, and `reference.json` with
what `transformers` / `sentence-transformers` compute for a fixed set of inputs: short, padding-heavy
batches, a long text cut at `max_seq_length`, non-ASCII text, and text pairs for the heads.

Nothing is downloaded: every weight and vocabulary is made here, so the fixtures are reproducible
from the pinned PyPI versions alone (bit-exact given the same torch build and CPU kind; the
references are the only thing the Rust tests read, and they are committed).
"""

from __future__ import annotations

import os as _os

# Offline and quiet: nothing here may reach a hub, and progress bars only hide errors.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
_os.environ.setdefault("TQDM_DISABLE", "1")

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
import sentence_transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

torch.set_grad_enabled(False)

# The Rust tests compare against these within 1e-5; batched and single runs here must agree well
# inside that, or the fixture would not be able to tell a real regression from noise.
SELF_CONSISTENCY = 5e-6
MAX_SEQ = 40
MAX_POSITIONS = 64

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A bank's model-risk team reviews every model before it is deployed.",
    "Sealed binaries carry their weights, and the signature covers every byte.",
    "Embeddings map text to vectors; similar texts land close together.",
    "What is the capital of France? Paris is the capital of France.",
    "The weather today is sunny with a light breeze from the west.",
    "Rerankers score a query against each candidate passage.",
    "Classifiers assign a label such as positive, negative or neutral.",
    "How do I reset my password? Open the settings page and choose reset.",
    "Numbers like 3.14159, 2026 and 42 appear in text too.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux, très élégant.",
    "El zorro marrón rápido salta sobre el perro perezoso; ¿verdad?",
    "Café, naïve, façade, coöperate, résumé and Ångström keep their accents.",
    "東京は日本の首都です。北京是中国的首都。",
    "Москва — столица России, а Київ — столиця України.",
    "Emoji travel too: 🤖 🚀 ✨ and the flag 🇪🇺.",
    "search_query: what is a sealed model?",
    "search_document: a sealed model is a signed bundle of weights and tokenizer.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query",
    "Query: which families does the server support?",
    "BERT, DistilBERT, MPNet, XLM-RoBERTa, ModernBERT and Qwen3 are model families.",
    "The transformer encoder applies attention, then a feed-forward network, in every layer.",
    "Padding fills short sequences so a batch forms a rectangle; masks hide the padding.",
]

LONG_TEXT = " ".join(CORPUS[:8])  # far more than MAX_SEQ tokens: exercises truncation

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    LONG_TEXT,
    "Ünïcödé café naïve — 東京タワー 🤖 Ωmega",
    "a",
    "Rerankers score a query against each candidate passage; classifiers assign labels.",
    "ok",
    "Москва 🚀 über",
]

PAIRS = [
    ("what is a sealed model?", "a sealed model is a signed bundle of weights and tokenizer."),
    ("what is a sealed model?", "The weather today is sunny with a light breeze."),
    ("capital of France", "Paris is the capital of France."),
    ("Ünïcödé?", "東京は日本の首都です。"),
    ("short", LONG_TEXT),
]

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "sentence-transformers": sentence_transformers.__version__,
    "tokenizers": tokenizers.__version__,
}


def floats(t: torch.Tensor) -> list:
    """float32 values as JSON numbers that round-trip to the same float32."""
    return t.detach().to(torch.float32).cpu().tolist()


def round32(x):
    if isinstance(x, list):
        return [round32(v) for v in x]
    return float(f"{np.float32(x):.9g}")


# ---------------------------------------------------------------------------------------------
# Tokenizers of each kind, trained on CORPUS (tiny vocabularies, so fixtures stay small).


def corpus_words(normalizer, pre_tokenizer) -> list[str]:
    words = []
    for line in CORPUS:
        words += [w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))]
    return words


SUFFIXES = ["s", "es", "ed", "er", "ing", "ly", "tion", "al", "en", "ers", "ity", "able"]


def pieces_by_count(words: list[str], limit: int) -> list[str]:
    """The `limit` most frequent words, ties broken alphabetically: a deterministic stand-in for
    a trained vocabulary (the tokenizers trainers break frequency ties in hash-map order, so two
    runs give different vocabularies)."""
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], w))[:limit]


def wordpiece(specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), roberta_style=False, words=200):
    """BERT's kind: lower-casing, accent-stripping BertNormalizer, WordPiece with `##` pieces.
    Vocabulary: specials, every corpus character (initial and `##`), common suffixes, and the
    most frequent words; out-of-corpus characters become the unknown token."""
    normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    all_words = corpus_words(normalizer, pre_tokenizer)
    chars = sorted({c for w in all_words for c in w})
    vocab = list(specials) + chars + ["##" + c for c in chars] + ["##" + x for x in SUFFIXES]
    vocab = list(dict.fromkeys(vocab + pieces_by_count(all_words, words)))
    unk = "<unk>" if roberta_style else "[UNK]"
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tok.add_special_tokens(list(specials))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    if roberta_style:
        cls, sep = "<s>", "</s>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} {sep} $B {sep}",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
    else:
        cls, sep = "[CLS]", "[SEP]"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )
    return tok


def unigram(words=150):
    """XLM-RoBERTa's kind: SentencePiece unigram behind a Metaspace pre-tokenizer. Pieces: every
    corpus character, `▁`-prefixed frequent words, common suffixes; scores are log frequencies of
    the pieces in the corpus (deterministic; see `pieces_by_count`)."""
    normalizer = normalizers.Sequence(
        [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    all_words = corpus_words(normalizer, pre_tokenizer)
    text = "".join(all_words)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    chars = sorted({c for w in all_words for c in w})
    pieces = chars + SUFFIXES + [w for w in pieces_by_count(all_words, words) if len(w) > 1]
    pieces = list(dict.fromkeys(p for p in pieces if p not in specials))
    counts = {p: max(text.count(p), 1) for p in pieces}
    total = sum(counts.values())
    vocab = [(s, 0.0) for s in specials] + [(p, math.log(counts[p] / total)) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def byte_bpe(specials, template_single, template_pair=None, qwen=False, vocab=420):
    tok = Tokenizer(models.BPE())
    if qwen:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    ids = [(s, tok.token_to_id(s)) for s in specials]
    tok.post_processor = processors.TemplateProcessing(
        single=template_single, pair=template_pair or template_single.replace("$A", "$A $B"), special_tokens=ids
    )
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, config, padding_side="right", **special):
    # Real BERT tokenizers (BertTokenizer) hand the model token_type_ids, which pair classifiers and
    # cross-encoders read (segment 1 for the second text); a generic fast tokenizer does not unless
    # told. Models with segment embeddings get them here, as the checkpoints users deploy do.
    if getattr(config, "type_vocab_size", 0) > 1:
        special = {**special, "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_SEQ, padding_side=padding_side, **special
    )
    fast.save_pretrained(out)
    return fast


# ---------------------------------------------------------------------------------------------
# Reference computation.


def seed_everything(name: str):
    # One seed per fixture (stable across Python runs), so adding a fixture does not change others.
    torch.manual_seed(sum(name.encode()) * 7919 % (2**31))


def randomise(model: torch.nn.Module, name: str):
    """transformers' own init gives near-zero biases and unit norms; a fixture needs every
    parameter to matter, so each one is redrawn with a scale that keeps activations O(1)."""
    seed_everything(name + "/params")
    for pname, p in model.named_parameters():
        if p.dim() == 1:
            if "norm" in pname.lower() and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
        else:
            fan_in = p.shape[-1]
            p.copy_(torch.randn_like(p) / math.sqrt(fan_in) * (0.8 if "embed" not in pname.lower() else 1.0))


def hidden_states(model, enc) -> torch.Tensor:
    out = model(**enc)
    return out.last_hidden_state


def per_sequence(hidden: torch.Tensor, mask: torch.Tensor) -> list:
    rows = []
    for b in range(hidden.shape[0]):
        rows.append(hidden[b][mask[b].bool()])
    return rows


def check_batched_vs_single(tokenizer, model, texts, pairs=None):
    """The padded batch must give the same hidden states as one-at-a-time runs."""
    enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
    batched = per_sequence(hidden_states(model, enc), enc["attention_mask"])
    worst = 0.0
    for i, t in enumerate(texts):
        one = tokenizer(
            [t], [pairs[i]] if pairs else None, padding=True, truncation=True, max_length=MAX_SEQ, return_tensors="pt"
        )
        single = per_sequence(hidden_states(model, one), one["attention_mask"])[0]
        worst = max(worst, (single - batched[i]).abs().max().item())
    assert worst < SELF_CONSISTENCY, f"batched vs single differ by {worst}"
    return enc, batched, worst


def encoded_inputs(tokenizer, texts, pairs=None):
    items = []
    for i, t in enumerate(texts):
        one = tokenizer(t, pairs[i] if pairs else None, truncation=True, max_length=MAX_SEQ)
        item = {"text": t, "input_ids": one["input_ids"]}
        if pairs:
            item["text_pair"] = pairs[i]
        if "token_type_ids" in one and any(one["token_type_ids"]):
            item["token_type_ids"] = one["token_type_ids"]
        items.append(item)
    return items


def write_json(path: Path, value):
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")


def tidy(out: Path):
    """Drops what the Rust side never reads and what would only bloat the fixture."""
    for name in ["README.md", "training_args.bin"]:
        (out / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Embedding fixtures: base model + sentence-transformers pipeline.


def embedding_fixture(
    root: Path,
    name: str,
    family: str,
    config,
    model_cls,
    tok: Tokenizer,
    special: dict,
    pooling: str,
    normalize: bool,
    padding_side="right",
    prompts=None,
    prompt_texts=(),
):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seed_everything(name)
    model = model_cls(config).eval()
    randomise(model, name)
    model.save_pretrained(out)
    tokenizer = save_tokenizer(tok, out, config, padding_side=padding_side, **special)

    model = AutoModel.from_pretrained(out).eval()
    enc, batched, worst = check_batched_vs_single(tokenizer, model, TEXTS)
    items = encoded_inputs(tokenizer, TEXTS)
    for item, rows in zip(items, batched):
        item["hidden"] = round32(floats(rows))

    # sentence-transformers over the same folder: every pooling on the padded batch, then the
    # pipeline this fixture declares (pooling + optional Normalize) saved as its ST files.
    pooled = {}
    transformer = Transformer(str(out), max_seq_length=MAX_SEQ)
    dim = config.hidden_size
    for mode in ["mean", "cls", "lasttoken", "weightedmean"]:
        st = SentenceTransformer(modules=[Transformer(str(out), max_seq_length=MAX_SEQ), Pooling(dim, mode)], device="cpu")
        pooled[mode] = round32(floats(torch.tensor(st.encode(TEXTS, batch_size=len(TEXTS)))))
    modules = [transformer, Pooling(dim, pooling)]
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts or {})
    embeddings = st.encode(TEXTS, batch_size=len(TEXTS))
    singles = np.stack([st.encode([t])[0] for t in TEXTS])
    st_worst = float(np.abs(embeddings - singles).max())
    assert st_worst < SELF_CONSISTENCY, st_worst
    st.save(str(out))
    tidy(out)

    reference = {
        "family": family,
        "transformers_class": type(model).__name__,
        "versions": VERSIONS,
        "max_seq_length": MAX_SEQ,
        "padding_side": padding_side,
        "pooling": pooling,
        "normalize": normalize,
        "batched_vs_single_max_abs_diff": max(worst, st_worst),
        "inputs": items,
        "pooled": pooled,
        "embeddings": round32(floats(torch.tensor(embeddings))),
    }
    if prompts:
        prompted = []
        for prompt_name, texts in prompt_texts:
            vectors = st.encode(list(texts), prompt_name=prompt_name, batch_size=len(texts))
            ids = [tokenizer(prompts[prompt_name] + t, truncation=True, max_length=MAX_SEQ)["input_ids"] for t in texts]
            for t, i, v in zip(texts, ids, vectors):
                prompted.append({"prompt_name": prompt_name, "text": t, "input_ids": i, "embedding": round32(floats(torch.tensor(v)))})
        reference["prompts"] = prompts
        reference["prompted"] = prompted
    write_json(out / "reference.json", reference)
    return out


# ---------------------------------------------------------------------------------------------
# Head fixtures: sequence classification / cross-encoder rerankers / SPLADE.


def classifier_fixture(
    root: Path,
    name: str,
    family: str,
    config,
    model_cls,
    tok: Tokenizer,
    special: dict,
    labels: list[str],
    with_pairs=True,
    padding_side="right",
):
    from sentence_transformers import CrossEncoder

    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config.num_labels = len(labels)
    config.id2label = {i: l for i, l in enumerate(labels)}
    config.label2id = {l: i for i, l in enumerate(labels)}
    seed_everything(name)
    model = model_cls(config).eval()
    randomise(model, name)
    model.save_pretrained(out)
    tokenizer = save_tokenizer(tok, out, config, padding_side=padding_side, **special)
    model = type(model).from_pretrained(out).eval()

    def logits_for(texts, pairs=None):
        enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
        batched = model(**enc).logits
        for i in range(len(texts)):
            one = tokenizer([texts[i]], [pairs[i]] if pairs else None, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
            diff = (model(**one).logits[0] - batched[i]).abs().max().item()
            assert diff < SELF_CONSISTENCY, (name, i, diff)
        return batched

    reference = {
        "family": family,
        "transformers_class": type(model).__name__,
        "versions": VERSIONS,
        "max_seq_length": MAX_SEQ,
        "padding_side": padding_side,
        "id2label": labels,
    }
    singles = encoded_inputs(tokenizer, TEXTS)
    for item, row in zip(singles, logits_for(TEXTS)):
        item["logits"] = round32(floats(row))
    reference["inputs"] = singles
    if with_pairs:
        queries = [p[0] for p in PAIRS]
        docs = [p[1] for p in PAIRS]
        pairs = encoded_inputs(tokenizer, queries, docs)
        for item, row in zip(pairs, logits_for(queries, docs)):
            item["logits"] = round32(floats(row))
        if len(labels) == 1:
            # What a sentence-transformers CrossEncoder (and TEI's /rerank) reports: sigmoid of the
            # single logit unless raw scores are asked for.
            ce = CrossEncoder(str(out), device="cpu", max_length=MAX_SEQ)
            scores = ce.predict(list(PAIRS), batch_size=len(PAIRS))
            raw = ce.predict(list(PAIRS), batch_size=len(PAIRS), activation_fn=torch.nn.Identity())
            for item, s, r in zip(pairs, scores, raw):
                item["cross_encoder_score"] = round32(float(s))
                item["cross_encoder_raw"] = round32(float(r))
        reference["pairs"] = pairs
    tidy(out)
    write_json(out / "reference.json", reference)
    return out


def splade_fixture(root: Path, name: str, config, tok: Tokenizer, special: dict):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
    from transformers import BertForMaskedLM

    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seed_everything(name)
    model = BertForMaskedLM(config).eval()
    randomise(model, name)
    model.save_pretrained(out)
    tokenizer = save_tokenizer(tok, out, config, **special)
    encoder = SparseEncoder(modules=[MLMTransformer(str(out), max_seq_length=MAX_SEQ), SpladePooling("max")], device="cpu")
    dense = encoder.encode(TEXTS, batch_size=len(TEXTS), convert_to_sparse_tensor=False, convert_to_tensor=True)
    for i, t in enumerate(TEXTS):
        one = encoder.encode([t], convert_to_sparse_tensor=False, convert_to_tensor=True)[0]
        diff = (one - dense[i]).abs().max().item()
        assert diff < SELF_CONSISTENCY, diff
    encoder.save(str(out))
    tidy(out)
    items = encoded_inputs(tokenizer, TEXTS)
    for item, row in zip(items, dense):
        nz = torch.nonzero(row).flatten()
        item["sparse"] = {"indices": nz.tolist(), "values": round32(floats(row[nz]))}
    write_json(
        out / "reference.json",
        {
            "family": "bert",
            "transformers_class": type(model).__name__,
            "versions": VERSIONS,
            "max_seq_length": MAX_SEQ,
            "pooling": "splade-max",
            "inputs": items,
        },
    )


# ---------------------------------------------------------------------------------------------


def main(root: Path):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        DistilBertModel,
        GteConfig,
        GteForSequenceClassification,
        GteModel,
        ModernBertConfig,
        ModernBertForSequenceClassification,
        ModernBertModel,
        MPNetConfig,
        MPNetForSequenceClassification,
        MPNetModel,
        NomicBertConfig,
        NomicBertModel,
        Qwen2Config,
        Qwen2Model,
        Qwen3Config,
        Qwen3ForSequenceClassification,
        Qwen3Model,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaModel,
    )

    root.mkdir(parents=True, exist_ok=True)
    common = dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128)

    bert_tok = wordpiece()
    bert_special = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")

    def bert_config(**extra):
        return BertConfig(vocab_size=bert_tok.get_vocab_size(), max_position_embeddings=MAX_POSITIONS, **common, **extra)

    embedding_fixture(root, "bert", "bert", bert_config(), BertModel, bert_tok, bert_special, "mean", True)
    classifier_fixture(root, "bert-classifier", "bert", bert_config(), BertForSequenceClassification, bert_tok, bert_special, ["negative", "neutral", "positive"])
    classifier_fixture(root, "bert-reranker", "bert", bert_config(), BertForSequenceClassification, bert_tok, bert_special, ["LABEL_0"])
    splade_fixture(root, "bert-splade", bert_config(), bert_tok, bert_special)

    distil_config = lambda: DistilBertConfig(
        vocab_size=bert_tok.get_vocab_size(), max_position_embeddings=MAX_POSITIONS, n_layers=2, n_heads=2, dim=64, hidden_dim=128, pad_token_id=0
    )
    embedding_fixture(root, "distilbert", "distilbert", distil_config(), DistilBertModel, bert_tok, bert_special, "mean", True)
    classifier_fixture(root, "distilbert-classifier", "distilbert", distil_config(), DistilBertForSequenceClassification, bert_tok, bert_special, ["NEGATIVE", "POSITIVE"])

    mpnet_tok = wordpiece(specials=("<s>", "<pad>", "</s>", "<unk>", "<mask>"), roberta_style=True)
    mpnet_special = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    mpnet_config = lambda: MPNetConfig(
        vocab_size=mpnet_tok.get_vocab_size(), max_position_embeddings=MAX_POSITIONS + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common
    )
    embedding_fixture(root, "mpnet", "mpnet", mpnet_config(), MPNetModel, mpnet_tok, mpnet_special, "mean", True)
    classifier_fixture(root, "mpnet-classifier", "mpnet", mpnet_config(), MPNetForSequenceClassification, mpnet_tok, mpnet_special, ["contradiction", "entailment", "neutral"])

    xlmr_tok = unigram()
    xlmr_special = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    xlmr_config = lambda: XLMRobertaConfig(
        vocab_size=xlmr_tok.get_vocab_size(), max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common
    )
    embedding_fixture(root, "xlm-roberta", "xlm-roberta", xlmr_config(), XLMRobertaModel, xlmr_tok, xlmr_special, "cls", True)
    classifier_fixture(root, "xlm-roberta-reranker", "xlm-roberta", xlmr_config(), XLMRobertaForSequenceClassification, xlmr_tok, xlmr_special, ["LABEL_0"])

    mb_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    mb_tok = byte_bpe(mb_specials, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]")
    mb_special = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    mb_config = lambda **extra: ModernBertConfig(
        vocab_size=mb_tok.get_vocab_size(),
        max_position_embeddings=MAX_POSITIONS,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        global_attn_every_n_layers=2,
        local_attention=8,  # window |i - j| <= 4: far shorter than the inputs, so it matters
        pad_token_id=mb_tok.token_to_id("[PAD]"),
        cls_token_id=mb_tok.token_to_id("[CLS]"),
        sep_token_id=mb_tok.token_to_id("[SEP]"),
        bos_token_id=mb_tok.token_to_id("[CLS]"),
        eos_token_id=mb_tok.token_to_id("[SEP]"),
        **extra,
    )
    embedding_fixture(root, "modernbert", "modernbert", mb_config(), ModernBertModel, mb_tok, mb_special, "mean", True)
    classifier_fixture(root, "modernbert-classifier", "modernbert", mb_config(classifier_pooling="mean"), ModernBertForSequenceClassification, mb_tok, mb_special, ["negative", "positive"])

    qwen_tok = byte_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "$A <|endoftext|>", qwen=True)
    qwen_special = dict(pad_token="<|endoftext|>", eos_token="<|im_end|>")
    qwen_common = dict(
        vocab_size=qwen_tok.get_vocab_size(),
        max_position_embeddings=MAX_POSITIONS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        pad_token_id=qwen_tok.token_to_id("<|endoftext|>"),
    )
    prompts = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:", "document": ""}
    prompt_texts = [("query", ["what is a sealed model?", "capital of France"]), ("document", ["Paris is the capital of France."])]
    embedding_fixture(
        root, "qwen3", "qwen3", Qwen3Config(head_dim=16, rope_theta=1000000.0, **qwen_common), Qwen3Model, qwen_tok, qwen_special,
        "lasttoken", True, padding_side="left", prompts=prompts, prompt_texts=prompt_texts,
    )
    embedding_fixture(
        root, "qwen2", "qwen2", Qwen2Config(rope_theta=10000.0, **qwen_common), Qwen2Model, qwen_tok, qwen_special,
        "lasttoken", True, padding_side="left",
    )
    classifier_fixture(
        root, "qwen3-classifier", "qwen3", Qwen3Config(head_dim=16, **qwen_common), Qwen3ForSequenceClassification, qwen_tok,
        qwen_special, ["no", "yes"], with_pairs=False, padding_side="left",
    )

    gte_config = lambda: GteConfig(
        vocab_size=xlmr_tok.get_vocab_size(), max_position_embeddings=MAX_POSITIONS, type_vocab_size=1, pad_token_id=1, **common
    )
    embedding_fixture(root, "gte", "gte", gte_config(), GteModel, xlmr_tok, xlmr_special, "cls", True)
    classifier_fixture(root, "gte-reranker", "gte", gte_config(), GteForSequenceClassification, xlmr_tok, xlmr_special, ["LABEL_0"])

    nomic_config = NomicBertConfig(vocab_size=bert_tok.get_vocab_size(), max_position_embeddings=MAX_POSITIONS, **common)
    embedding_fixture(root, "nomic-bert", "nomic-bert", nomic_config, NomicBertModel, bert_tok, bert_special, "mean", True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tests/data/families"))
