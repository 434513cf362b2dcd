"""`seqgraph serve`: a run folder's `Predictor` behind an HTTP JSON API, on Starlette and
uvicorn (the optional extra `seqgraph[serve]`): a real ASGI server and framework, not
hand-parsed HTTP.

- `POST /predict {"inputs": [...], "sample"?, "temperature"?, "seed"?}` ->
  `{"outputs": [...], "unknown": n}` (the Predictor's records, in order);
- `GET /health` -> `{"status": "ok"}`; `GET /info` -> the Predictor's `info()`.

Every refusal is a JSON `{"error": "what, and the fix"}` with a 4xx status: 400 bad JSON or
Content-Length, 413 a body over `max_body`, 415 a body that is not JSON, 422 a request of the
wrong shape (inputs not a non-empty list, an item of the wrong type, too many inputs, an input
too long, a bad option) or one the model refuses (`SeqgraphError`), 404/405 an unknown path or
method. The plan is not thread-safe, so one Predictor serves every request under one lock; the
forward pass runs in a worker thread so the event loop keeps answering (`/health` included).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from seqgraph.errors import SeqgraphError, one_line
from seqgraph.predict import Predictor, load

OPTIONS = ("inputs", "sample", "temperature", "seed")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """What one request may hold: inputs, body bytes, characters (or items) per input."""

    max_inputs: int = 256
    max_body: int = 1_000_000
    max_input_chars: int = 10_000


class Refused(Exception):
    """A request the server answers with `status` and a one-line `{"error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, one_line(message)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past `limit` bytes by its Content-Length or, when that lies or
    is absent (chunked), by the bytes streamed so far."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refused(400, f"Content-Length {declared[:20]!r} is not a number of bytes")
        if int(declared) > limit:
            raise Refused(413, f"the body is {declared} bytes, over {limit}; {_split_hint()}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body is over {limit} bytes; {_split_hint()}")
        chunks.append(chunk)
    return b"".join(chunks)


def _split_hint() -> str:
    return "send fewer inputs a request, or start the server with a larger --max-body"


def parse_json(body: bytes, content_type: str | None) -> object:
    """The request's JSON document (415 when it says it is something else, 400 unreadable)."""
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise Refused(
            415,
            f"the body is {kind}, not JSON; send Content-Type: application/json "
            "(curl: -H 'Content-Type: application/json')",
        )
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        message = f'the body is not valid JSON ({exc}); send {{"inputs": [...]}}'
        raise Refused(400, message) from None
    except RecursionError:
        raise Refused(400, "the JSON is nested too deeply; send a flat list of inputs") from None


def check_request(document: object, info: dict, limits: Limits) -> dict:
    """The predict arguments of a request document, or `Refused` (422) saying what to fix."""
    if not isinstance(document, dict):
        raise Refused(422, 'the body must be a JSON object: {"inputs": [...]}')
    unknown = sorted(set(document) - set(OPTIONS))
    if unknown:
        raise Refused(422, f"unknown field {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    if "inputs" not in document:
        raise Refused(422, 'missing "inputs"; send {"inputs": ["a text", ...]}')
    inputs = document["inputs"]
    if not isinstance(inputs, list):
        raise Refused(422, f'"inputs" must be a list, not {_kind(inputs)}; wrap it in [...]')
    if not inputs:
        raise Refused(422, '"inputs" is empty; send at least one input')
    if len(inputs) > limits.max_inputs:
        raise Refused(
            422,
            f'"inputs" holds {len(inputs)} items, over {limits.max_inputs}; send fewer a '
            "request, or start the server with a larger --max-inputs",
        )
    for index, item in enumerate(inputs):
        check_item(item, index, info, limits)
    return {"inputs": inputs, **check_options(document)}


def check_item(item: object, index: int, info: dict, limits: Limits) -> None:
    """One input: a string, or a list of ids (ids models) or of numbers (vector models)."""
    where = f"inputs[{index}]"
    if isinstance(item, (str, list)) and len(item) > limits.max_input_chars:
        raise Refused(
            422,
            f"{where} is {len(item)} characters or items long, over {limits.max_input_chars}; "
            "shorten it, or start the server with a larger --max-input-chars",
        )
    ids = info["input"].split()[0] == "ids"
    if isinstance(item, str):
        if not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(
                    422, f"{where} holds an unpaired surrogate (\\ud800-\\udfff); send valid text"
                ) from None
        return
    if item == []:
        raise Refused(422, f"{where} is an empty list; give at least one id or number")
    if ids:
        size = info["vocab_size"]
        if not isinstance(item, list) or not all(_is_int(i) and 0 <= i < size for i in item):
            raise Refused(
                422,
                f"{where} is {_kind(item)}; this model reads text: give a string, or a list "
                f"of ids from 0 to {size - 1}",
            )
    elif not isinstance(item, list) or not _numbers(item):
        raise Refused(
            422,
            f"{where} is {_kind(item)}; this model reads vectors: give a list of numbers or "
            "of lists of numbers (e.g. [[0.1, 0.2], [0.3, 0.4]])",
        )


def check_options(document: dict) -> dict:
    """`sample` (bool), `temperature` (> 0), `seed` (0 .. 2**63-1), defaults as predict's."""
    options = {}
    if "sample" in document:
        if not isinstance(document["sample"], bool):
            raise Refused(422, f'"sample" must be true or false, not {_kind(document["sample"])}')
        options["sample"] = document["sample"]
    if "temperature" in document:
        value = document["temperature"]
        if not (_is_number(value) and math.isfinite(value) and value > 0):
            raise Refused(422, f'"temperature" must be a number above 0, not {value!r:.40}')
        options["temperature"] = float(value)
    if "seed" in document:
        value = document["seed"]
        if not (_is_int(value) and 0 <= value <= MAX_SEED):
            raise Refused(422, f'"seed" must be a whole number from 0 to {MAX_SEED}')
        options["seed"] = value
    return options


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(item: list) -> bool:
    """A list of numbers, or a list of lists of numbers (one vector a step)."""
    return all(
        _is_number(x) or (isinstance(x, list) and all(_is_number(v) for v in x)) for x in item
    )


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if _is_number(value) else type(value).__name__)


def create_app(predictor: Predictor, limits: Limits | None = None) -> Starlette:
    """The ASGI application of one Predictor (see the module docstring)."""
    limits = limits or Limits()
    info = predictor.info()
    lock = threading.Lock()  # the plan is not thread-safe: one forward pass at a time

    def run(arguments: dict) -> dict:
        with lock:
            outputs = predictor.predict(**arguments)
            return {"outputs": outputs, "unknown": predictor.unknown}

    async def predict(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, limits.max_body)
            document = parse_json(body, request.headers.get("content-type"))
            arguments = check_request(document, info, limits)
            return JSONResponse(await run_in_threadpool(run, arguments))
        except Refused as exc:
            return _error(exc.status, exc.message)
        except SeqgraphError as exc:
            return _error(422, str(exc))
        except (ValueError, TypeError, OverflowError) as exc:  # inputs numpy cannot shape
            return _error(422, f"the model cannot read these inputs ({exc}); check their shape")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def describe(request: Request) -> JSONResponse:
        return JSONResponse(info)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, f"no such path {request.url.path}; use /predict, /health or /info")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, str(exc.detail))

    async def crash(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}: {exc}); please report it")

    routes = [
        Route("/predict", predict, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", describe, methods=["GET"]),
    ]
    handlers = {HTTPException: http_error, Exception: crash}
    return Starlette(routes=routes, exception_handlers=handlers)


def serve(
    run_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    backend: str | None = None,
    checkpoint: str | None = None,
) -> None:
    """Load a run folder (at `checkpoint`, as `seqgraph.load`) and answer HTTP on host:port
    until interrupted."""
    app = create_app(load(run_dir, backend=backend, checkpoint=checkpoint), limits)
    uvicorn.run(app, host=host, port=port, log_level="info")
