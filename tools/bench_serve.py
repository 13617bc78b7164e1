"""Server benchmark: `geoloc-serve` on a run, asked over HTTP on this machine, against one cold `geoloc-predict`
call for the same photo, side by side in one run.

    python -m tools.bench_serve                           # runs/demo (make bench-serve; make demo first)
    python -m tools.bench_serve --run runs/my_p1 --requests 2000 --clients 8

It starts the real server (`python -m geoloc_lib.serve RUN --port 0`) twice, placing one request at a time
(`--batch-photos 1`) and placing the photos of waiting requests together (the default), and asks each one photo at
a time (the round trip: median and 95th percentile), then from `--clients` threads at once for `--requests`
requests in all (photos per second, errors, and the server's resident memory before, half-way and after), and
prints the ratio; then times `geoloc-predict` from the shell for one photo. Not a test.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd

from geoloc_lib.run.folder import RunFolder

BATCH_PHOTOS = 32  # geoloc-serve's default


def _rss_mb(pid: int) -> float:
    """The process's resident memory (Linux /proc), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv=None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--run", default="runs/demo")
    cli.add_argument("--single", type=int, default=200, help="one-photo requests timed one after another")
    cli.add_argument("--requests", type=int, default=2000, help="requests from the concurrent clients")
    cli.add_argument("--clients", type=int, default=8)
    args = cli.parse_args(argv)
    if not RunFolder(args.run).config.is_file():
        raise SystemExit(f"bench_serve: {args.run} is not a run folder; make demo first")
    data_dir = Path(RunFolder(args.run).read_config().data_dir)
    photos = [data_dir / name for name in pd.read_csv(data_dir / "test.csv")["image"].head(64)]
    payloads = [(p.name, p.read_bytes()) for p in photos]
    served = {batch: _serve(args, payloads, batch) for batch in (1, BATCH_PHOTOS)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "geoloc_lib.predict", args.run, str(photos[0])], capture_output=True
    )
    cold_s = time.perf_counter() - started
    print(f"run {args.run}; one photo per request; this machine's loopback")
    for batch, (rounds, answered, concurrent_s, memory) in served.items():
        print(f"--batch-photos {batch}:")
        print(
            f"  one photo's round trip: median {statistics.median(rounds):.1f} ms, 95th percentile "
            f"{_percentile(rounds, 0.95):.1f} ms"
        )
        print(
            f"  {args.clients} clients at once:     {args.requests / concurrent_s:.1f} photos/s over "
            f"{args.requests} requests, {answered.count(False)} errors"
        )
        print(
            f"  server memory:          {memory[0]:.0f} MB before the {args.requests}, {memory[1]:.0f} MB after "
            f"half, {memory[2]:.0f} MB after all"
        )
    (_, _, one_s, _), (rounds, _, batched_s, _) = served[1], served[BATCH_PHOTOS]
    print(f"ratio {args.clients} clients, batched / one request at a time: {one_s / batched_s:.2f}x photos/s")
    median = statistics.median(rounds)
    print(f"geoloc-predict, cold:     {1000 * cold_s:.0f} ms for the same photo")
    print(f"ratio cold call / warm round trip: {1000 * cold_s / median:.0f}x")


def _serve(args, payloads: list[tuple[str, bytes]], batch_photos: int):
    """(one-photo round trips in ms, each concurrent request answered or not, the concurrent part's seconds,
    the server's memory before, half-way and after) of a server started with `--batch-photos`."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geoloc_lib.serve",
            args.run,
            "--port",
            "0",
            "--batch-photos",
            str(batch_photos),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = server.stdout.readline().split("http://")[1].split("/")[0]
        url = f"http://{address}/predict"
        with httpx.Client(timeout=60) as client:
            for name, data in payloads[:10]:  # warm-up
                client.post(url, files={"photos": (name, data)}).raise_for_status()
            rounds = []
            for i in range(args.single):
                name, data = payloads[i % len(payloads)]
                started = time.perf_counter()
                client.post(url, files={"photos": (name, data)}).raise_for_status()
                rounds.append(1000 * (time.perf_counter() - started))
        memory = [_rss_mb(server.pid)]

        def ask(i: int) -> bool:
            name, data = payloads[i % len(payloads)]
            try:
                return httpx.post(url, files={"photos": (name, data)}, timeout=60).status_code == 200
            except httpx.HTTPError:
                return False

        # in two halves: memory that settles in the first half is the allocator warming up; what the second
        # adds is growth
        answered, concurrent_s = [], 0.0
        with ThreadPoolExecutor(args.clients) as pool:
            for half in (range(args.requests // 2), range(args.requests // 2, args.requests)):
                started = time.perf_counter()
                answered += pool.map(ask, half)
                concurrent_s += time.perf_counter() - started
                memory.append(_rss_mb(server.pid))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    return rounds, answered, concurrent_s, memory


if __name__ == "__main__":
    main()
