"""Per-request cost of the query service's metrics middleware, without Serve or a network: the same
FastAPI route called through ASGI with maskdex's plain ASGI middleware (`jobs/serve/api.py`) and
with Starlette's @app.middleware("http") doing the same recording (what the service used before).

    python -m benchmarks.api_middleware [--requests 2000] [--repeats 7]

Prints microseconds per request (median of repeats) and the ratio to the @app.middleware baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from fastapi import FastAPI, Request

from maskdex.jobs.serve.api import _RecordMetrics

_ANSWER = [{"image_id": "0" * 64, "score": 0.5}] * 5  # a /search answer's size, without the masks


class _Discard:
    def record(self, route: str, status: int, milliseconds: float) -> None:
        pass


def make(kind: str) -> FastAPI:
    app = FastAPI()
    if kind == "http-middleware":
        @app.middleware("http")
        async def _metrics(request: Request, call_next):
            started = time.perf_counter()
            response = await call_next(request)
            route = getattr(request.scope.get("route"), "path", "unmatched")
            request.app.state.metrics.record(route, response.status_code, (time.perf_counter() - started) * 1000)
            return response
    else:
        app.add_middleware(_RecordMetrics)
    app.state.metrics = _Discard()

    @app.post("/search")
    async def search(request: Request) -> list[dict]:
        await request.body()
        return _ANSWER

    return app


async def call(app: FastAPI, body: bytes = b'{"text": "a cat"}') -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/search", "raw_path": b"/search", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never disconnects

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"the route answered {sent[0]['status']}")


async def measure(requests: int, repeats: int) -> None:
    apps = {kind: make(kind) for kind in ("http-middleware", "asgi-middleware")}
    times = {kind: [] for kind in apps}
    for _ in range(repeats):
        for kind, app in apps.items():  # interleaved, so that drift in the machine's load hits both
            started = time.perf_counter()
            for _ in range(requests):
                await call(app)
            times[kind].append((time.perf_counter() - started) / requests * 1e6)
    base = statistics.median(times["http-middleware"])
    print(f"POST /search through FastAPI in process, {requests} requests, median of {repeats}")
    print(f"| {'middleware':40s} | µs per request | ratio |")
    for kind, values in times.items():
        name = "@app.middleware('http') (baseline)" if kind == "http-middleware" else "plain ASGI (_RecordMetrics)"
        print(f"| {name:40s} | {statistics.median(values):14.0f} | {statistics.median(values) / base:5.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(measure(args.requests, args.repeats))


if __name__ == "__main__":
    main()
