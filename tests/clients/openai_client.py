"""The official `openai` client against sealserve's /v1 routes (tests/clients.rs runs this)."""

import base64
import struct

import openai

from common import assert_close, golden, main, normalized


def run(base, reference):
    data = golden(reference)
    texts = [i["text"] for i in data["inputs"]]
    expected = [i["embedding"] for i in data["inputs"]]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    checks = []

    # The client's default: it asks for base64 and decodes it itself.
    response = client.embeddings.create(input=texts, model=data["model"])
    assert [d.index for d in response.data] == list(range(len(texts)))
    for item, want in zip(response.data, expected):
        assert_close(item.embedding, want, f"default encoding, input {item.index}")
    assert response.usage.prompt_tokens == sum(i["num_tokens"] for i in data["inputs"])
    assert response.model == data["model"]
    checks.append("embeddings.create (client default encoding)")

    response = client.embeddings.create(input=texts, model="any-name", encoding_format="float")
    for item, want in zip(response.data, expected):
        assert isinstance(item.embedding, list), type(item.embedding)
        assert_close(item.embedding, want, f"float, input {item.index}")
    assert response.model == "any-name", "the model name is echoed"
    checks.append("embeddings.create encoding_format=float")

    response = client.embeddings.create(input=texts[0], model="m", encoding_format="base64")
    raw = base64.b64decode(response.data[0].embedding)
    vector = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert_close(vector, expected[0], "base64")
    checks.append("embeddings.create encoding_format=base64")

    response = client.embeddings.create(input=texts, model="m", dimensions=128, encoding_format="float")
    for item, want in zip(response.data, expected):
        assert len(item.embedding) == 128
        assert_close(item.embedding, normalized(want[:128]), f"dimensions=128, input {item.index}")
    checks.append("embeddings.create dimensions=128")

    try:
        client.embeddings.create(input="x", model="m", dimensions=10_000)
        raise AssertionError("dimensions beyond the model's width must be refused")
    except openai.UnprocessableEntityError as error:
        assert error.status_code == 422
    checks.append("embeddings.create dimensions=10000 refused with 422")

    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [data["model"]], ids
    assert models.data[0].owned_by == "sealserve"
    assert client.models.retrieve(data["model"]).id == data["model"]
    try:
        client.models.retrieve("no-such-model")
        raise AssertionError("an unknown model id must be 404")
    except openai.NotFoundError:
        pass
    checks.append("models.list and models.retrieve")
    return checks


if __name__ == "__main__":
    main(run)
