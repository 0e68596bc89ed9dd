"""schemathesis hooks for fuzzing a generation server (tests/generate_http.rs): every generated
request that would run the model gets at most 4 new tokens, so a few hundred requests take
minutes on a CPU rather than each generating up to the context length. Only a value that is
absent, null or a valid count is changed (to a valid count): a negative case that is invalid
because of it stays invalid, and every other field is left as schemathesis generated it."""

import schemathesis

MOST_TOKENS = 4


def is_count(value):
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return whole and not isinstance(value, bool) and value >= 1


def clamp(body, field):
    if not isinstance(body, dict):
        return
    value = body.get(field)
    if value is None:
        body[field] = MOST_TOKENS
    elif is_count(value):
        # JSON Schema counts 7.0 as an integer; keep the kind schemathesis chose.
        body[field] = type(value)(min(value, MOST_TOKENS))


def clamp_openai(body):
    """`max_completion_tokens` wins over `max_tokens` when set."""
    clamp(body, "max_tokens")
    if isinstance(body, dict) and body.get("max_completion_tokens") is not None:
        clamp(body, "max_completion_tokens")


@schemathesis.hook
def before_call(context, case, **kwargs):
    path = case.operation.path
    body = case.body
    if path in ("/v1/chat/completions", "/v1/completions"):
        clamp_openai(body)
    elif path in ("/generate", "/generate_stream", "/"):
        if isinstance(body, dict) and isinstance(body.get("parameters", {}), dict):
            body.setdefault("parameters", {})
            clamp(body["parameters"], "max_new_tokens")
    elif path == "/model":
        if isinstance(body, dict):
            clamp_openai(body.get("request"))
