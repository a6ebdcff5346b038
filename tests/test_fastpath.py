"""The GPU fast path on CPU: option checks, QKV fusion, what is skipped and why, LoRA safety, hotswap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brandgen.acceleration import FastPathOptions, accelerate_model, apply_fast_path, compiled_modules, qkv_fused
from brandgen.errors import InvalidInput
from brandgen.quantization import torchao_missing_reason
from brandgen.generation import GenerationRequest
from brandgen.lora_hotswap import HOTSWAP_ADAPTER
from brandgen.manager import PipelineManager
from brandgen.performance_mode import describe
from conftest import make_sd15_lora


def _pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in result.images])


def _req(**kw) -> GenerationRequest:
    return GenerationRequest(**{**dict(prompt="a red star icon", model_id="tiny-sd15", preset="draft", seed=7,
                                       steps=1), **kw})


def _fast_manager(manager: PipelineManager, **options) -> PipelineManager:
    return PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                           fast_path=FastPathOptions(**options))


def _tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=2)


def _tiny_flux(single_layers: int) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=single_layers,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))


@pytest.mark.parametrize("field,value,match", [
    ("compile", "turbo", "compile must be one of"), ("compile_mode", "fastest", "compile_mode"),
    ("quantization", "int4", "quantization"), ("hotswap_rank", 0, "hotswap_rank"),
    ("hotswap_style", "magic", "hotswap_style"), ("unet_regions", "cells", "unet_regions"),
])
def test_option_validation(field, value, match):
    with pytest.raises(InvalidInput, match=match):
        FastPathOptions(**{field: value}).validated()
    assert FastPathOptions(compile="full", compile_mode="max-autotune-no-cudagraphs").validated()


def test_fused_qkv_on_cpu_keeps_outputs_and_reports_skips(manager: PipelineManager):
    plain = _pixels(manager.generate(_req()))
    fast = _fast_manager(manager, quantization="int8wo")
    result = fast.generate(_req())
    assert qkv_fused(fast.pipeline.unet)
    assert type(next(iter(fast.pipeline.unet.attn_processors.values()))).__name__ == "FusedAttnProcessor2_0"
    assert np.abs(_pixels(result) - plain).max() <= 1.0, "fusing QKV must not change the image"
    report = fast.fast_path_report
    assert report["denoiser"] == "unet" and report["fused_attention_modules"] > 0
    assert {"sdpa", "fuse_qkv", "fuse_qkv_vae"} <= set(report["applied"])
    for step in ("resident", "bf16", "channels_last", "compile", "quantization"):
        assert "CPU" in report["skipped"][step] or "CUDA" in report["skipped"][step], step
    assert compiled_modules(fast.pipeline.unet) == 0 and fast.pipeline.unet.dtype == torch.float32


def test_compile_off_leaves_modules_untouched(manager: PipelineManager):
    manager.load_model("tiny-sd15")
    pipe = manager.pipeline
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    report = apply_fast_path(pipe, FastPathOptions(compile="off", fuse_qkv=False, bf16=False, allow_cpu=True))
    after = pipe.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors
    assert compiled_modules(pipe.unet) == 0 and compiled_modules(pipe.vae) == 0
    assert report["skipped"]["compile"] == "off" and report["skipped"]["fuse_qkv"] == "off"


def test_regional_compile_path_on_cpu(manager: PipelineManager):
    """The regional compile path, with dynamo's eager backend so it takes seconds on CPU (performance mode's default,
    the UNet whole, runs in test_performance_mode_compiles_at_load_then_switches_formats_without_recompiling)."""
    plain = _pixels(manager.generate(_req()))
    fast = _fast_manager(manager, allow_cpu=True, bf16=False, compile_backend="eager", fuse_qkv=False,
                         compile="regional")
    result = fast.generate(_req())
    report = fast.fast_path_report
    assert "compile:regional" in report["applied"]
    assert report["compiled_regions"] == compiled_modules(fast.pipeline.unet) > 1
    assert np.abs(_pixels(result) - plain).max() <= 1.0


def test_auto_compile_takes_a_unet_whole_and_a_dit_by_its_blocks():
    from brandgen.acceleration import compile_choice

    unet = _tiny_unet()
    dit = _tiny_flux(1)
    assert compile_choice(unet, "auto") == "full" and compile_choice(dit, "auto") == "regional"
    assert compile_choice(torch.nn.Linear(2, 2), "auto") == "full"  # nothing known to compile by regions
    for named in ("off", "regional", "full"):
        assert compile_choice(unet, named) == compile_choice(dit, named) == named


def test_missing_torchao_is_reported_not_fatal(manager: PipelineManager, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")] + ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed (the dev extra installs it)
    assert torchao_missing_reason() is not None
    manager.load_model("tiny-sd15")
    report = accelerate_model(manager.pipeline.unet, FastPathOptions(quantization="fp8", compile="off"),
                              gpu_ok=True, report={})
    assert "pip install torchao" in report["skipped"]["quantization"]


def test_lora_after_fused_qkv_unfuses_so_the_lora_applies(manager: PipelineManager, tiny_dirs):
    make_sd15_lora(tiny_dirs["sd15"], manager.paths.loras / "acme.safetensors", seed=1)
    expected = _pixels(manager.generate(_req(loras=(("acme", 1.0),))))
    fast = _fast_manager(manager)
    plain = _pixels(fast.generate(_req()))
    assert qkv_fused(fast.pipeline.unet) and np.abs(expected - plain).mean() > 1.0, "the LoRA must show"
    got = _pixels(fast.generate(_req(loras=(("acme", 1.0),))))
    assert not qkv_fused(fast.pipeline.unet)
    assert np.abs(got - expected).max() <= 2.0, "a fused QKV projection must not bypass the LoRA"


def test_hotswap_uses_one_slot_and_matches_normal_loading(manager: PipelineManager, tiny_dirs):
    loras = manager.paths.loras
    make_sd15_lora(tiny_dirs["sd15"], loras / "acme.safetensors", seed=1)
    make_sd15_lora(tiny_dirs["sd15"], loras / "other.safetensors", seed=2, rank=8)
    reference = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                                fuse_single_lora=False)
    fast = _fast_manager(manager, lora_hotswap=True, hotswap_rank=8, hotswap_style="slot")
    assert "lora_hotswap" in (fast.load_model("tiny-sd15") and fast.fast_path_report["applied"])
    assert fast.fast_path_report["skipped"]["fuse_qkv"].startswith("the LoRA slot")
    for loras_wanted in ((("acme", 1.0),), (("other", 1.0),), (("other", 0.5),), ()):
        got = _pixels(fast.generate(_req(loras=loras_wanted)))
        want = _pixels(reference.generate(_req(loras=loras_wanted)))
        assert np.abs(got - want).max() <= 2.0, loras_wanted
        assert fast.pipeline.get_list_adapters().get("unet") == [HOTSWAP_ADAPTER]
        assert not fast._loaded.fused
    with pytest.raises(InvalidInput, match="one LoRA at a time"):
        fast.generate(_req(loras=(("acme", 1.0), ("other", 1.0))))
    fast.unload_loras()
    assert fast.generate(_req(loras=(("other", 1.0),))).images


def test_quantization_that_changes_nothing_is_reported(monkeypatch):
    """A torchao that does not match the installed torch can leave weights untouched without an error."""
    import sys
    import types

    from brandgen.quantization import quantize_weights

    fake = types.ModuleType("torchao")
    fake.__version__ = "0.0-mismatch"
    fake_q = types.ModuleType("torchao.quantization")
    fake_q.quantize_ = lambda model, config, filter_fn=None: None
    configs: list[dict] = []
    fake_q.Int8WeightOnlyConfig = lambda **kwargs: configs.append(kwargs)
    fake.quantization = fake_q
    monkeypatch.setitem(sys.modules, "torchao", fake)
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake_q)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(InvalidInput, match="0.0-mismatch left every Linear layer unquantized"):
        quantize_weights(model, "int8wo")
    # torchao must not switch on inductor's coordinate-descent tuning (minutes of autotuning at the next compile)
    assert configs == [{"set_inductor_config": False}]


def test_quantization_covers_the_compiled_regions_and_keeps_merge_targets(monkeypatch):
    """torchao's filter_fn sees every Linear: those inside the compiled regions are quantized, LoRA targets among
    them for the slot (it wraps them later); one outside stays bf16 (eager tensor-subclass dispatch costs more).
    With `keep` (LoRAs merged into the weights) the LoRA layers and the fused projections holding them stay bf16."""
    import sys
    import types

    from brandgen.quantization import quantize_weights

    class Quantized(torch.Tensor):
        pass

    def quantize_(model, config, filter_fn):
        for fqn, module in model.named_modules():
            if filter_fn(module, fqn):
                module.weight = torch.nn.Parameter(module.weight.data.as_subclass(Quantized), requires_grad=False)

    fake_q = types.ModuleType("torchao.quantization")
    fake_q.quantize_, fake_q.Int8WeightOnlyConfig = quantize_, lambda **kwargs: kwargs
    fake = types.ModuleType("torchao")
    fake.quantization = fake_q
    monkeypatch.setitem(sys.modules, "torchao", fake)
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake_q)
    def block() -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict({"attn": torch.nn.ModuleDict({"to_q": torch.nn.Linear(4, 4),
                                                                 "to_qkv": torch.nn.Linear(4, 12)}),
                                    "proj_mlp": torch.nn.Linear(4, 4), "norm": torch.nn.LayerNorm(4)})

    def model() -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([block(), block()]),
                                    "proj_out": torch.nn.Linear(4, 4)})

    slot = model()
    report = quantize_weights(slot, "int8wo", within=("blocks.0", "blocks.1"))
    assert report == "int8wo: 6 Linear layers, 1 kept (outside compiled code)"
    for i in range(2):
        for layer in (slot["blocks"][i]["attn"]["to_q"], slot["blocks"][i]["attn"]["to_qkv"],
                      slot["blocks"][i]["proj_mlp"]):
            assert type(layer.weight.data) is Quantized
    assert type(slot["proj_out"].weight.data) is torch.Tensor
    merge = model()
    report = quantize_weights(merge, "int8wo", within=("blocks.0", "blocks.1"), keep=("to_q",))
    assert report == "int8wo: 2 Linear layers, 5 kept (outside compiled code or LoRA layers)"
    for i in range(2):
        assert type(merge["blocks"][i]["attn"]["to_q"].weight.data) is torch.Tensor
        assert type(merge["blocks"][i]["attn"]["to_qkv"].weight.data) is torch.Tensor  # holds to_q's rows
        assert type(merge["blocks"][i]["proj_mlp"].weight.data) is Quantized
    assert quantize_weights(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int8wo") == "int8wo: 1 Linear layers"


def test_unet_regions_are_its_layers_or_blocks_and_dits_keep_their_repeated_blocks():
    """A UNet compiles as its attention stacks, ResNets and samplers by default (each outermost once; modules of one
    shape share a graph), or as its down/mid/up blocks; a DiT's repeated transformer blocks stay the regions."""
    from brandgen.acceleration import region_modules

    unet = _tiny_unet()
    layers = dict(region_modules(unet))
    kinds = {type(m).__name__ for m in unet.modules()}
    want = {n for n, m in unet.named_modules() if type(m).__name__ in ("Transformer2DModel", "ResnetBlock2D",
                                                                      "Downsample2D", "Upsample2D")}
    assert set(layers) == want and {"Transformer2DModel", "ResnetBlock2D", "Downsample2D"} <= kinds
    assert "mid_block.attentions.0" in layers and "up_blocks.0.upsamplers.0" in layers
    inside = sum(p.numel() for m in layers.values() for p in m.parameters())
    assert inside > 0.9 * sum(p.numel() for p in unet.parameters())  # nearly all weights run compiled
    expected = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"] + [
        f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    assert sorted(name for name, _ in region_modules(unet, "blocks")) == sorted(expected)
    dit = _tiny_flux(2)
    assert sorted(name for name, _ in region_modules(dit)) == [
        "single_transformer_blocks.0", "single_transformer_blocks.1", "transformer_blocks.0"]


