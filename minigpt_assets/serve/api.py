"""The OpenAI-compatible HTTP API over `engine.Engine` (FastAPI): `GET /v1/models`, `POST /v1/chat/completions`
(the tokenizer's chat template), `POST /v1/completions`, each with `stream: true` as server-sent events the way
the OpenAI API sends them (chunks, the last one carrying the usage, a usage chunk of its own when
`stream_options.include_usage` asks for it, then `data: [DONE]`); and the chat page at `/`.

Bad requests (malformed JSON, an unknown model, a prompt longer than the context, `max_tokens` out of range, a
wrong type) get HTTP 400 with an OpenAI-style error object; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.requests import Request as HTTPRequest  # at module level: FastAPI resolves the annotations here
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from minigpt_assets.serve.engine import Engine, Params, Request

PAGE = Path(__file__).with_name("chat.html")


class APIError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # other OpenAI fields (user, logit_bias, ...) are accepted, unused

    model: str
    stream: bool = False
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream_options: dict | None = None
    ignore_eos: bool = False  # an extension (vLLM's name): exactly max_tokens tokens, for load tests


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[_Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str


def _error_body(e: APIError) -> dict:
    return {"error": {"message": e.message, "type": "invalid_request_error", "param": e.param, "code": e.code}}


def create_app(engine: Engine, tokenizer, model_name: str, max_tokens_limit: int = 1024,
               default_max_tokens: int = 256):
    """The FastAPI app serving `engine` as `model_name`."""
    app = FastAPI(title="minigpt serve", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_request, e: APIError):
        return JSONResponse(_error_body(e), status_code=e.status)

    async def _parse(request: HTTPRequest, schema: type[BaseModel]):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError("the body must be a JSON object", code="invalid_json")
        try:
            req = schema.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(x) for x in err["loc"])
            raise APIError(f"{param}: {err['msg']}", param=param, code="invalid_value") from None
        if req.model != model_name:
            raise APIError(f"model {req.model!r} is not served here (serving {model_name!r})", param="model",
                           code="model_not_found")
        if req.n != 1:
            raise APIError("only n = 1 is supported", param="n", code="invalid_value")
        return req

    def _params(req: _Sampling, prompt_tokens: int, field: str) -> Params:
        limit = min(max_tokens_limit, engine.context - prompt_tokens)
        want = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if limit < 1:
            raise APIError(f"the prompt is {prompt_tokens} tokens; the model's context is {engine.context}",
                           param=field, code="context_length_exceeded")
        if want is not None and not 1 <= want <= max_tokens_limit:
            raise APIError(f"max_tokens must be between 1 and {max_tokens_limit}", param="max_tokens",
                           code="invalid_value")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise APIError("at most 4 stop sequences", param="stop", code="invalid_value")
        return Params(max_tokens=min(want or default_max_tokens, limit), temperature=req.temperature,
                      top_p=req.top_p, stop=stop, seed=req.seed, ignore_eos=req.ignore_eos)

    async def _run(http: HTTPRequest, prompt_ids: list[int], params: Params, kind: str, stream: bool,
                   include_usage: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(k, p) -> None:  # from the engine thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (k, p))
            except RuntimeError:  # the event loop is closed (shutting down): nobody is listening
                pass

        req = Request(prompt_ids, params, emit)
        engine.submit(req)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if kind == "chat" else "text_completion"
        base = {"id": rid, "created": int(time.time()), "model": model_name}

        def usage(done: dict) -> dict:
            return {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"],
                    "total_tokens": done["prompt_tokens"] + done["completion_tokens"]}

        if not stream:
            done = None
            try:
                while done is None:
                    try:
                        k, p = await asyncio.wait_for(events.get(), timeout=0.5)
                    except asyncio.TimeoutError:
                        if await http.is_disconnected():  # a plain request is not cancelled by the server
                            return JSONResponse({}, status_code=499)
                        continue
                    if k == "error":
                        raise APIError(p, code="server_error", status=500)
                    if k == "done":
                        done = p
            finally:  # a client that went away frees its row at the next decode step
                req.cancelled = done is None
            p = done
            choice = ({"index": 0, "message": {"role": "assistant", "content": p["text"]},
                       "finish_reason": p["finish_reason"], "logprobs": None} if kind == "chat" else
                      {"index": 0, "text": p["text"], "finish_reason": p["finish_reason"], "logprobs": None})
            return JSONResponse({**base, "object": obj, "choices": [choice], "usage": usage(p)})

        chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta: str | None, finish: str | None, role: bool = False, extra: dict | None = None) -> str:
            if kind == "chat":
                d = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
                c = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                c = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return f"data: {json.dumps({**base, 'object': chunk_obj, 'choices': [c], **(extra or {})})}\n\n"

        async def events_stream():
            finished = False
            try:
                if kind == "chat":
                    yield chunk(None, None, role=True)
                while not finished:
                    k, p = await events.get()
                    if k == "delta":
                        yield chunk(p, None)
                        continue
                    finished = True
                    if k == "error":
                        yield f"data: {json.dumps(_error_body(APIError(p, code='server_error')))}\n\n"
                        break
                    # the usage rides on the last chunk (so every response has it); with stream_options.include_usage
                    # it also comes as OpenAI sends it, a chunk of its own with no choices
                    yield chunk(None, p["finish_reason"], extra={"usage": usage(p)})
                    if include_usage:
                        yield f"data: {json.dumps({**base, 'object': chunk_obj, 'choices': [], 'usage': usage(p)})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # a client that went away frees its row at the next decode step
                req.cancelled = not finished

        return StreamingResponse(events_stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _include_usage(req: _Sampling) -> bool:
        return bool((req.stream_options or {}).get("include_usage", False))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "minigpt-assets", "context_length": engine.context}]}

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest):
        req = await _parse(request, ChatRequest)
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(f"{model_name} has no chat template; use /v1/completions", code="no_chat_template")
        text = tokenizer.apply_chat_template([m.model_dump() for m in req.messages], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return await _run(request, ids, _params(req, len(ids), "messages"), "chat", req.stream, _include_usage(req))

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        req = await _parse(request, CompletionRequest)
        ids = tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise APIError("the prompt encodes to no tokens", param="prompt", code="invalid_value")
        return await _run(request, ids, _params(req, len(ids), "prompt"), "completion", req.stream, _include_usage(req))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text()

    return app
