"""Running as a Hugging Face Space: the README front matter and requirements.txt a Space reads, ZeroGPU
wrapping (a no-op everywhere else), and the server options (--share, --auth, host and port, also from env)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import tomllib
import types
from pathlib import Path

import gradio as gr
import pytest
import torch
import yaml

from brandgen import spaces_support
from brandgen.cli import build_parser, default_host, launch_options, main, parse_auth
from brandgen.errors import InvalidInput
from brandgen.manager import PipelineManager
from brandgen.paths import AppPaths
from brandgen.ui.app import build_app
from training_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parent.parent
ENV = ("SPACES_ZERO_GPU", "BRANDGEN_ZERO_GPU", "BRANDGEN_GPU_SECONDS", "SPACE_ID", "GRADIO_SERVER_NAME",
       "GRADIO_SERVER_PORT", "BRANDGEN_HOST", "BRANDGEN_PORT", "BRANDGEN_SHARE", "BRANDGEN_AUTH")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)


def fake_spaces(monkeypatch: pytest.MonkeyPatch) -> list:
    """A stand-in `spaces` module: GPU(duration=...) returns a wrapper that, like the real one, pickles the
    arguments it sends to its GPU worker. Returns the log of (duration, args, kwargs) calls."""
    calls: list = []
    module = types.ModuleType("spaces")

    def GPU(task=None, *, duration=None):  # noqa: N802 (the real API's name)
        def decorate(fn):
            def on_gpu(*args, **kwargs):
                pickle.dumps((args, kwargs))  # what ZeroGPU does: a lambda here would fail on a real Space
                calls.append((duration, args, kwargs))
                return fn(*args, **kwargs)

            on_gpu.__wrapped__ = fn
            return on_gpu

        return decorate(task) if task is not None else decorate

    module.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", module)
    return calls


# ----- ZeroGPU -------------------------------------------------------------------------------------------
def test_on_gpu_is_the_function_itself_off_zero_gpu(monkeypatch: pytest.MonkeyPatch):
    def work(x):
        return x * 2

    calls = fake_spaces(monkeypatch)  # installed (every Space has it) but not on ZeroGPU hardware
    assert spaces_support.on_gpu(work) is work and not spaces_support.zero_gpu_enabled()
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setitem(sys.modules, "spaces", None)  # ZeroGPU claimed but the package missing: import fails
    assert spaces_support.on_gpu(work) is work and not spaces_support.zero_gpu_enabled()
    assert calls == []


def test_on_gpu_wraps_with_spaces_gpu_on_zero_gpu(monkeypatch: pytest.MonkeyPatch):
    def work(x):
        return x * 2

    calls = fake_spaces(monkeypatch)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    wrapped = spaces_support.on_gpu(work)
    assert wrapped is not work and wrapped(21) == 42 and calls == [(120, (21,), {})]
    monkeypatch.setenv("BRANDGEN_GPU_SECONDS", "45")
    spaces_support.on_gpu(work)(1)
    monkeypatch.setenv("BRANDGEN_GPU_SECONDS", "soon")
    spaces_support.on_gpu(work)(1)
    assert [c[0] for c in calls] == [120, 45, 120]
    monkeypatch.delenv("SPACES_ZERO_GPU")
    monkeypatch.setenv("BRANDGEN_ZERO_GPU", "1")  # forced, e.g. to try the path on a dedicated GPU Space
    assert spaces_support.on_gpu(work) is not work


def test_generate_tab_runs_generation_through_spaces_gpu(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch):
    calls = fake_spaces(monkeypatch)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    demo = build_app(manager)
    generate = next(dep.fn for dep in demo.fns.values() if dep.api_name == "generate")
    items, metadata, status, _ = generate(None, "a red star icon", "icons", "tiny-sd15", "draft", 5, 2, "", 2, -1,
                                          *["(none)", 0.8] * 3, None)
    assert len(items) == 2 and [m["seed"] for m in metadata] == [5, 6] and metadata[0]["gallery_id"]
    (duration, args, kwargs), = calls
    assert duration == 120 and args[0].prompt == "a red star icon"
    assert kwargs == {"progress": None, "owner": None, "others_waiting": 0}  # an app not queued: nobody waits
    monkeypatch.delenv("SPACES_ZERO_GPU")
    generate = next(dep.fn for dep in build_app(manager).fns.values() if dep.api_name == "generate")
    generate(None, "a red star icon", "icons", "tiny-sd15", "draft", 5, 1, "", 2, -1, *["(none)", 0.8] * 3, None)
    assert len(calls) == 1  # off ZeroGPU the manager is called directly, with live progress


def test_prepare_loads_the_default_model_only_on_zero_gpu(monkeypatch: pytest.MonkeyPatch):
    loaded = []
    manager = types.SimpleNamespace(load_model=lambda model_id=None: loaded.append(model_id))
    fake_spaces(monkeypatch)
    assert spaces_support.prepare(manager) is False and loaded == []
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert spaces_support.prepare(manager) is True and loaded == [None]


# ----- server options ------------------------------------------------------------------------------------
def test_parse_auth():
    assert parse_auth("designer:s3cret") == ("designer", "s3cret")
    assert parse_auth("designer:pa:ss") == ("designer", "pa:ss")
    assert parse_auth(None) is None and parse_auth("  ") is None
    for bad in ("designer", "designer:", ":s3cret"):
        with pytest.raises(InvalidInput, match="must be user:password"):
            parse_auth(bad)


@pytest.mark.parametrize(("value", "share"), [("1", True), ("true", True), ("YES", True), ("0", False),
                                              ("", False), ("no", False)])
def test_share_from_env(monkeypatch: pytest.MonkeyPatch, value: str, share: bool):
    monkeypatch.setenv("BRANDGEN_SHARE", value)
    assert build_parser().parse_args(["serve"]).share is share
    assert build_parser().parse_args(["serve", "--share"]).share is True


def test_auth_host_and_port_from_args_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    paths = AppPaths(tmp_path)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.share, args.auth) == ("127.0.0.1", 7860, False, None)
    monkeypatch.setenv("BRANDGEN_AUTH", "env:secret")
    assert launch_options(build_parser().parse_args(["serve"]), paths)["auth"] == ("env", "secret")
    assert launch_options(build_parser().parse_args(["serve", "--auth", "cli:pw"]), paths)["auth"] == ("cli", "pw")
    monkeypatch.setenv("SPACE_ID", "acme/brandgen")  # a Space's proxy must reach the app
    assert default_host() == "0.0.0.0"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "10.0.0.5")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("10.0.0.5", 7861)
    monkeypatch.setenv("BRANDGEN_HOST", "192.168.1.2")
    monkeypatch.setenv("BRANDGEN_PORT", "9000")
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("192.168.1.2", 9000)
    assert build_parser().parse_args(["serve", "--host", "127.0.0.1", "--port", "1234"]).port == 1234
    monkeypatch.setenv("BRANDGEN_PORT", "seventy")
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve"])
    assert caught.value.code == 2


def _stub_launch(monkeypatch: pytest.MonkeyPatch, manager: PipelineManager) -> list[dict]:
    launched: list[dict] = []
    monkeypatch.setattr(PipelineManager, "instance", classmethod(lambda cls: manager))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))  # no server, no tunnel
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # serve's thread setting stays out of the tests
    return launched


def test_serve_passes_share_and_auth_to_launch(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture):
    monkeypatch.setenv("BRANDGEN_HOME", str(manager.paths.home))
    launched = _stub_launch(monkeypatch, manager)
    main(["serve", "--share", "--auth", "designer:s3cret", "--port", "7999"])
    monkeypatch.setenv("BRANDGEN_SHARE", "1")
    monkeypatch.setenv("BRANDGEN_AUTH", "team:pw")
    main(["serve"])
    monkeypatch.delenv("BRANDGEN_AUTH")
    main(["serve"])
    _join_preloads()  # each serve started one; none may outlive this test
    first, from_env, open_share = launched
    assert first["share"] is True and first["auth"] == ("designer", "s3cret") and first["server_port"] == 7999
    assert from_env["share"] is True and from_env["auth"] == ("team", "pw")
    assert open_share["auth"] is None and "anyone with the link" in capsys.readouterr().err
    home = manager.paths.home
    assert first["allowed_paths"] == [str(home / "outputs"), str(home / "benchmarks")]
    assert first["server_name"] == "127.0.0.1" and first["show_error"] is True


def test_serve_loads_the_default_model_in_the_background(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch):
    """The page comes up at once and the first Generate click does not also pay for loading the model."""
    monkeypatch.setenv("BRANDGEN_HOME", str(manager.paths.home))
    _stub_launch(monkeypatch, manager)
    manager.unload()
    assert manager.current_model is None
    main(["serve"])
    _join_preloads()
    assert manager.current_model == manager.registry.default_id


def _join_preloads() -> None:
    for thread in threading.enumerate():
        if thread.name == "brandgen-preload":
            thread.join(timeout=60)
            assert not thread.is_alive(), "the background model load did not finish in 60 s"


def test_a_bad_auth_stops_serve_before_any_model_loads(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(PipelineManager, "instance", classmethod(lambda cls: pytest.fail("must not load")))
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--auth", "designer"])
    assert caught.value.code == 2 and "must be user:password" in capsys.readouterr().err


def test_app_py_starts_from_any_working_directory(tmp_path: Path):
    """A Space runs `python app.py`; Python puts app.py's folder (the repository root) first on sys.path."""
    out = subprocess.run([sys.executable, str(REPO / "app.py"), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--share" in out.stdout and "--auth" in out.stdout


# ----- what a Space reads -------------------------------------------------------------------------------
def _front_matter() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "the Space configuration must be the very first thing in README.md"
    head, _, body = text[4:].partition("\n---\n")
    assert body.lstrip().startswith("# BrandGen")
    return yaml.safe_load(head)


def test_readme_front_matter_configures_the_space():
    meta = _front_matter()
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gr.__version__
    assert (REPO / meta["app_file"]).is_file() and meta["python_version"] == "3.11"
    assert meta["colorFrom"] in ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
    assert meta["colorTo"] in ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
    assert meta["pinned"] is False and 0 < len(meta["short_description"]) <= 60 and meta["title"] == "BrandGen"
    assert meta["suggested_hardware"] in ("t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large", "l40sx1")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["license"] == pyproject["project"]["license"].lower()
    registry = json.loads((REPO / "presets" / "models.json").read_text(encoding="utf-8"))
    hub_ids = {e["source"] for e in registry.values() if e["source_type"] == "hub"}
    hub_ids |= {c["source"] for e in registry.values() for c in e.get("extra_components", {}).values()}
    assert set(meta["models"]) == hub_ids and len(meta["models"]) == len(hub_ids)


def test_requirements_txt_matches_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {dep.split("#")[0].replace(" ", "") for dep in pyproject["project"]["dependencies"]}
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    listed = {line.replace(" ", "") for line in lines if line}
    assert listed == wanted
    assert not any(line.startswith(("-e", ".")) for line in listed)  # a Space installs it before copying the repo
    assert not any(line.startswith("torch==") for line in listed)  # the Space's GPU image picks its build
