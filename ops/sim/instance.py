"""One simulated vLLM server: its aiohttp app, engine, metrics, faults and listening socket.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics``, and admin routes for fault tests: ``POST /sim/kill`` (the
engine dies: health 503, completions 500), ``POST /sim/revive``, ``GET /sim/state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ops.sim.answers import Answer, AnswerPolicy, make_answer
from ops.sim.config import SimConfig
from ops.sim.engine import Engine, PrefixCache, Slot
from ops.sim.errors import EngineDeadError, SimRequestError, SimStartError
from ops.sim.faults import FaultPlan, status_error
from ops.sim.metrics import CONTENT_TYPE, EngineGauges, RequestRecord, SimMetrics
from ops.sim.payloads import ChunkWriter, completion_body, error_body, request_id
from ops.sim.protocol import RequestKind, SimRequest, decode_body, parse_request

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
LISTEN_BACKLOG = 2048
SHUTDOWN_TIMEOUT = 1.0
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _engine_dead_error() -> SimRequestError:
    return SimRequestError(500, str(EngineDeadError()), error_type="InternalServerError")


def _error_response(error: SimRequestError) -> web.Response:
    return web.Response(
        body=json.dumps(error_body(error)).encode(),
        status=error.status,
        headers=error.headers,
        content_type="application/json",
    )


def _json(payload: Any) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), content_type="application/json")


@dataclass
class _Run:
    """A request inside the batch: its slot and when its first token came out."""

    slot: Slot
    first_token_at: float | None = None
    failed: bool = False


class SimInstance:
    """A vLLM stand-in on one port; several share one event loop."""

    def __init__(
        self, config: SimConfig, *, on_death: Callable[[SimInstance], None] | None = None
    ) -> None:
        self.config = config
        self.engine = Engine(
            max_num_seqs=config.max_num_seqs,
            time_factor_under_load=config.time_factor_under_load,
        )
        self.metrics = SimMetrics(
            model=config.model,
            version=config.metrics_version,
            gauges=EngineGauges(
                running=lambda: float(self.engine.running),
                waiting=lambda: float(self.engine.waiting),
                kv_cache_usage=lambda: min(1.0, self.engine.kv_tokens / config.kv_cache_tokens),
            ),
        )
        self.policy = AnswerPolicy(
            seed=config.seed,
            output_tokens=config.output_tokens,
            max_model_len=config.max_model_len,
            invalid_json_rate=config.invalid_json_rate,
            control_char_rate=config.control_char_rate,
            whitespace_padding=config.whitespace_padding,
            run_on_strings=config.run_on_strings,
        )
        self.faults = FaultPlan(
            rate=config.fail_rate, kinds=config.fail_kinds, seed=config.seed, port=config.port
        )
        self.prefix_cache = PrefixCache()
        self.ready = False
        self.alive = True
        self.completion_requests = 0
        self.app = self._build_app()
        self._on_death = on_death
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._hangs: set[asyncio.Future[None]] = set()

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.config.host}:{self.config.port}"

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/sim/kill", self._kill)
        app.router.add_post("/sim/revive", self._revive)
        app.router.add_get("/sim/state", self._state)
        return app

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the port and serve (``/health`` is 503 until ``mark_ready``).

        Raises:
            SimStartError: the port cannot be bound.
        """
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        assert self._runner.server is not None
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._runner.server, self.config.host, self.config.port, backlog=LISTEN_BACKLOG
            )
        except OSError as e:
            await self._runner.cleanup()
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise SimStartError(f"cannot listen on {self.url}: {reason}") from e

    def mark_ready(self) -> None:
        """End the startup phase: ``/health`` turns 200."""
        self.ready = True

    async def stop(self) -> None:
        """Stop cleanly: fail in-flight work, close the socket and connections."""
        self.engine.kill()
        for hang in list(self._hangs):
            hang.cancel()
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def die(self) -> None:
        """Crash this instance: its port refuses connections and in-flight connections drop."""
        if not self.alive:
            return
        self.alive = False
        logger.warning("instance %s died after %d requests", self.url, self.completion_requests)
        self.engine.kill()
        if self._server is not None:
            self._server.close()
        if self._runner is not None and self._runner.server is not None:
            for connection in self._runner.server.connections:
                connection.force_close()
        if self._on_death is not None:
            self._on_death(self)

    # plain endpoints ---------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if self.ready and not self.engine.dead:
            return web.Response(status=200)
        return web.Response(status=503)

    async def _models(self, request: web.Request) -> web.Response:
        if not self.ready:
            return _error_response(self._starting_error())
        model = self.config.model
        card = {
            "id": model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [],
        }
        return _json({"object": "list", "data": [card]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _kill(self, request: web.Request) -> web.Response:
        self.engine.kill()
        return _json({"dead": True})

    async def _revive(self, request: web.Request) -> web.Response:
        self.engine.revive()
        return _json({"dead": False})

    async def _state(self, request: web.Request) -> web.Response:
        return _json(
            {
                "ready": self.ready,
                "dead": self.engine.dead,
                "running": self.engine.running,
                "waiting": self.engine.waiting,
                "completion_requests": self.completion_requests,
            }
        )

    # completions -------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "chat")

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "completion")

    async def _handle(self, request: web.Request, kind: RequestKind) -> web.StreamResponse:
        self.completion_requests += 1
        nth = self.completion_requests
        arrival = asyncio.get_running_loop().time()
        try:
            response = await self._answer(request, kind, arrival)
        except SimRequestError as e:
            response = _error_response(e)
        except EngineDeadError:
            response = _error_response(_engine_dead_error())
        if nth == self.config.die_after:
            await response.prepare(request)
            await response.write_eof()
            self.die()
        elif nth == self.config.dead_after:
            self.engine.kill()
        return response

    def _starting_error(self) -> SimRequestError:
        return SimRequestError(
            503, "The server is starting up.", error_type="ServiceUnavailableError"
        )

    async def _answer(
        self, request: web.Request, kind: RequestKind, arrival: float
    ) -> web.StreamResponse:
        if not self.ready:
            raise self._starting_error()
        if self.engine.dead:
            raise EngineDeadError
        body = decode_body(await request.read())
        sim_request = parse_request(
            body,
            kind,
            served_model=self.config.model,
            max_model_len=self.config.max_model_len,
            context_check=self.config.context_check,
        )
        fault = self.faults.draw()
        if fault is not None:
            return await self._inject(fault, request)
        answer = make_answer(sim_request, self.policy)
        if sim_request.stream:
            return await self._stream(request, sim_request, answer, arrival)
        return await self._complete(sim_request, answer, arrival)

    async def _inject(self, fault: str, request: web.Request) -> web.StreamResponse:
        """Fail on purpose: an HTTP error, a request never answered, or a reset connection."""
        if fault in ("429", "500", "503"):
            raise status_error(fault, self.config.retry_after)
        if fault == "reset":
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:  # linger 0: close sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
        hang: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hangs.add(hang)
        try:  # until the client gives up (the handler is cancelled) or the server stops
            await hang
        finally:
            self._hangs.discard(hang)
        raise asyncio.CancelledError

    @contextlib.asynccontextmanager
    async def _in_batch(
        self, sim_request: SimRequest, answer: Answer, arrival: float
    ) -> AsyncIterator[_Run]:
        """Hold a batch slot for the body of the block and record the request's metrics."""
        kv_tokens = sim_request.prompt_tokens + answer.completion_tokens
        run = _Run(await self.engine.admit(kv_tokens))
        finish = "abort"
        try:
            yield run
            finish = answer.finish_reason
        except EngineDeadError:
            run.failed = True
            raise
        finally:
            self.engine.release(run.slot)
            if not run.failed:
                self._record(sim_request, answer, arrival, run, finish)

    def _record(
        self, sim_request: SimRequest, answer: Answer, arrival: float, run: _Run, finish: str
    ) -> None:
        now = asyncio.get_running_loop().time()
        hit = self.prefix_cache.lookup(sim_request.prefix_key)
        first = run.first_token_at
        self.metrics.record(
            RequestRecord(
                prompt_tokens=sim_request.prompt_tokens,
                generation_tokens=answer.completion_tokens if finish != "abort" else 0,
                finish_reason=finish,
                queue_time=run.slot.admitted_at - arrival,
                ttft=first - arrival if first is not None else None,
                e2e=now - arrival,
                prefix_queries=sim_request.prompt_tokens,
                prefix_hits=sim_request.prefix_tokens if hit else 0,
            )
        )

    def _work(self, tokens_out: int) -> float:
        """Nominal seconds (idle engine) until token ``tokens_out`` (1-based) is out."""
        return self.config.effective_ttft + (tokens_out - 1) * self.config.effective_itl

    async def _complete(
        self, sim_request: SimRequest, answer: Answer, arrival: float
    ) -> web.Response:
        async with self._in_batch(sim_request, answer, arrival) as run:
            await self.engine.reach(run.slot, self._work(1))
            run.first_token_at = asyncio.get_running_loop().time()
            await self.engine.reach(run.slot, self._work(answer.completion_tokens))
        return _json(completion_body(sim_request, answer, request_id(sim_request)))

    async def _stream_tokens(
        self, response: web.StreamResponse, writer: ChunkWriter, answer: Answer, run: _Run
    ) -> None:
        """Send each token when it is due; tokens already due go out in one write."""
        pending: list[bytes] = []
        for index, piece in enumerate(answer.pieces, start=1):
            if not self.engine.due(run.slot, self._work(index)):
                if pending:
                    await response.write(b"".join(pending))
                    pending.clear()
                await self.engine.reach(run.slot, self._work(index))
            if run.first_token_at is None:
                run.first_token_at = asyncio.get_running_loop().time()
            pending.append(writer.token(piece))
        if pending:
            await response.write(b"".join(pending))

    async def _stream(
        self, request: web.Request, sim_request: SimRequest, answer: Answer, arrival: float
    ) -> web.StreamResponse:
        writer = ChunkWriter(sim_request, request_id(sim_request))
        response = web.StreamResponse(headers=SSE_HEADERS)
        async with self._in_batch(sim_request, answer, arrival) as run:
            await response.prepare(request)
            role = writer.role()
            if role is not None:
                await response.write(role)
            try:
                await self._stream_tokens(response, writer, answer, run)
            except EngineDeadError:
                run.failed = True
                await response.write(writer.error(_engine_dead_error()))
                await response.write_eof()
                return response
            await response.write(writer.finish(answer))
        await response.write_eof()
        return response
