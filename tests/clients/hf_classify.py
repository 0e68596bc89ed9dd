"""`huggingface_hub.InferenceClient.text_classification` against a sealserve classifier bundle
served in-process (tests/family_clients.rs): POST / of a classifier is TEI's /predict."""

import json
import math
import sys
from pathlib import Path

from huggingface_hub import InferenceClient

TOLERANCE = 1e-5


def softmax(logits):
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def main():
    base, fixture = sys.argv[1], Path(sys.argv[2])
    reference = json.loads((fixture / "reference.json").read_text())
    labels = reference["id2label"]
    client = InferenceClient(base_url=base)
    worst = 0.0
    for item in reference["inputs"]:
        scores = dict(zip(labels, softmax(item["logits"])))
        got = client.text_classification(item["text"])
        # TEI answers one input with a flat list; this client version then returns its first
        # (highest) element rather than the list.
        top = got[0] if isinstance(got, list) else got
        best = max(scores, key=scores.get)
        assert top.label == best, f"{item['text']!r}: top label {top.label}, expected {best}"
        worst = max(worst, abs(top.score - scores[best]))
    assert worst <= TOLERANCE, f"text_classification differs from transformers by {worst}"
    print(f"ok: text_classification top label and score, max abs diff {worst:.2e}")


if __name__ == "__main__":
    main()
