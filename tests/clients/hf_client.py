"""`huggingface_hub.InferenceClient` against sealserve as a TEI endpoint (tests/clients.rs)."""

from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from common import assert_close, dot, golden, main


def run(base, reference):
    data = golden(reference)
    inputs = data["inputs"]
    texts = [i["text"] for i in inputs]
    client = InferenceClient(base_url=base)
    checks = []

    # POST / with {"inputs": ...}: TEI's default route for an embedding model.
    vectors = client.feature_extraction(texts)
    assert vectors.shape == (len(texts), len(inputs[0]["embedding"])), vectors.shape
    for vector, item in zip(vectors, inputs):
        assert_close(vector.tolist(), item["embedding"], f"feature_extraction input {item['index']}")
    single = client.feature_extraction(texts[0])
    assert single.shape == (1, len(inputs[0]["embedding"])), single.shape
    checks.append("feature_extraction (batch and single)")

    raw = [i for i in inputs if i.get("raw")]
    assert raw, "the reference has unnormalised vectors"
    vectors = client.feature_extraction([i["text"] for i in raw], normalize=False)
    for vector, item in zip(vectors, raw):
        assert_close(vector.tolist(), item["raw"]["mean_pooled_unnormalized"], "normalize=False")
    checks.append("feature_extraction normalize=False")

    long_text = "word " * 600
    try:
        client.feature_extraction(long_text, truncate=False)
        raise AssertionError("an over-long input with truncate=False must be refused")
    except HfHubHTTPError as error:
        assert error.response.status_code == 422, error.response.status_code
    kept_start = client.feature_extraction("alpha " + long_text, truncate=True)
    kept_end = client.feature_extraction(
        "alpha " + long_text, truncate=True, truncation_direction="left"
    )
    assert kept_start.shape == kept_end.shape == (1, len(inputs[0]["embedding"]))
    assert abs(dot(kept_start[0], kept_end[0]) - 1.0) > 1e-6, "left and right truncation differ"
    checks.append("feature_extraction truncate and truncation_direction")

    source, others = inputs[0], inputs[1:4]
    expected = [dot(source["embedding"], o["embedding"]) for o in others]
    for url in (base, f"{base}/similarity"):
        scores = InferenceClient(base_url=url).sentence_similarity(
            source["text"], [o["text"] for o in others]
        )
        assert len(scores) == len(others)
        assert_close(scores, expected, f"sentence_similarity via {url}")
    checks.append("sentence_similarity (POST / and POST /similarity)")
    return checks


if __name__ == "__main__":
    main(run)
