"""Many clients on one app at once: latency (p50/p95), throughput, queue positions and lost images.

Starts `python app.py` on a free 127.0.0.1 port with a temporary BRANDGEN_HOME (or uses --url, which must be a
loopback address), warms the model up, times requests one at a time (idle), then runs `--clients` gradio_client
sessions at once, each sending `--requests` /generate calls in a row. Afterwards every image a client was given
must be listed by /gallery_search and be on disk: "lost" counts those that are not. Bounded: at most 32 clients x
20 requests, and the whole run stops at --deadline seconds.

    python scripts/load_test.py --clients 16 --requests 2 [--count 1] [--preset draft] [--json out.json]
    python scripts/load_test.py --server-env BRANDGEN_TORCH_THREADS=1   # try a server setting
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
MAX_CLIENTS, MAX_REQUESTS = 32, 20
SLOTS = ["(none)", 0.8] * 3


def loopback_only(url: str) -> str:
    """Refuse any address but this machine's own: a load test must never be pointed at someone else's server."""
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"--url must be a loopback address (127.0.0.1, ::1, localhost), not {host!r}")
    return url if url.endswith("/") else url + "/"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def launched_app(extra_env: dict[str, str], deadline: float) -> Iterator[tuple[str, Path]]:
    """app.py on 127.0.0.1 with a throwaway BRANDGEN_HOME; stopped (and its folder removed) afterwards."""
    with tempfile.TemporaryDirectory(prefix="brandgen-load-") as home:
        port = _free_port()
        env = {**os.environ, "BRANDGEN_HOME": home, "GRADIO_TEMP_DIR": f"{home}/gradio_tmp", "HF_HUB_OFFLINE": "1",
               "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **extra_env}
        for key in ("BRANDGEN_AUTH", "BRANDGEN_SHARE", "BRANDGEN_HOST", "BRANDGEN_PORT", "SPACE_ID"):
            env.pop(key, None)
        log = open(Path(home) / "app.log", "wb")
        process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"app.py did not start:\n{(Path(home) / 'app.log').read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(url + "config", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.3)
            yield url, Path(home)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


class Runner:
    """One gradio_client session sending its requests one after another."""

    def __init__(self, url: str, index: int, args: argparse.Namespace, download: Path):
        from gradio_client import Client

        self.index, self.args = index, args
        self.client = Client(url, verbose=False, download_files=str(download / f"c{index:02d}"))
        self.latencies: list[float] = []
        self.items: list[str] = []
        self.denoise: list[float] = []
        self.threads: list[int | None] = []  # torch threads each image ran on (the server's ThreadPlan)
        self.errors: list[str] = []
        self.max_rank = 0

    def one(self, seed: int, deadline: float) -> None:
        args = self.args
        start = time.perf_counter()
        job = self.client.submit(f"a teal heart icon c{self.index:02d}", "icons", args.model, args.preset, seed,
                                 args.count, "", args.steps, -1, *SLOTS, api_name="/generate")
        while not job.done():
            if time.monotonic() > deadline:
                job.cancel()
                raise TimeoutError("the run's deadline passed")
            status = job.status()
            if status.rank is not None:
                self.max_rank = max(self.max_rank, status.rank + 1)  # rank 0 = next in line
            wait([job.future], timeout=0.25)  # returns as soon as the result is in: latency to the ms, not 0.25 s
        _, metadata, _, _ = job.result()
        self.latencies.append(time.perf_counter() - start)
        self.items += [m["gallery_id"] for m in metadata]
        self.denoise += [m["seconds_per_image"] for m in metadata]
        self.threads += [m.get("cpu_threads") for m in metadata]

    def run(self, deadline: float) -> None:
        for i in range(self.args.requests):
            try:
                self.one(10_000 * (self.index + 1) + i * self.args.count, deadline)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding to report
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")


def gallery_ids(client: Any) -> set[str]:
    found: set[str] = set()
    page, pages = 1, 1
    while page <= pages:
        result = client.predict("", None, None, None, page, 200, api_name="/gallery_search")
        found |= {item["id"] for item in result["items"]}
        page, pages = page + 1, result["pages"]
    return found


def measure(url: str, home: Path | None, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    from gradio_client import Client

    download = Path(tempfile.mkdtemp(prefix="brandgen-load-dl-"))
    probe = Client(url, verbose=False, download_files=str(download / "probe"))
    idle = Runner(url, 99, argparse.Namespace(**{**vars(args), "requests": 1 + args.idle}), download)
    idle.run(deadline)  # the first call loads the model: not counted
    idle_latency = idle.latencies[1:]
    runners = [Runner(url, i, args, download) for i in range(args.clients)]  # sessions opened before the clock
    threads = [threading.Thread(target=r.run, args=(deadline,), name=f"client-{r.index}") for r in runners]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic()))
    wall = time.perf_counter() - start
    latencies = [x for r in runners for x in r.latencies]
    given = [i for r in runners for i in r.items]
    listed = gallery_ids(probe)
    on_disk = {p.stem for p in (home / "outputs").glob("*/*.png")} if home else listed
    lost = [i for i in given if i not in listed or i not in on_disk]
    images = len(given)
    return {
        "clients": args.clients, "requests_per_client": args.requests, "count": args.count, "preset": args.preset,
        "idle_latency_s": [round(x, 2) for x in idle_latency],
        "idle_denoise_s_per_image": round(statistics.median(idle.denoise[1:]), 3) if idle.denoise[1:] else None,
        "requests_ok": len(latencies), "errors": [e for r in runners for e in r.errors],
        "p50_s": round(percentile(latencies, 50), 2) if latencies else None,
        "p95_s": round(percentile(latencies, 95), 2) if latencies else None,
        "max_s": round(max(latencies), 2) if latencies else None,
        "wall_s": round(wall, 1), "images": images,
        "wall_s_per_image": round(wall / images, 3) if images else None,
        "denoise_s_per_image_median": round(statistics.median([d for r in runners for d in r.denoise]), 3)
        if images else None,
        "idle_cpu_threads": sorted(set(idle.threads[1:]), key=str),
        "cpu_threads_under_load": {str(n): sum(1 for r in runners for t in r.threads if t == n)
                                   for n in sorted({t for r in runners for t in r.threads}, key=str)},
        "max_queue_position": max((r.max_rank for r in runners), default=0),
        "lost_images": len(lost), "gallery_total": len(listed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running app on this machine (default: start one)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2, help="per client, one after another")
    parser.add_argument("--count", type=int, default=1, help="images per request")
    parser.add_argument("--preset", default="draft")
    parser.add_argument("--steps", type=int, default=0, help="0 = the preset's")
    parser.add_argument("--model", default="brandgen-tiny")
    parser.add_argument("--idle", type=int, default=3, help="requests timed alone before the load")
    parser.add_argument("--deadline", type=float, default=900, help="seconds for the whole run")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the launched app")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= MAX_CLIENTS and 1 <= args.requests <= MAX_REQUESTS and 1 <= args.count <= 8):
        parser.error(f"at most {MAX_CLIENTS} clients x {MAX_REQUESTS} requests x 8 images")
    deadline = time.monotonic() + args.deadline
    extra = dict(item.split("=", 1) for item in args.server_env)
    if args.url:
        result = measure(loopback_only(args.url), None, args, deadline)
    else:
        with launched_app(extra, deadline) as (url, home):
            result = measure(url, home, args, deadline)
    result.update(server_env=extra, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                  date=time.strftime("%Y-%m-%d %H:%M"), command=" ".join(["python", *sys.argv]))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if result["lost_images"] == 0 and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
