"""Drives the official `openai` Python SDK for tests/openai_sdk.rs.

Reads one JSON command per line on stdin, `{"case": NAME, "base_url": URL}`, runs that case with the
SDK against `base_url` (a mock vLLM or the proxy in front of one) and writes one JSON line on stdout:
`{"case": NAME, "kind": "stream"|"json", "items": [...], "energy_headers": {...}}` where `items` are
the SDK's parsed objects (`to_dict()`, extra fields included), or `{"case": NAME, "error": TEXT}`.
`{"list": true}` answers with the case names. The Rust test makes every comparison.
"""

import json
import sys

import openai

CHAT_MESSAGES = [{"role": "user", "content": "say something short"}]
MAX_TOKENS = 5

# name -> (api, keyword arguments)
CASES = {
    "chat-stream-plain": ("chat", {"stream": True}),
    "chat-stream-options-empty": ("chat", {"stream": True, "stream_options": {}}),
    "chat-stream-usage": ("chat", {"stream": True, "stream_options": {"include_usage": True}}),
    "chat-stream-no-usage": ("chat", {"stream": True, "stream_options": {"include_usage": False}}),
    "chat-stream-n2": ("chat", {"stream": True, "n": 2}),
    "chat-stream-n2-usage": (
        "chat",
        {"stream": True, "n": 2, "stream_options": {"include_usage": True}},
    ),
    "chat-json": ("chat", {}),
    "chat-json-n2": ("chat", {"n": 2}),
    "completions-stream-plain": ("completions", {"stream": True}),
    "completions-stream-usage": (
        "completions",
        {"stream": True, "stream_options": {"include_usage": True}},
    ),
    "completions-json": ("completions", {}),
    "responses-stream": ("responses", {"stream": True}),
    "responses-json": ("responses", {}),
}


def energy_headers(headers):
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-energy-")}


def run(case, base_url):
    api, kwargs = CASES[case]
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=10.0)
    extra = {"extra_headers": {"X-Request-Id": f"sdk-{case}"}}
    if api == "chat":
        create = client.chat.completions.with_raw_response.create
        args = dict(model="tiny", messages=CHAT_MESSAGES, max_tokens=MAX_TOKENS, **kwargs, **extra)
    elif api == "completions":
        create = client.completions.with_raw_response.create
        args = dict(model="tiny", prompt="once upon a time", max_tokens=MAX_TOKENS, **kwargs, **extra)
    else:
        create = client.responses.with_raw_response.create
        args = dict(
            model="tiny", input="say something short", max_output_tokens=MAX_TOKENS, **kwargs, **extra
        )
    raw = create(**args)
    parsed = raw.parse()
    if kwargs.get("stream"):
        items = [chunk.to_dict() for chunk in parsed]
        kind = "stream"
    else:
        items = [parsed.to_dict()]
        kind = "json"
    return {"case": case, "kind": kind, "items": items, "energy_headers": energy_headers(raw.headers)}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        command = json.loads(line)
        if command.get("list"):
            answer = {"cases": list(CASES)}
        else:
            case = command["case"]
            try:
                answer = run(case, command["base_url"])
            except Exception as exc:  # reported to the Rust side, which fails the test
                answer = {"case": case, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
