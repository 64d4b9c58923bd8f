"""The OpenAI-compatible side of the ingress: `messages` → turns, and the response and chunk shapes
of `POST /v1/chat/completions` (stateless; `stream: true` gives server-sent events)."""
import json
from typing import Any

from serve.api.context import speaker
from serve.api.errors import ApiError
from serve.api.schemas import OpenAIRequest

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: Any) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


def request_turns(body: OpenAIRequest, max_chars: int) -> list[dict[str, str]]:
    """System messages are ignored (the persona is fixed); user messages speak as the first word
    of `name` (default `Guest`); the last message must be the user's."""
    turns = []
    for message in body.messages:
        if message.role in ("system", "developer"):
            continue
        text = message.text()
        if len(text) > max_chars:
            raise ApiError(413, "message_too_long", f"a message is over {max_chars} characters")
        turns.append({"speaker": "Chandler" if message.role == "assistant" else speaker(message.name), "text": text})
    if not turns or body.messages[-1].role != "user":
        raise ApiError(400, "invalid_request", "the last message must be the user's")
    return turns


def usage(result: dict[str, Any]) -> dict[str, int]:
    prompt, completion = result["prompt_tokens"], result["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(head: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {
        **head, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                     "finish_reason": result["finish_reason"]}],
        "usage": usage(result),
    }


async def completion_events(head: dict[str, Any], pieces):
    """Chunks: the role, the text pieces, the finish reason with the usage, then `[DONE]`.
    An error after the start is sent as an error event, and the stream ends without `[DONE]`."""
    chunk = {**head, "object": "chat.completion.chunk"}
    yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    async for item in pieces:
        if "delta" in item:
            yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": item["delta"]}, "finish_reason": None}]})
        elif "usage" in item:
            result = {**item["usage"], "finish_reason": item["finish_reason"]}
            yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": item["finish_reason"]}],
                       "usage": usage(result)})
        else:
            yield sse(item)
            return
    yield sse("[DONE]")
