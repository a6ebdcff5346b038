"""Limits of the served app: upload size, queue length with a position for each waiting client and a "busy"
answer beyond it, and torch's thread count under load (docs/RELIABILITY.md; scripts/load_test.py measures)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio_client import Client
from gradio_client.utils import QueueError, Status

from brandgen.cli import DEFAULT_QUEUE_SIZE, DEFAULT_UPLOAD_MB, launch_options, main, queue_options
from brandgen.device import ThreadPlan, others_running, server_thread_plan
from brandgen.errors import InvalidInput
from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.ui.app import build_app
from conftest import free_port
from script_loader import load_script
from test_robustness_ui import GOOD, _slow_steps

SLOTS = ["(none)", 0.8] * 3


def test_serve_passes_the_upload_limit_queue_size_and_thread_count(manager: PipelineManager,
                                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BRANDGEN_HOME", str(manager.paths.home))
    monkeypatch.setattr(PipelineManager, "instance", classmethod(lambda cls: manager))
    monkeypatch.setattr("brandgen.cli._preload", lambda manager: None)
    launched, queued, threads = [], [], []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    monkeypatch.setattr(gr.Blocks, "queue", lambda self, **kwargs: queued.append(kwargs) or self)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    for name in ("BRANDGEN_MAX_UPLOAD_MB", "BRANDGEN_QUEUE_SIZE", "BRANDGEN_TORCH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    main(["serve"])
    assert launched[-1]["max_file_size"] == f"{DEFAULT_UPLOAD_MB}mb"
    assert queued[-1] == {"default_concurrency_limit": 1, "max_size": DEFAULT_QUEUE_SIZE}
    assert threads[-1] == server_thread_plan().busy
    assert manager.thread_plan == server_thread_plan()  # each generation then picks lone or busy
    monkeypatch.setenv("BRANDGEN_MAX_UPLOAD_MB", "5")
    monkeypatch.setenv("BRANDGEN_QUEUE_SIZE", "3")
    monkeypatch.setenv("BRANDGEN_TORCH_THREADS", "1")
    main(["serve"])
    assert launched[-1]["max_file_size"] == "5mb" and queued[-1]["max_size"] == 3 and threads[-1] == 1
    assert manager.thread_plan == ThreadPlan(lone=1, busy=1)  # the operator's count holds for lone requests too
    bad_values = (("BRANDGEN_QUEUE_SIZE", "0"), ("BRANDGEN_MAX_UPLOAD_MB", "lots"), ("BRANDGEN_TORCH_THREADS", "-2"))
    for name, bad in bad_values:
        monkeypatch.setenv(name, bad)
        with pytest.raises(SystemExit) as caught:  # a usage error before any model loads, not a traceback
            main(["serve"])
        assert caught.value.code == 2
        monkeypatch.setenv(name, "2")


def test_server_threads_leave_one_core_to_the_server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("BRANDGEN_TORCH_THREADS", raising=False)
    assert server_thread_plan(cpus=2, torch_default=2).busy == 1  # the measured case: 1.6x slower images with 2
    assert server_thread_plan(cpus=1, torch_default=1).busy == 1
    assert server_thread_plan(cpus=16, torch_default=8).busy == 8  # never more than torch's own (physical cores)
    monkeypatch.setenv("BRANDGEN_TORCH_THREADS", "3")
    assert server_thread_plan(cpus=2, torch_default=2).busy == 3  # the operator's choice wins
    monkeypatch.setenv("BRANDGEN_TORCH_THREADS", "0")
    with pytest.raises(InvalidInput, match="BRANDGEN_TORCH_THREADS must be a whole number"):
        server_thread_plan()


def test_a_lone_request_gets_every_core_and_a_busy_server_keeps_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("BRANDGEN_TORCH_THREADS", raising=False)
    plan = server_thread_plan(cpus=2, torch_default=2)
    assert plan == ThreadPlan(lone=2, busy=1)
    assert [plan.threads(0), plan.threads(1), plan.threads(7)] == [2, 1, 1]
    assert plan.threads(None) == 1  # queue length unknown: as if busy, the setting before the plan existed
    assert server_thread_plan(cpus=1, torch_default=1) == ThreadPlan(1, 1)
    assert server_thread_plan(cpus=16, torch_default=8) == ThreadPlan(8, 8)
    assert plan.threads(0, others_running=1) == 1 and plan.threads(0, others_running=None) == 1  # a core taken


def test_others_running_reads_the_kernels_runnable_count(tmp_path: Path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4\nprocs_running 3\nprocs_blocked 0\n")
    assert others_running(samples=2, gap_s=0, stat=stat) == 2  # the caller is one of the three
    stat.write_text("cpu  1 2 3 4\nprocs_running 1\n")
    assert others_running(samples=2, gap_s=0, stat=stat) == 0
    stat.write_text("cpu  1 2 3 4\n")
    assert others_running(stat=stat) is None and others_running(stat=tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="procs_running is Linux's")
def test_a_busy_process_counts_as_running():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert others_running() >= 1
    finally:
        hog.kill()
        hog.wait()



def test_an_image_records_the_cpu_threads_it_ran_on(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("brandgen.manager.others_running", lambda: 0)  # a quiet machine, whatever CI runs beside
    before = torch.get_num_threads()
    manager.thread_plan = ThreadPlan(lone=2, busy=1)
    try:
        request = GenerationRequest(prompt="a red star icon", model_id="tiny-sd15", preset="draft", steps=2)
        lone = manager.generate(request, others_waiting=0).metadata[0]
        busy = manager.generate(request, others_waiting=3).metadata[0]
        unknown = manager.generate(request).metadata[0]  # a script or the Benchmark tab: no queue to read
    finally:
        torch.set_num_threads(before)
    assert lone["cpu_threads"] == 2 and busy["cpu_threads"] == 1 and unknown["cpu_threads"] == 1

@pytest.fixture
def limited(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch):
    """The app with the options `brandgen serve` uses, and small limits: 1 MB uploads, 2 requests waiting."""
    monkeypatch.setenv("BRANDGEN_MAX_UPLOAD_MB", "1")
    monkeypatch.setenv("BRANDGEN_QUEUE_SIZE", "2")
    args = argparse.Namespace(host="127.0.0.1", port=free_port(), share=False, auth=None)
    demo = build_app(manager)
    demo.queue(**queue_options()).launch(**launch_options(args, manager.paths), prevent_thread_lock=True,
                                         quiet=True)
    try:
        yield demo
    finally:
        demo.close()


def _upload(url: str, name: str, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_upload_over_the_limit_is_refused_and_not_kept(limited, tmp_path: Path):
    from gradio.utils import get_upload_folder

    marker = uuid.uuid4().hex.encode()
    assert _upload(limited.local_url, "big.png", marker + bytes(3 * 2**20)) == 413  # 300 MB went through before
    assert _upload(limited.local_url, "small.png", b"small") == 200
    kept = [p for p in Path(get_upload_folder()).rglob("*") if p.is_file() and p.stat().st_size > 2**20]
    assert not [p for p in kept if p.read_bytes()[:32] == marker], "the refused upload was stored"


def test_waiting_clients_get_their_position_and_the_next_a_busy_answer(limited, manager: PipelineManager,
                                                                        monkeypatch: pytest.MonkeyPatch):
    stepping = _slow_steps(manager, monkeypatch, 0.2)
    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # record what each generation asks for
    monkeypatch.setattr("brandgen.manager.others_running", lambda: 0)  # the queue decides here, not CI's load
    manager.thread_plan = ThreadPlan(lone=2, busy=1)
    clients = [Client(limited.local_url, verbose=False) for _ in range(4)]
    args = {**GOOD, "count": 1, "steps": 8}
    first = clients[0].submit(*args.values(), *SLOTS, api_name="/generate")
    assert stepping.wait(60), "the first generation did not start"
    waiting = []
    for i, client in enumerate(clients[1:3]):  # one after the other, so their order is known
        waiting.append(client.submit(*{**args, "seed": 10 + i}.values(), *SLOTS, api_name="/generate"))
        deadline = time.monotonic() + 30
        while waiting[-1].status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.monotonic() < deadline:
            time.sleep(0.02)
    ranks: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while len(ranks) < 2 and time.monotonic() < deadline:
        for i, job in enumerate(waiting):
            status = job.status()
            if status.code == Status.IN_QUEUE and status.rank is not None:
                ranks[i] = status.rank
        time.sleep(0.05)
    assert ranks == {0: 0, 1: 1}  # positions 1 and 2 behind the running generation
    with pytest.raises(QueueError, match="Queue is full"):  # "busy": the browser says so in its own words
        clients[3].predict(*args.values(), *SLOTS, api_name="/generate")
    results = [job.result(timeout=120) for job in [first, *waiting]]
    assert [r[1][0]["seed"] for r in results] == [3, 10, 11]  # none of the admitted ones was lost
    # every core while nobody waited (the first, the last), one left to the server while seed 11 queued; after
    # each generation the busy count again
    assert threads == [2, 1, 1, 1, 2, 1]
    done = threading.Event()
    threading.Thread(target=lambda: (clients[3].predict(*args.values(), *SLOTS, api_name="/generate"),
                                     done.set())).start()
    assert done.wait(120), "the app did not take requests again once the queue drained"
    assert threads[-2:] == [2, 1]


def _load_script():
    return load_script("load_test")


def test_the_load_script_reports_latency_and_lost_images_on_loopback_only(served_app):
    load_test = _load_script()
    for outside in ("http://10.0.0.5:7860/", "http://example.com/", "http://0.0.0.0:7860/"):
        with pytest.raises(SystemExit, match="loopback"):
            load_test.loopback_only(outside)
    assert load_test.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and load_test.percentile([5.0], 95) == 5.0
    args = argparse.Namespace(clients=3, requests=2, count=1, preset="draft", steps=2, model="tiny-sd15", idle=1)
    result = load_test.measure(load_test.loopback_only(served_app.local_url), None, args, time.monotonic() + 300)
    assert result["requests_ok"] == 6 and result["errors"] == [] and result["lost_images"] == 0
    assert result["images"] == 6 and result["gallery_total"] == 8  # and the two idle requests
    assert 0 < result["p50_s"] <= result["p95_s"] <= result["max_s"]


@pytest.fixture
def served_app(manager: PipelineManager):
    demo = build_app(manager)
    demo.queue(**queue_options()).launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                         quiet=True)
    try:
        yield demo
    finally:
        demo.close()
