"""Every OpenAI object a generation server answers with, validated by the `openai` package's own
pydantic models (tests/generate_http.rs and tests/generate_serve.rs run this with the server's
base URL and the reference folder). The client itself builds its objects without validation
(`construct`), so the raw JSON of each answer and of each server-sent event is validated here:
`ChatCompletion`, `ChatCompletionChunk` (every event, with and without usage), `Completion`
(whole and streamed), each with log-probabilities too, `Model` and the `/v1/models` list.

One documented gap in OpenAI's own typing: a streamed text completion's events carry
`"finish_reason": null` until the last (OpenAI's API sends exactly that), while `Completion`'s
choice types the field as required. Those events are validated with the null replaced, after
checking it was null and that the last event has a real reason."""

import json
import sys
from pathlib import Path

import urllib.request

import openai
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

WANT = "The answer to this classic math problem is 4."
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def request(base, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, headers={"content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=300)


def post(base, path, body):
    with request(base, path, body) as response:
        assert response.status == 200, response.status
        assert response.headers["content-type"].startswith("application/json"), response.headers
        return json.loads(response.read())


def get(base, path):
    with request(base, path) as response:
        assert response.status == 200, response.status
        return json.loads(response.read())


def events(base, path, body):
    """The JSON payloads of a server-sent event stream; asserts it ends with `[DONE]`."""
    out = []
    with request(base, path, body) as response:
        assert response.status == 200, response.status
        content_type = response.headers["content-type"]
        assert content_type.startswith("text/event-stream"), content_type
        for line in response:
            line = line.decode().rstrip("\r\n")
            if line.startswith("data:"):
                out.append(line[len("data:"):].strip())
    assert out and out[-1] == "[DONE]", out[-3:]
    return [json.loads(d) for d in out[:-1]]


def main():
    base, reference = sys.argv[1], sys.argv[2]
    golden = json.loads((Path(reference) / "smollm2_golden.json").read_text())
    gguf = next(r for r in golden["llama_cpp_gguf"]["greedy"] if r["name"] == "chat_template")
    prompt = next(r for r in golden["results"] if r["name"] == "chat_template")["prompt"]
    chat_body = {"model": "smollm2", "messages": MESSAGES, "temperature": 0, "max_tokens": 20}

    whole = ChatCompletion.model_validate(post(base, "/v1/chat/completions", chat_body))
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == WANT, whole
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == len(gguf["generated_ids"]), whole.usage
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    print("ok: ChatCompletion validates")

    for include_usage in (False, True):
        body = dict(chat_body, stream=True)
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        chunks = [ChatCompletionChunk.model_validate(e) for e in events(base, "/v1/chat/completions", body)]
        assert len({c.id for c in chunks}) == 1, "one id per stream"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == WANT, repr(text)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1]), finishes
        if include_usage:
            assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
            assert chunks[-1].usage.completion_tokens == len(gguf["generated_ids"])
            assert all(c.usage is None for c in chunks[:-1])
        else:
            assert all(c.usage is None for c in chunks)
        print(f"ok: every ChatCompletionChunk validates (include_usage={include_usage})")

    text_body = {"model": "smollm2", "prompt": prompt, "temperature": 0, "max_tokens": 20}
    completion = Completion.model_validate(post(base, "/v1/completions", text_body))
    assert completion.object == "text_completion"
    assert completion.choices[0].text == WANT, completion
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == len(gguf["prompt_ids"]), completion.usage
    print("ok: Completion validates")

    body = dict(text_body, stream=True, stream_options={"include_usage": True})
    raw = events(base, "/v1/completions", body)
    *texts, last, usage = raw
    for event in texts:
        assert event["choices"][0]["finish_reason"] is None, event
        event["choices"][0]["finish_reason"] = "stop"
    streamed = [Completion.model_validate(e) for e in texts + [last, usage]]
    assert last["choices"][0]["finish_reason"] == "stop", last
    assert "".join(c.choices[0].text for c in streamed if c.choices) == WANT
    assert streamed[-1].choices == [] and streamed[-1].usage.total_tokens > 0, usage
    print("ok: every streamed Completion validates")

    body = dict(chat_body, logprobs=True, top_logprobs=2)
    with_logprobs = ChatCompletion.model_validate(post(base, "/v1/chat/completions", body))
    content = with_logprobs.choices[0].logprobs.content
    assert "".join(t.token for t in content) == WANT, content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in content)
    chunks = [ChatCompletionChunk.model_validate(e)
              for e in events(base, "/v1/chat/completions", dict(body, stream=True))]
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert streamed == content, (streamed, content)
    print("ok: ChatCompletion and ChatCompletionChunk validate with logprobs")

    body = dict(text_body, logprobs=3)
    completion = Completion.model_validate(post(base, "/v1/completions", body))
    logprobs = completion.choices[0].logprobs
    assert "".join(logprobs.tokens) == WANT, logprobs
    assert len(logprobs.token_logprobs) == len(logprobs.text_offset) == len(logprobs.tokens)
    assert all(len(top) == 3 for top in logprobs.top_logprobs), logprobs.top_logprobs
    print("ok: Completion validates with logprobs")

    listing = get(base, "/v1/models")
    assert listing["object"] == "list", listing
    models = [Model.model_validate(m) for m in listing["data"]]
    assert len(models) == 1 and models[0].object == "model", models
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [models[0].id]
    assert Model.model_validate(get(base, f"/v1/models/{models[0].id}")) == models[0]
    print("ok: Model and the model list validate")


if __name__ == "__main__":
    main()
