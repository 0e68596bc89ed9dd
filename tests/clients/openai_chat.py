"""The official `openai` client against a generation server's /v1/chat/completions
(tests/generate_http.rs runs this with the server's base URL and the reference folder):
greedy chat without and with streaming must give llama.cpp's golden text for the chat prompt;
log-probabilities come back; n=2 gives two choices; logit_bias bans a token; parameters the server cannot honour are
refused."""

import json
import sys
from pathlib import Path

import openai


def main():
    base, reference = sys.argv[1], sys.argv[2]
    golden = json.loads((Path(reference) / "smollm2_golden.json").read_text())
    chat = next(r for r in golden["llama_cpp_gguf"]["greedy"] if r["name"] == "chat_template")
    want = "The answer to this classic math problem is 4."
    messages = [{"role": "user", "content": "What is 2+2?"}]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

    response = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=20
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant", choice.message
    assert choice.message.content == want, repr(choice.message.content)
    assert choice.finish_reason == "stop", choice.finish_reason
    assert response.usage.completion_tokens == len(chat["generated_ids"]), response.usage
    assert response.usage.prompt_tokens == len(chat["prompt_ids"]), response.usage
    print("ok: chat.completions.create")

    stream = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == want, repr(text)
    assert finish == "stop", finish
    assert usage is not None and usage.completion_tokens == len(chat["generated_ids"]), usage
    print("ok: chat.completions.create(stream=True)")

    response = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=20,
        logprobs=True, top_logprobs=2,
    )
    content = response.choices[0].logprobs.content
    assert "".join(t.token for t in content) == want, content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content), content
    print("ok: chat.completions.create(logprobs=True, top_logprobs=2)")

    response = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=20, n=2
    )
    assert [c.index for c in response.choices] == [0, 1], response.choices
    assert all(c.message.content == want for c in response.choices), response.choices
    assert response.usage.completion_tokens == 2 * len(chat["generated_ids"]), response.usage
    print("ok: chat.completions.create(n=2)")

    response = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0,
        max_tokens=len(chat["generated_ids"]) + 3, extra_body={"ignore_eos": True},
    )
    assert response.choices[0].finish_reason == "length", response
    assert response.choices[0].message.content.startswith(want), response
    print("ok: vLLM's ignore_eos through extra_body")

    first = str(chat["generated_ids"][0])
    banned = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=3,
        logit_bias={first: -100},
    ).choices[0].message.content
    assert not want.startswith(banned), repr(banned)
    print("ok: chat.completions.create(logit_bias=...) bans a token")

    for extra, name in (
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ):
        try:
            client.chat.completions.create(model="smollm2", messages=messages, max_tokens=5, **extra)
        except openai.UnprocessableEntityError as e:
            assert name in str(e), e
        else:
            raise AssertionError(f"{name} accepted and ignored")
    print("ok: tools and response_format refused, not ignored")

    try:
        client.chat.completions.create(model="smollm2", messages=[], max_tokens=5)
    except openai.UnprocessableEntityError as e:
        assert "messages" in str(e), e
    else:
        raise AssertionError("empty messages accepted")
    print("ok: errors in OpenAI's shape")


if __name__ == "__main__":
    main()
