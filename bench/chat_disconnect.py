"""How fast a client's hang-up reaches the providers: ``POST /v1/chat/completions`` on
a real ``thinktank serve`` process, two models answered by the loopback fake server
after 60 s; the client closes its connection once both upstream requests have arrived.

Run from the repo root: ``python bench/chat_disconnect.py [--rounds N]``. Prints, for a
plain and a streamed completion, the median and worst time from the client's hang-up
to the last upstream connection being closed by the server (the fake server stamps
each with ``time.monotonic()``), over ``--rounds`` rounds. The brief's bar is 1 s.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path: put the repo root there
# so that ``tests`` (the fake server, the serve helper) imports.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import anyio  # noqa: E402
import httpx2 as httpx  # noqa: E402

from tests.fakeserver import FakeServer, Fault, run_fake_server  # noqa: E402
from tests.serverproc import serve  # noqa: E402
from tests.test_eval_runner import write_config  # noqa: E402


async def _hang_up_once(url: str, fake: FakeServer, stream: bool, n: int) -> float:
    """Seconds from the hang-up to the last upstream close."""
    fake.reset()
    for model in ("a", "b"):
        fake.add_faults(Fault.slow(60), model=model)
    body = {
        "messages": [{"role": "user", "content": f"round {n} {stream}"}],
        "stream": stream,
        "parallel": {"models": ["a", "b"]},
    }
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(http.post, "/v1/chat/completions", json=body))
            while len(fake.requests) < 2:  # noqa: ASYNC110 - the fake's thread fills it
                await anyio.sleep(0.005)
            hung_up = time.monotonic()
            tg.cancel_scope.cancel()
        while len(fake.hangups) < 2:  # noqa: ASYNC110 - the fake's thread fills it
            await anyio.sleep(0.005)
    return max(at for _, at in fake.hangups) - hung_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_fake_server() as fake:
        config = write_config(Path(tmp) / "thinktank.toml", fake, ["a", "b"])
        env = {"THINKTANK_CONFIG": str(config)}
        with serve(Path(tmp) / "tt.db", "--no-auth", env=env) as url:
            for stream in (False, True):
                seconds = [
                    anyio.run(_hang_up_once, url, fake, stream, n, backend="asyncio")
                    for n in range(args.rounds)
                ]
                ms = sorted(s * 1000 for s in seconds)
                kind = "stream" if stream else "plain "
                print(
                    f"{kind}: hang-up -> upstream closed: median {statistics.median(ms):.1f} ms,"
                    f" worst {ms[-1]:.1f} ms ({args.rounds} rounds)"
                )


if __name__ == "__main__":
    main()