def test_unet_compiles_with_the_guides_inductor_options_and_modes_without_them(monkeypatch):
    """A UNet compiled by inductor in the default mode gets conv_1x1_as_mm / no epilogue fusion (as the expert recipe
    does); a named mode (torch.compile refuses mode and options together), another backend or a DiT gets none."""
    from brandgen.acceleration import UNET_INDUCTOR_OPTIONS, compile_full, compile_regions

    unet = _tiny_unet()
    dit = _tiny_flux(1)
    seen: list[dict] = []
    real_compile = torch.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    compile_full(unet)
    compile_full(unet, mode="reduce-overhead")
    compile_full(unet, backend="eager")
    compile_full(dit)
    compile_regions(unet)
    assert seen[0]["options"] == UNET_INDUCTOR_OPTIONS and "mode" not in seen[0]
    assert seen[1]["mode"] == "reduce-overhead" and "options" not in seen[1]
    assert all("options" not in kw for kw in seen[2:4])
    assert all(kw.get("options") == UNET_INDUCTOR_OPTIONS for kw in seen[4:]) and len(seen) > 5
    for kw in seen:  # torch.compile accepts every combination made
        real_compile(torch.nn.Identity(), **kw)


def _with_text_encoder_part(pipe, path, seed: int = 5) -> None:
    """Add kohya `lora_te_` layers (A1111 LoRAs often train CLIP too) to a kohya file."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    generator = torch.Generator().manual_seed(seed)
    for name in ("encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1"):
        layer = pipe.text_encoder.get_submodule(name)
        key = "lora_te_text_model_" + name.replace(".", "_")  # A1111's CLIP names
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, layer.in_features, generator=generator) * 0.3
        tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, 4, generator=generator) * 0.3
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))


def test_performance_mode_compiles_at_load_then_switches_formats_without_recompiling(manager: PipelineManager):
    """The manager in performance mode on CPU (dynamo with its eager backend): the LoRA slot and the warm-up run in
    load_model with progress; afterwards LoRAs in every key format, a weight change and batch 1 -> 4 -> 1 compile
    nothing, and images match the plain (unfused, eager) manager, which reads every format too."""
    from brandgen.warmup import compiled_graphs
    from lora_formats import write_formats

    manager.load_model("tiny-sd15")
    targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2")
    loras = manager.paths.loras
    write_formats(manager.pipeline, "sd15", loras, "a", targets, rank=4, seed=1)
    files = write_formats(manager.pipeline, "sd15", loras, "b", targets, rank=8, seed=2)
    _with_text_encoder_part(manager.pipeline, files["kohya"])
    write_formats(manager.pipeline, "sd15", loras, "wide", ("to_q", "time_emb_proj"), rank=16, seed=3)
    plain = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                            fuse_single_lora=False)
    fast = _fast_manager(manager, allow_cpu=True, bf16=False, compile_backend="eager", lora_hotswap=True,
                         hotswap_rank=8, hotswap_style="slot")
    seen: list[tuple[int, int, str]] = []
    fast.load_model("tiny-sd15", progress=lambda done, total: seen.append((done, total, fast.stage)))
    report = fast.fast_path_report
    assert report["lora_slot"]["layers"] > 10 and report["warmup"]["graphs_compiled"] > 0
    assert "compile:full" in report["applied"] and fast.pipeline.unet._compiled_call_impl is not None  # auto
    assert seen[-1][:2] == (3, 3) and all("Compiling Tiny SD1.5" in stage for *_, stage in seen)
    assert fast.stage == "" and "Compiled at load: 3 warm-up calls" in describe(fast.fast_path, report)
    graphs = compiled_graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for loras_wanted, count in (((("a_diffusers", 1.0),), 1), ((("b_kohya", 0.7),), 4), ((("a_peft", 1.0),), 1),
                                    ((("a_peft", 0.5),), 2), ((), 1)):
            got = fast.generate(_req(loras=loras_wanted, count=count))
            want = plain.generate(_req(loras=loras_wanted, count=count))
            assert np.abs(_pixels(got) - _pixels(want)).max() <= 2.0, loras_wanted
            assert got.notes == []
    assert compiled_graphs() == graphs
    a_diffusers = _pixels(plain.generate(_req(loras=(("a_diffusers", 1.0),))))
    assert np.abs(a_diffusers - _pixels(plain.generate(_req(loras=(("a_peft", 1.0),))))).max() <= 2.0, \
        "a diffusers-format file must load every layer, as its peft twin does"
    assert np.abs(a_diffusers - _pixels(plain.generate(_req()))).mean() > 1.0
    b_kohya = _pixels(fast.generate(_req(loras=(("b_kohya", 1.0),))))  # its CLIP layers count too
    assert np.abs(b_kohya - _pixels(fast.generate(_req(loras=(("b_peft", 1.0),))))).mean() > 1.0
    wide = fast.generate(_req(loras=(("wide_peft", 1.0),)))  # time_emb_proj and rank 16: outside the slot
    assert len(wide.notes) == 1 and "outside the LoRA slot" in wide.notes[0] and "recompiles" in wide.notes[0]
    assert np.abs(_pixels(wide) - _pixels(plain.generate(_req(loras=(("wide_peft", 1.0),))))).max() <= 2.0
