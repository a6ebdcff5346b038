"""Compiled denoisers (tiny UNet, tiny FLUX DiT) after the load-time warm-up: LoRA switches across the three key
formats, a weight change and batch 1 -> 4 -> 1 compile nothing (dynamo raises on any recompile), and every image
matches the eager, unfused peft reference (`set_adapters`) loaded from the peft file; for both switchers,
LoRAs merged into the (QKV-fused) weights and the peft adapter slot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionXLPipeline

import tiny_pipelines
from brandgen.acceleration import FastPathOptions, accelerate_model
from brandgen.errors import LoraError
from brandgen.lora_fuse import LoraFuser
from brandgen.lora_hotswap import LoraHotswapper
from brandgen.loras import read_lora_factors
from brandgen.training.families import FAMILIES
from brandgen.warmup import compiled_graphs, warm_up
from lora_formats import FORMATS, write_formats

CASES = {  # family -> builder, pipeline class, LoRA targets (attention + other layers), kohya naming, guidance
    "sdxl": (tiny_pipelines.build_sdxl, StableDiffusionXLPipeline,
             ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"), "sdxl", 5.0),
    "flux": (tiny_pipelines.build_flux, FluxPipeline,
             ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "ff.net.2"), "sd3", 3.5),
}
SIDE = 32


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory: pytest.TempPathFactory) -> dict:
    family = request.param
    build, cls, targets, kohya_family, guidance = CASES[family]
    root = tmp_path_factory.mktemp(family)
    folder = build(root / "pipe")
    reference = cls.from_pretrained(folder)
    loras = {name: write_formats(reference, family, root / "loras", name, targets, rank, seed, kohya_family)
             for name, rank, seed in (("a", 4, 1), ("b", 8, 2))}
    for name in loras:  # the reference: diffusers' own loader on the peft files, eager and unfused
        reference.load_lora_weights(str(loras[name]["peft"]), adapter_name=name)
    reference.set_progress_bar_config(disable=True)
    return {"family": family, "cls": cls, "folder": folder, "loras": loras, "reference": reference,
            "guidance": guidance}


def _latents(pipe, guidance: float, count: int) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(i) for i in range(count)]
    with torch.inference_mode():
        return pipe(prompt="a red star icon", num_inference_steps=2, guidance_scale=guidance, width=SIDE,
                    height=SIDE, num_images_per_prompt=count, generator=generators, output_type="latent").images


def _reference(case: dict, lora: str | None, weight: float, count: int) -> torch.Tensor:
    pipe = case["reference"]
    if lora is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters([lora], adapter_weights=[weight])
    return _latents(pipe, case["guidance"], count)


def test_formats_read_to_the_same_factors(case: dict):
    pipe = case["reference"]
    factors = {fmt: read_lora_factors(pipe, path) for fmt, path in case["loras"]["b"].items()}
    peft = factors["peft"].factors
    denoiser = next(iter(peft))
    assert len(peft[denoiser]) > 6
    for fmt in FORMATS:
        got = factors[fmt].factors
        assert got.keys() == peft.keys() and got[denoiser].keys() == peft[denoiser].keys(), fmt
        for module, (down, up) in peft[denoiser].items():
            assert torch.allclose(got[denoiser][module][1] @ got[denoiser][module][0], up @ down, atol=1e-5), \
                (fmt, module)


# the default merge on both; the opt-in slot on the DiT only (SD1.5's slot runs in test_fastpath): CI stays short
STYLES = {"sdxl": ("merge",), "flux": ("merge", "slot")}


def test_no_recompile_after_warmup_across_formats_weights_and_batches(case: dict):
    for style in STYLES[case["family"]]:
        _switch_without_recompiling(case, style)


def _switch_without_recompiling(case: dict, style: str) -> None:
    pipe = case["cls"].from_pretrained(case["folder"])
    pipe.set_progress_bar_config(disable=True)
    denoiser = pipe.unet if case["family"] == "sdxl" else pipe.transformer
    if style == "slot":
        hotswap = LoraHotswapper(pipe, target_rank=8, targets=FAMILIES[case["family"]].default_targets)
        assert hotswap.prepare() > 10
    # performance mode's own denoiser path (auto compile: the UNet whole, with step-cache taps; the DiT by its
    # blocks), with dynamo's eager backend: its guards are what recompiles, and eager keeps CI fast
    options = FastPathOptions(bf16=False, channels_last=False, compile_backend="eager", allow_cpu=True,
                              lora_hotswap=True, hotswap_style=style)
    report = accelerate_model(denoiser, options, gpu_ok=True, report={})
    assert f"compile:{'full' if case['family'] == 'sdxl' else 'regional'}" in report["applied"]
    if style == "merge":  # performance mode's default: fused QKV stays on, LoRAs go into its rows
        assert report["fused_attention_modules"] > 0
        hotswap = LoraFuser(pipe)
    warm = warm_up(pipe, SIDE, SIDE, case["guidance"])
    assert warm["graphs_compiled"] > 0
    graphs = compiled_graphs()
    loras = case["loras"]
    steps = [("a", "diffusers", 1.0, 1), ("b", "kohya", 1.0, 4), ("a", "peft", 1.0, 1), ("a", "peft", 0.6, 1),
             (None, None, 0.0, 2), ("b", "diffusers", -0.8, 3)]
    outputs = {}
    with torch._dynamo.config.patch(error_on_recompile=True):
        for lora, fmt, weight, count in steps:
            hotswap.activate(loras[lora][fmt] if lora else None, weight)
            got = _latents(pipe, case["guidance"], count)
            want = _reference(case, lora, weight, count)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=2e-4, rtol=1e-3), (style, lora, fmt, weight,
                                                                     (got - want).abs().max())
            outputs[(lora, weight)] = got[:1]
    assert compiled_graphs() == graphs, "nothing may compile after the warm-up"
    off = outputs[(None, 0.0)]
    for key in (("a", 1.0), ("a", 0.6), ("b", 1.0)):  # each LoRA (and weight) really changes the image
        assert (outputs[key] - off).abs().max() > 1e-2, key
    assert (outputs[("a", 1.0)] - outputs[("a", 0.6)]).abs().max() > 1e-3


def test_lora_on_other_layers_rebuilds_the_slot_and_says_why(case: dict, tmp_path: Path):
    pipe = case["cls"].from_pretrained(case["folder"])
    pipe.set_progress_bar_config(disable=True)
    hotswap = LoraHotswapper(pipe, target_rank=4, targets=("to_q",))  # a small slot: the test LoRAs do not fit
    hotswap.prepare()
    assert hotswap.activate(case["loras"]["a"]["peft"], 1.0).startswith("LoRA 'a_peft' trains")
    assert torch.allclose(_latents(pipe, case["guidance"], 1), _reference(case, "a", 1.0, 1), atol=2e-4, rtol=1e-3)
    note = hotswap.activate(case["loras"]["b"]["kohya"], 1.0)
    assert "rank 8, above the slot's rank 4" in note
    assert hotswap.activate(case["loras"]["a"]["diffusers"], 1.0) == ""  # it fits the rebuilt slot now
    broken = tmp_path / "broken.safetensors"
    from safetensors.torch import save_file

    save_file({"transformer.nope.lora_A.weight": torch.zeros(2, 4), "transformer.nope.lora_B.weight":
               torch.zeros(4, 2)}, str(broken))
    with pytest.raises(LoraError, match="made for another model"):
        hotswap.activate(broken, 1.0)
    assert hotswap.path is None  # a failed load leaves the slot empty, not half-copied
    assert torch.allclose(_latents(pipe, case["guidance"], 1), _reference(case, None, 0.0, 1), atol=2e-4)
