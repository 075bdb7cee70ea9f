"""An HTTP server for a run folder (`cllmfs serve`): FastAPI, with concurrent requests merged into shared batches.

    POST /extract  {"texts": ["..."], "types"?: ["person"] | {"drug": "names of medicines"}, "threshold"?: 0.5}
                   -> {"entities": [[{"start", "end", "type", "text", "score"}, ...], ...]}  (one list per text)
    GET  /health   -> {"status": "ok"}
    GET  /info     -> the run's types, base model, formats, limits and versions

Requests that arrive within `max_wait_ms` of each other are answered by one `EntityExtractor.extract` call (up to
`max_batch_texts` texts), so that many small concurrent requests fill the model's batches as one large offline call
does (`MicroBatcher`). The model runs in one worker thread; the event loop keeps accepting requests meanwhile.
A bad request gets a 4xx and a one-line JSON error (`{"error": "..."}`) and never reaches the batch, so it cannot
fail the requests batched with it. With `api_key`, every request needs `Authorization: Bearer <key>`.
Needs the `[serve]` extra (`pip install 'cllmfs-trainer[serve]'`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cllmfs_trainer.errors import UserError
from cllmfs_trainer.files import control_character
from cllmfs_trainer.inference.extract import select_types
from cllmfs_trainer.inference.generate import EntityExtractor
from cllmfs_trainer.run_folder import RunFolder


class ExtractRequest(BaseModel):
    """The body of `POST /extract`."""

    texts: list[str] = Field(min_length=1)
    types: list[str] | dict[str, str] | None = None
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


@dataclass
class Limits:
    """What one request may ask, and how requests are merged.

    Args:
        max_texts (`int`, *optional*, defaults to `256`):
            Texts per request.
        max_chars (`int`, *optional*, defaults to `100_000`):
            Characters per request, all texts together.
        max_batch_texts (`int`, *optional*, defaults to `64`):
            Texts of merged requests answered by one model call.
        max_wait_ms (`float`, *optional*, defaults to `20`):
            How long the first request of a batch waits for others.
    """

    max_texts: int = 256
    max_chars: int = 100_000
    max_batch_texts: int = 64
    max_wait_ms: float = 20.0


@dataclass
class _Pending:
    texts: list[str]
    types: Any
    key: tuple
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Merges concurrent requests with the same types into one `extract` call, run in one worker thread."""

    def __init__(self, extractor: Any, limits: Limits) -> None:
        self.extractor, self.limits = extractor, limits
        self.queue: asyncio.Queue[_Pending] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cllmfs-model")
        self.calls = 0  # model calls so far (GET /info reports it; tests read it)

    async def extract(self, texts: list[str], types: Any, key: tuple) -> list[list[Any]]:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # started at the first request, on the server's event loop (anew on a new loop)
            self.loop, self.queue = loop, asyncio.Queue()
            self.task = loop.create_task(self._run())  # held: the loop keeps only weak references to tasks
        future = loop.create_future()
        await self.queue.put(_Pending(texts, types, key, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while sum(len(p.texts) for p in batch) < self.limits.max_batch_texts:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
                except TimeoutError:
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.key, []).append(pending)
            for members in groups.values():
                texts = [text for pending in members for text in pending.texts]
                try:
                    found = await loop.run_in_executor(self.worker, self._call, texts, members[0].types)
                except Exception as err:  # noqa: BLE001 - handed to every request of the group, which reports it
                    for pending in members:
                        if not pending.future.done():  # a client that went away cancelled its future
                            pending.future.set_exception(err)
                    continue
                for pending in members:
                    if not pending.future.done():
                        pending.future.set_result(found[: len(pending.texts)])
                    found = found[len(pending.texts) :]

    def _call(self, texts: list[str], types: Any) -> list[list[Any]]:
        self.calls += 1
        return self.extractor.extract(texts, types=types)


def create_app(extractor: Any, info: dict[str, Any], limits: Limits | None = None, api_key: str | None = None):
    """The FastAPI application serving `extractor`.

    Args:
        extractor (`EntityExtractor`):
            The loaded run (`EntityExtractor.from_run`).
        info (`dict[str, Any]`):
            What `GET /info` reports about the run (types, base model, formats).
        limits (`Limits`, *optional*):
            Request limits and batching (defaults: `Limits()`).
        api_key (`str`, *optional*):
            Require `Authorization: Bearer <api_key>` on every request.
    """
    limits = limits or Limits()
    batcher = MicroBatcher(extractor, limits)
    app = FastAPI(title="cllmfs-trainer entity extraction", docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.middleware("http")
    async def bearer_token(request: Request, call_next):
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        return _error(400, f"{where}: {first['msg']}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def run_info() -> dict[str, Any]:
        return {**info, "limits": limits.__dict__, "model_calls": batcher.calls, "versions": _versions()}

    @app.post("/extract")
    async def extract(body: ExtractRequest) -> Any:
        problem = _request_problem(body, limits)
        if problem:
            return _error(413 if "at most" in problem else 400, problem)
        if body.threshold is not None and not extractor.gives_scores:
            return _error(400, "threshold: this server's decoding gives no scores (unconstrained or sampling)")
        try:
            selected = select_types(body.types, extractor.known_types())
        except UserError as err:
            return _error(400, f"types: {err}")
        key = tuple((t.label, t.name, t.description) for t in selected)
        found = await batcher.extract(body.texts, selected, key)
        threshold = body.threshold
        return {
            "entities": [
                [e.as_dict() for e in entities if threshold is None or (e.score is not None and e.score >= threshold)]
                for entities in found
            ]
        }

    return app


def _request_problem(body: ExtractRequest, limits: Limits) -> str | None:
    """Why a request is refused before it reaches the model (the checks `extract` would make, per request)."""
    if len(body.texts) > limits.max_texts:
        return f"texts: {len(body.texts)} texts; at most {limits.max_texts} per request"
    if sum(map(len, body.texts)) > limits.max_chars:
        return f"texts: {sum(map(len, body.texts)):,} characters; at most {limits.max_chars:,} per request"
    for index, text in enumerate(body.texts):
        if control_character(text):
            return f"texts.{index}: contains the control character {control_character(text)!r}"
    return None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def _versions() -> dict[str, str]:
    names = ("cllmfs-trainer", "torch", "transformers", "peft")
    return {name: importlib.metadata.version(name) for name in names}


def app_for_run(run: RunFolder, limits: Limits, api_key: str | None = None, **extractor_kwargs: Any) -> FastAPI:
    """Load `run` once (`EntityExtractor.from_run` with `extractor_kwargs`) and make its application."""
    extractor = EntityExtractor.from_run(run.path, **extractor_kwargs)
    info = {
        "run": str(run.path),
        "base_model": run.base_model,
        "types": [vars(t) for t in run.test_types],
        "prompt_format": run.prompt_format,
        "answer_format": run.answer_format,
        "scores": extractor.gives_scores,
    }
    return create_app(extractor, info, limits, api_key)
