"""OpenAI-style error bodies for every failure: {"error": {"message", "type", "param", "code"}}."""
import logging
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine.server.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger("engine.server")
SAMPLING_FIELDS = {"temperature", "top_p", "top_k", "min_tokens", "stop", "stop_token_ids", "seed"}
TYPE_TAGS = {"str", "int", "float", "bool", "none"}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         503: "overloaded_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or TYPES.get(status, "api_error")
        self.code, self.headers = code, headers


def error_body(message: str, kind: str, param: str | None, code: str | int | None) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=code))


def error_response(status: int, message: str, param: str | None = None, kind: str | None = None,
                   code: str | int | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = error_body(message, kind or TYPES.get(status, "api_error"), param, code)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def param_of(message: str, prompt_field: str, max_tokens_field: str) -> str | None:
    """The request field an engine ValueError is about: its messages start with the field's name."""
    word = m.group(0) if (m := re.match(r"[a-z_]+", message)) else ""
    if word == "prompt":
        return prompt_field
    if word == "max_tokens":
        return max_tokens_field
    return word if word in SAMPLING_FIELDS else None


def _is_field(loc: object) -> bool:
    """Pydantic names the union branch it tried in the location too; a request field never looks like one."""
    return isinstance(loc, int) or (str(loc).isidentifier() and loc not in TYPE_TAGS)


def _validation_message(err: dict) -> tuple[str, str | None]:
    loc = [str(x) for x in err.get("loc", ()) if x != "body" and _is_field(x)]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"malformed JSON body: {err.get('ctx', {}).get('error', 'cannot parse')}", None
    if not loc and kind in ("model_attributes_type", "dict_type", "missing"):
        return "the request body must be a JSON object (Content-Type: application/json)", None
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.kind, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        found = [_validation_message(err) for err in e.errors()] or [("invalid request", None)]
        param = found[0][1]
        same = list(dict.fromkeys(m for m, p in found if p == param))
        message = "; or ".join(same[:1] + [m.removeprefix(f"{param}: ") for m in same[1:4]])
        if others := len({p for _, p in found} - {param}):
            message += f" (and {others} more field{'s' if others > 1 else ''} with problems)"
        return error_response(400, message, param, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        phrase = HTTPStatus(e.status_code).phrase if e.status_code in HTTPStatus._value2member_map_ else "error"
        message = e.detail if isinstance(e.detail, str) and e.detail != phrase else \
            f"{phrase}: {request.method} {request.url.path}"
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}: {e}", kind="internal_error")
