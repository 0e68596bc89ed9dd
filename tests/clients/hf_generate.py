"""huggingface_hub.InferenceClient against a generation server (tests/generate_serve.rs runs
this with the server's base URL and the reference folder): chat_completion (OpenAI route) and
text_generation (TGI's POST /, with and without streaming, details and top_n_tokens) must give
llama.cpp's greedy answer to the golden chat prompt (same GGUF)."""

import json
import sys
from pathlib import Path

from huggingface_hub import InferenceClient


def main():
    base, reference = sys.argv[1], sys.argv[2]
    golden = json.loads((Path(reference) / "smollm2_golden.json").read_text())
    chat = next(r for r in golden["results"] if r["name"] == "chat_template")
    gguf = next(r for r in golden["llama_cpp_gguf"]["greedy"] if r["name"] == "chat_template")
    want = "The answer to this classic math problem is 4."
    messages = [{"role": "user", "content": "What is 2+2?"}]
    client = InferenceClient(base_url=base, api_key="unused")

    out = client.chat_completion(messages=messages, max_tokens=20, temperature=0)
    assert out.choices[0].message.content == want, out
    assert out.choices[0].finish_reason == "stop", out
    print("ok: chat_completion")

    text = ""
    for chunk in client.chat_completion(messages=messages, max_tokens=20, temperature=0, stream=True):
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == want, repr(text)
    print("ok: chat_completion(stream=True)")

    generator = InferenceClient(model=base, api_key="unused")
    prompt = chat["prompt"]
    text = generator.text_generation(prompt, max_new_tokens=20)
    assert text == want, repr(text)
    print("ok: text_generation")

    detailed = generator.text_generation(prompt, max_new_tokens=20, details=True)
    assert detailed.generated_text == want, detailed
    assert detailed.details.finish_reason == "eos_token", detailed.details
    assert [t.id for t in detailed.details.tokens] == gguf["generated_ids"], detailed.details
    assert detailed.details.generated_tokens == len(gguf["generated_ids"]), detailed.details
    print("ok: text_generation(details=True)")

    streamed = "".join(generator.text_generation(prompt, max_new_tokens=20, stream=True))
    assert streamed == want, repr(streamed)
    events = list(generator.text_generation(prompt, max_new_tokens=20, stream=True, details=True))
    assert [e.token.id for e in events] == gguf["generated_ids"], events
    assert events[-1].generated_text == want, events[-1]
    assert events[-1].details.finish_reason == "eos_token", events[-1]
    print("ok: text_generation(stream=True)")

    # huggingface_hub leaves details.top_tokens (a list of lists) as dicts, and parses the
    # streamed events' top_tokens into objects: read either.
    def field(token, name):
        return token[name] if isinstance(token, dict) else getattr(token, name)

    top = generator.text_generation(prompt, max_new_tokens=20, details=True, top_n_tokens=3)
    assert len(top.details.top_tokens) == len(top.details.tokens), top.details
    for chosen, alternatives in zip(top.details.tokens, top.details.top_tokens):
        assert len(alternatives) == 3, alternatives
        assert field(alternatives[0], "id") == chosen.id, (chosen, alternatives)  # greedy
        logprobs = [field(a, "logprob") for a in alternatives]
        assert logprobs == sorted(logprobs, reverse=True), alternatives
    events = list(generator.text_generation(
        prompt, max_new_tokens=20, stream=True, details=True, top_n_tokens=2))
    assert [e.token.id for e in events] == gguf["generated_ids"], events
    for e in events:
        assert len(e.top_tokens) == 2 and field(e.top_tokens[0], "id") == e.token.id, e
    print("ok: text_generation(top_n_tokens=...)")

    cut = generator.text_generation(prompt, max_new_tokens=3, details=True)
    assert cut.details.finish_reason == "length" and cut.details.generated_tokens == 3, cut
    print("ok: max_new_tokens")


if __name__ == "__main__":
    main()
