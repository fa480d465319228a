"""HTTP provider benchmark: thinktank's ``OpenAICompatibleModel`` against the official
``openai`` SDK's ``AsyncOpenAI``, over real loopback HTTP to the same fake server.

Run from the repo root: ``python bench/http.py`` (2,000 calls at concurrency 64, 3
rounds), or ``--calls N --concurrency C --rounds R``; ``--server thread`` runs the fake
server in a thread of this process instead of a subprocess; ``--profile`` prints a
cProfile of one thinktank run instead. The SDK comes from the ``bench`` extra
(``pip install openai``); the library never imports it.

The fake server (``tests/fakeserver.py``) runs by default in its own process, so the
clients do not share a core's interpreter lock with it; it answers at once (zero think
time) with a small non-streaming chat completion. Each round runs every client once,
the order alternating between rounds, after one untimed warm-up run per client that
opens the connections. A run is ``--calls`` completions, at most ``--concurrency`` in
flight (one ``anyio.CapacityLimiter``); latency is measured around each call, and
calls/s is calls over the run's wall time.

Clients, all with keep-alive pools at least as large as the concurrency:

- ``thinktank``: ``OpenAICompatibleModel.complete`` over
  ``create_http_client(max_keepalive=C)`` (httpx2), parsed into a ``ModelResponse``;
- ``openai-sdk``: ``AsyncOpenAI(max_retries=0).chat.completions.create`` with the SDK's
  own client (httpx2, 100 keep-alive connections), parsed into its pydantic models.

References (skip them with ``--no-references``): ``raw-httpx2`` is a bare
``AsyncClient.post`` + ``json.loads``, the floor of the harness; when httpx 0.28 is
installed, ``tt-on-httpx0.28`` is thinktank's client handed an httpx 0.28
``AsyncClient`` and ``raw-httpx0.28`` the bare loop on it: why the seam uses httpx2.

The summary gives the median over rounds; ``tt/sdk`` above 1.00 for calls/s (below 1.00
for latency) means thinktank is faster.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file is named
# like the standard library's ``http`` package: swap the folder for the repo root before
# anything imports ``http.client``. Hence the E402s below.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() not in (_HERE, REPO)]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Iterator, Sequence  # noqa: E402
from contextlib import AsyncExitStack, contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402

from tests.fakeserver import run_fake_server  # noqa: E402
from thinktank.providers.base import ModelRequest  # noqa: E402
from thinktank.providers.http import create_http_client, httpx  # noqa: E402
from thinktank.providers.openai import OpenAICompatibleModel  # noqa: E402

MODEL = "bench-model"
KEY = "sk-bench-not-a-real-key"
PROMPT = "Answer with one word: what colour is the sky on a clear day?"

Call = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class RunResult:
    """One timed run of one client."""

    client: str
    wall_s: float
    latencies_ms: list[float]

    @property
    def calls_per_s(self) -> float:
        """Completions per second of wall time."""
        return len(self.latencies_ms) / self.wall_s

    def pct(self, q: float) -> float:
        """The ``q`` quantile of latency in ms (nearest rank)."""
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def timed_run(name: str, call: Call, calls: int, concurrency: int) -> RunResult:
    """``calls`` calls of ``call`` with at most ``concurrency`` in flight."""
    limiter = anyio.CapacityLimiter(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with limiter:
            start = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - start) * 1000)

    wall = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(one, i)
    return RunResult(name, time.perf_counter() - wall, latencies)


async def paced_run(name: str, call: Call, calls: int, concurrency: int, rate: float) -> RunResult:
    """``calls`` calls started ``rate`` a second (open loop, evenly spaced), at most
    ``concurrency`` in flight: latency at a load the system may sustain, unlike
    :func:`timed_run`, whose callers send again as soon as they are answered. A call
    that waits for room counts that wait in its latency (it was due at its time)."""
    limiter = anyio.CapacityLimiter(concurrency)
    latencies: list[float] = []

    async def one(i: int, due: float) -> None:
        async with limiter:
            await call(i)
            latencies.append((time.perf_counter() - due) * 1000)

    wall = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(calls):
            due = wall + i / rate
            await anyio.sleep(max(0.0, due - time.perf_counter()))
            tg.start_soon(one, i, due)
    return RunResult(name, time.perf_counter() - wall, latencies)


@contextmanager
def fake_server(mode: str) -> Iterator[str]:
    """The fake server's base URL, in a subprocess or a thread of this process."""
    if mode == "thread":
        with run_fake_server(record=False) as server:
            yield server.url
        return
    script = REPO / "tests" / "fakeserver.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--no-record"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield line.removeprefix("listening on ").strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def fmt_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One table row, first column left-aligned."""
    first, *rest = cells
    return f"{first:<{widths[0]}}" + "".join(
        f"{c:>{w}}" for c, w in zip(rest, widths[1:], strict=True)
    )


def old_httpx() -> Any:
    """httpx 0.28 (the library thinktank left for httpx2), or None when not installed."""
    try:
        return importlib.import_module("httpx")
    except ImportError:
        return None


async def bench(args: argparse.Namespace, url: str) -> None:
    """Warm up, then run the rounds and print the tables."""
    from openai import AsyncOpenAI

    request = ModelRequest(prompt=PROMPT, max_tokens=16)
    messages = [{"role": "user", "content": PROMPT}]
    body = json.dumps({"model": MODEL, "messages": messages, "max_tokens": 16}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    endpoint = f"{url}/v1/chat/completions"
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(create_http_client(max_keepalive=args.concurrency))
        sdk = await stack.enter_async_context(
            AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        )

        def tt_call_on(client: Any) -> Call:
            model = OpenAICompatibleModel(
                name="bench", model=MODEL, http=client, base_url=f"{url}/v1", api_key=KEY
            )

            async def call(i: int) -> object:
                answer = await model.complete(request)
                assert answer.content, answer
                return answer

            return call

        async def sdk_call(i: int) -> object:
            answer = await sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=16,
            )
            assert answer.choices[0].message.content
            return answer

        def raw_call_on(client: Any) -> Call:
            async def call(i: int) -> object:
                response = await client.post(endpoint, content=body, headers=headers)
                data = json.loads(response.content)
                assert data["choices"][0]["message"]["content"]
                return data

            return call

        def plain_client(lib: Any) -> Any:
            limits = lib.Limits(max_connections=100, max_keepalive_connections=args.concurrency)
            return lib.AsyncClient(limits=limits, timeout=60.0)

        clients: dict[str, Call] = {"thinktank": tt_call_on(http), "openai-sdk": sdk_call}
        if args.profile:
            call = clients["thinktank"]
            await timed_run("warm-up", call, args.concurrency * 4, args.concurrency)
            profiler = cProfile.Profile()
            profiler.enable()
            result = await timed_run("thinktank", call, args.calls, args.concurrency)
            profiler.disable()
            print(f"thinktank: {result.calls_per_s:,.0f} calls/s under the profiler\n")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return
        if args.references:
            raw2 = await stack.enter_async_context(plain_client(httpx))
            clients["raw-httpx2"] = raw_call_on(raw2)
            old = old_httpx()
            if old is not None:
                # One client each: httpcore 1.0's pool behaves differently once warmed
                # by another workload.
                tt_old = await stack.enter_async_context(plain_client(old))
                clients["tt-on-httpx0.28"] = tt_call_on(tt_old)
                raw_old = await stack.enter_async_context(plain_client(old))
                clients["raw-httpx0.28"] = raw_call_on(raw_old)

        for name, call in clients.items():
            await timed_run(name, call, max(args.concurrency * 4, 200), args.concurrency)

        results: dict[str, list[RunResult]] = {name: [] for name in clients}
        widths = [6, 18, 10, 10, 10, 8]
        print(fmt_row(["round", "client", "calls/s", "p50 ms", "p99 ms", "wall s"], widths))
        names = list(clients)
        for r in range(args.rounds):
            # Alternate the two contenders so neither always runs on a warmer machine.
            order = names if r % 2 == 0 else [names[1], names[0], *names[2:]]
            for name in order:
                res = await timed_run(name, clients[name], args.calls, args.concurrency)
                results[name].append(res)
                cells = [
                    str(r + 1),
                    name,
                    f"{res.calls_per_s:,.0f}",
                    f"{res.pct(0.50):.2f}",
                    f"{res.pct(0.99):.2f}",
                    f"{res.wall_s:.2f}",
                ]
                print(fmt_row(cells, widths), flush=True)

    def med(name: str, metric: Callable[[RunResult], float]) -> float:
        return statistics.median(metric(res) for res in results[name])

    refs = names[2:]
    print(f"\nmedian of {args.rounds} rounds:")
    widths = [9, 11, 12, 8, *(17 for _ in refs)]
    print(fmt_row(["", "thinktank", "openai-sdk", "tt/sdk", *refs], widths))
    metrics: list[tuple[str, Callable[[RunResult], float], str]] = [
        ("calls/s", lambda res: res.calls_per_s, ",.0f"),
        ("p50 ms", lambda res: res.pct(0.50), ".2f"),
        ("p99 ms", lambda res: res.pct(0.99), ".2f"),
    ]
    for label, metric, spec in metrics:
        tt, sdk_v = med("thinktank", metric), med("openai-sdk", metric)
        cells = [label, format(tt, spec), format(sdk_v, spec), f"{tt / sdk_v:.2f}"]
        cells += [format(med(name, metric), spec) for name in refs]
        print(fmt_row(cells, widths))


def header(args: argparse.Namespace) -> str:
    """What ran, on what."""
    versions = ", ".join(
        f"{pkg} {importlib.metadata.version(pkg)}" for pkg in ("httpx", "httpx2", "openai", "h11")
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"HTTP providers: {args.calls} calls x {args.rounds} rounds, concurrency "
        f"{args.concurrency}, fake server in a {args.server}\n"
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {versions}; loadavg {load}\n"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per run (2000)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (3)")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="run the fake server in a subprocess (default) or a thread",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one thinktank run")
    parser.add_argument(
        "--no-references",
        dest="references",
        action="store_false",
        help="skip the reference rows (raw clients, thinktank on httpx 0.28)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark."""
    args = parse_args(argv)
    print(header(args), flush=True)
    with fake_server(args.server) as url:
        anyio.run(bench, args, url)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nloadavg {load} (at end)")


if __name__ == "__main__":
    main()
