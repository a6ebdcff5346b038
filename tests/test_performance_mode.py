"""Performance mode from start-up settings: environment, CLI flags, the manager singleton, the Generate tab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from brandgen import cli
from brandgen.acceleration import QUANTIZATIONS, FastPathOptions
from brandgen.errors import InvalidInput
from brandgen.generation import GenerationRequest
from brandgen.manager import PipelineManager
from brandgen.performance_mode import describe, options_from_env

ENV_NAMES = ("BRANDGEN_PERFORMANCE", "BRANDGEN_QUANTIZATION", "BRANDGEN_COMPILE", "BRANDGEN_LORA_HOTSWAP",
             "BRANDGEN_COMPILE_CACHE")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_NAMES:  # set, then delete: teardown restores each to its state before the test,
        monkeypatch.setenv(name, "")  # even when the code under test wrote os.environ itself
        monkeypatch.delenv(name)
    return monkeypatch


def test_off_unless_asked_and_the_defaults_when_on(tmp_path: Path):
    assert options_from_env({}) is None
    assert options_from_env({"BRANDGEN_PERFORMANCE": "0"}) is None
    on = options_from_env({"BRANDGEN_PERFORMANCE": "yes"}, cache_default=tmp_path / "cache")
    assert on == FastPathOptions(compile="auto", quantization="none", lora_hotswap=True,
                                 cache_dir=str(tmp_path / "cache"))


def test_every_setting_is_read():
    env = {"BRANDGEN_PERFORMANCE": "1", "BRANDGEN_QUANTIZATION": "FP8", "BRANDGEN_COMPILE": "full",
           "BRANDGEN_LORA_HOTSWAP": "off", "BRANDGEN_COMPILE_CACHE": "/data/inductor",
           "BRANDGEN_COMPILE_MODE": "reduce-overhead"}
    options = options_from_env(env)
    assert (options.quantization, options.compile, options.lora_hotswap, options.cache_dir, options.compile_mode) == (
        "fp8", "full", False, "/data/inductor", "reduce-overhead")


@pytest.mark.parametrize("value,on,style", [("1", True, "merge"), ("merge", True, "merge"), ("SLOT", True, "slot"),
                                            ("no", False, "merge")])
def test_the_lora_switcher_is_merge_by_default_or_the_slot(value: str, on: bool, style: str):
    options = options_from_env({"BRANDGEN_PERFORMANCE": "1", "BRANDGEN_LORA_HOTSWAP": value})
    assert (options.lora_hotswap, options.hotswap_style) == (on, style)


@pytest.mark.parametrize("name,value,hint", [
    ("BRANDGEN_PERFORMANCE", "fast", "use 1 or 0"),
    ("BRANDGEN_QUANTIZATION", "int4", "none, fp8, int8wo"),
    ("BRANDGEN_COMPILE", "turbo", "off, auto, regional, full"),
    ("BRANDGEN_LORA_HOTSWAP", "maybe", "slot"),
    ("BRANDGEN_COMPILE_MODE", "ludicrous", "default, reduce-overhead, max-autotune"),
])
def test_a_bad_value_is_named_not_ignored(name: str, value: str, hint: str):
    env = {"BRANDGEN_PERFORMANCE": "1", name: value}
    with pytest.raises(InvalidInput, match=name) as caught:
        options_from_env(env)
    assert hint in str(caught.value) and value in str(caught.value)


def test_the_singleton_starts_in_performance_mode_from_the_environment(clean_env, tmp_path: Path):
    clean_env.setattr(PipelineManager, "_instance", None)
    clean_env.setenv("BRANDGEN_HOME", str(tmp_path))
    clean_env.setenv("BRANDGEN_PERFORMANCE", "1")
    manager = PipelineManager.instance()
    assert manager.fast_path is not None and manager.fast_path.lora_hotswap
    assert manager.fast_path.cache_dir == str(tmp_path / ".cache" / "inductor")
    clean_env.setattr(PipelineManager, "_instance", None)
    clean_env.setenv("BRANDGEN_PERFORMANCE", "0")
    assert PipelineManager.instance().fast_path is None


def test_cli_flags_turn_it_on_and_a_bad_setting_stops_before_any_model_loads(clean_env, capsys):
    args = cli.build_parser().parse_args(["generate", "an icon", "--performance", "--quantization", "int8wo"])
    cli.performance_env(args)
    assert options_from_env().quantization == "int8wo"
    clean_env.setenv("BRANDGEN_COMPILE", "turbo")
    clean_env.setattr(PipelineManager, "_instance", None)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["generate", "an icon", "--out", "unused"])
    assert stopped.value.code == 2
    assert "BRANDGEN_COMPILE='turbo'" in capsys.readouterr().err
    assert PipelineManager._instance is None, "no manager (and no model) before the settings are valid"


def test_the_generate_tab_line_says_what_applied_and_why_not(manager: PipelineManager):
    assert "BRANDGEN_PERFORMANCE=1" in describe(None, {})
    fast = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                           fast_path=FastPathOptions(lora_hotswap=True))
    assert "applied when the next model loads" in describe(fast.fast_path, fast.fast_path_report)
    fast.generate(GenerationRequest(prompt="a red star icon", model_id="tiny-sd15", preset="draft", seed=1, steps=1))
    text = describe(fast.fast_path, fast.fast_path_report)
    assert text.startswith("**Performance mode:** on (cpu)")
    assert "lora_hotswap" in text and "sdpa" in text.split("Not applied")[0]
    assert "resident: not a CUDA device" in text


def test_the_cli_parser_offers_the_fast_paths_quantizations_without_importing_torch():
    """On ZeroGPU `spaces` must be imported before torch; `serve` does that after parsing its arguments."""
    assert cli.QUANTIZATION_CHOICES == QUANTIZATIONS
    code = "import sys, brandgen.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
