"""Server-sent events of a streamed completion, rendered byte for byte as the pydantic chunks in protocol.py render.

A stream's envelope (id, object, created, model, usage) is the same in every chunk, so it is rendered once per request
and each token only JSON-encodes its text: a pydantic chunk per token cost the event loop ~12 us of the ~60 us it
spends per streamed token. protocol.py's chunk models stay the schema; tests/test_server_sse.py holds the two equal.
"""
import json

from engine.outputs import RequestOutput

# pydantic's model_dump_json spelling: no spaces, UTF-8 left unescaped; a str goes straight to the C encoder.
to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
DONE = "data: [DONE]\n\n"
NO_FINISH = ',"logprobs":null,"finish_reason":null,"stop_reason":null}]'


def sse(data: str) -> str:
    return f"data: {data}\n\n"


def finish_fields(finish_reason: str | None, stop_reason: str | int | None) -> str:
    return f',"logprobs":null,"finish_reason":{to_json(finish_reason)},"stop_reason":{to_json(stop_reason)}}}]'


def usage_json(out: RequestOutput) -> str:
    p, c = out.num_prompt_tokens, out.num_output_tokens
    return (f'{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{p + c},'
            f'"prompt_tokens_details":{{"cached_tokens":{out.metrics.num_cached_tokens}}}}}')


class ChunkRenderer:
    """The envelope both endpoints share, rendered once for a request."""

    def __init__(self, obj: str, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self.head = (f'data: {{"id":{to_json(request_id)},"object":"{obj}","created":{int(created)},'
                     f'"model":{to_json(model)},"choices":[')
        # Without include_usage the field is left out (as exclude={"usage"} does), not sent as null.
        self.tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self.include_usage = include_usage

    def usage(self, out: RequestOutput) -> str:
        return f'{self.head}],"usage":{usage_json(out)}}}\n\n' if self.include_usage else ""


class ChatChunks(ChunkRenderer):
    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        super().__init__("chat.completion.chunk", request_id, created, model, include_usage)
        self.content_head = f'{self.head}{{"index":0,"delta":{{"content":'
        self.content_tail = f"}}{NO_FINISH}{self.tail}"

    def role(self) -> str:
        return f'{self.head}{{"index":0,"delta":{{"role":"assistant","content":""}}{NO_FINISH}{self.tail}'

    def content(self, text: str) -> str:
        return f"{self.content_head}{to_json(text)}{self.content_tail}"

    def render(self, out: RequestOutput) -> str:
        """What one engine output becomes: its text, and at the end the finish reason and the usage."""
        text = self.content(out.new_text) if out.new_text else ""
        if not out.finished:
            return text
        finish = f'{self.head}{{"index":0,"delta":{{}}{finish_fields(out.finish_reason, out.stop_reason)}{self.tail}'
        return f"{text}{finish}{self.usage(out)}"


class CompletionChunks(ChunkRenderer):
    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        super().__init__("text_completion", request_id, created, model, include_usage)
        self.text_head = f'{self.head}{{"index":0,"text":'

    def render(self, out: RequestOutput) -> str:
        if not out.finished:
            if not out.new_text:
                return ""
            fields = NO_FINISH if out.stop_reason is None else finish_fields(None, out.stop_reason)
            return f"{self.text_head}{to_json(out.new_text)}{fields}{self.tail}"
        fields = finish_fields(out.finish_reason, out.stop_reason)
        return f"{self.text_head}{to_json(out.new_text)}{fields}{self.tail}{self.usage(out)}"
