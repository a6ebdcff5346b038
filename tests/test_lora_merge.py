"""LoRAs merged into the weights in place (performance mode's default switcher): the formula on Linear, fused QKV
rows and channels_last convolutions, several LoRAs at once, exact restore, refusal without side effects, and the
manager in performance mode (compiled on CPU with dynamo's eager backend) matching plain loading with 0 recompiles."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from brandgen.acceleration import FastPathOptions, lora_layer
from brandgen.errors import LoraError
from brandgen.generation import GenerationRequest
from brandgen.lora_fuse import LoraFuser, merge_target
from brandgen.loras import LoraFactors
from brandgen.manager import PipelineManager


class _Attention(torch.nn.Module):
    """diffusers' layout after fuse_projections: to_q/to_k/to_v stay, the forward pass uses to_qkv."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)
        self.to_qkv = torch.nn.Linear(4, 9)
        self.fused_projections = True


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.conv = torch.nn.Conv2d(4, 6, 3).to(memory_format=torch.channels_last)
    model.lin = torch.nn.Linear(5, 7)
    model.attn = _Attention()
    return model


def _fuser(model: torch.nn.Module, loras: dict[str, LoraFactors]) -> LoraFuser:
    fuser = LoraFuser(SimpleNamespace(unet=model))
    fuser._factors = lambda path, name: loras[name]  # the file reading is tested in test_zero_recompile
    return fuser


def _lora(name: str, layers: dict[str, tuple[tuple[int, ...], tuple[int, ...]]], seed: int) -> LoraFactors:
    gen = torch.Generator().manual_seed(seed)
    return LoraFactors(name, {"unet": {m: (torch.randn(a, generator=gen), torch.randn(b, generator=gen))
                                       for m, (a, b) in layers.items()}})


def _delta(factors: tuple[torch.Tensor, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    down, up = factors
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).view(shape)


def test_merge_is_w0_plus_the_weighted_deltas_and_restores_exactly():
    model = _model()
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    a = _lora("a", {"conv": ((2, 4, 3, 3), (6, 2, 1, 1)), "lin": ((2, 5), (7, 2)), "attn.to_k": ((3, 4), (2, 3))}, 1)
    b = _lora("b", {"lin": ((4, 5), (7, 4))}, 2)
    fuser = _fuser(model, {"a": a, "b": b})
    fuser.set([(Path("a"), 0.5, "a"), (Path("b"), -1.0, "b")])
    fa, fb = a.factors["unet"], b.factors["unet"]
    assert torch.allclose(model.conv.weight, w0["conv.weight"] + 0.5 * _delta(fa["conv"], model.conv.weight.shape),
                          atol=1e-5)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    want = w0["lin.weight"] + 0.5 * _delta(fa["lin"], (7, 5)) - _delta(fb["lin"], (7, 5))
    assert torch.allclose(model.lin.weight, want, atol=1e-5)
    qkv = model.attn.to_qkv.weight  # to_k's rows are 4..5: only they change
    assert torch.equal(qkv[:4], w0["attn.to_qkv.weight"][:4]) and torch.equal(qkv[6:], w0["attn.to_qkv.weight"][6:])
    assert torch.allclose(qkv[4:6], w0["attn.to_qkv.weight"][4:6] + 0.5 * _delta(fa["attn.to_k"], (2, 4)), atol=1e-5)
    assert torch.equal(model.attn.to_k.weight, w0["attn.to_k.weight"])  # the unused separate layer stays
    fuser.set([(Path("b"), 1.0, "b")])  # a's layers go back to W0 bit for bit, not W0 + d - d
    assert torch.equal(model.conv.weight, w0["conv.weight"]) and torch.equal(qkv, w0["attn.to_qkv.weight"])
    assert torch.allclose(model.lin.weight, w0["lin.weight"] + _delta(fb["lin"], (7, 5)), atol=1e-5)
    assert fuser.path == Path("b")
    fuser.reset()
    assert all(torch.equal(v, w0[k]) for k, v in model.state_dict().items())
    assert fuser.active == () and fuser.path is None


def test_a_lora_on_a_quantized_layer_is_refused_and_changes_nothing():
    class Quantized(torch.Tensor):
        pass

    model = _model()
    model.lin.weight = torch.nn.Parameter(model.lin.weight.data.as_subclass(Quantized), requires_grad=False)
    good = _lora("good", {"conv": ((2, 4, 3, 3), (6, 2, 1, 1))}, 1)
    bad = _lora("bad", {"lin": ((2, 5), (7, 2))}, 2)
    fuser = _fuser(model, {"good": good, "bad": bad})
    fuser.set([(Path("good"), 1.0, "good")])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoraError, match=r"LoRA 'bad': layer lin holds Quantized weights \(quantized\)"):
        fuser.set([(Path("good"), 0.3, "good"), (Path("bad"), 1.0, "bad")])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert fuser.active == ((Path("good"), 1.0),)
    with pytest.raises(LoraError, match="LayerNorm"):
        model.norm = torch.nn.LayerNorm(4)
        merge_target(model, "norm")


def test_the_fused_projection_counts_as_its_parts_for_quantization():
    assert lora_layer("down.0.attn1.to_qkv", ("to_q",)) and lora_layer("b.attn.to_added_qkv", ("add_k_proj",))
    assert lora_layer("mid.attn2.to_kv", ("to_v",)) and not lora_layer("mid.attn2.to_kv", ("to_q",))
    assert not lora_layer("b.ff.net.0.proj", ("to_q", "ff.net.2")) and lora_layer("b.ff.net.2", ("ff.net.2",))


def _pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in result.images])


def _req(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red star icon", "model_id": "tiny-sd15", "preset": "draft", "seed": 7,
                                "steps": 1, **kw})


def test_performance_mode_merges_several_loras_of_any_format_without_recompiling(manager: PipelineManager):
    from lora_formats import write_formats

    from brandgen.warmup import compiled_graphs

    manager.load_model("tiny-sd15")
    loras = manager.paths.loras
    targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2")
    write_formats(manager.pipeline, "sd15", loras, "a", targets, rank=4, seed=1)
    write_formats(manager.pipeline, "sd15", loras, "b", targets, rank=8, seed=2)
    write_formats(manager.pipeline, "sd15", loras, "wide", ("to_q", "time_emb_proj"), rank=16, seed=3)
    plain = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                            fuse_single_lora=False)
    fast = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                           fast_path=FastPathOptions(allow_cpu=True, bf16=False, compile_backend="eager",
                                                     lora_hotswap=True))
    fast.load_model("tiny-sd15")
    report = fast.fast_path_report
    assert "fuse_qkv" in report["applied"] and report["lora_merge"] and "lora_slot" not in report
    base = _pixels(fast.generate(_req()))
    graphs = compiled_graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for wanted, count in (((("a_diffusers", 1.0),), 1), ((("b_kohya", 0.7),), 4),
                              ((("a_peft", 1.0), ("b_diffusers", -0.5)), 1), ((("wide_peft", 1.0),), 2),
                              ((("a_kohya", 0.5), ("wide_diffusers", 1.0)), 1)):
            got = fast.generate(_req(loras=wanted, count=count))
            want = plain.generate(_req(loras=wanted, count=count))
            assert np.abs(_pixels(got) - _pixels(want)).max() <= 2.0, wanted
            assert np.abs(_pixels(got)[:1] - base).mean() > 1.0, wanted  # the LoRA shows
            assert got.notes == []
    assert compiled_graphs() == graphs, "switching, weights and several LoRAs compile nothing"
    assert np.array_equal(_pixels(fast.generate(_req())), base), "no LoRA: the base weights exactly"
    assert fast.pipeline.get_list_adapters() == {} and not fast._loaded.fused


def test_a_refused_lora_keeps_the_active_ones_and_the_next_request_gets_what_it_asks(manager: PipelineManager):
    from lora_formats import write_formats
    from safetensors.torch import save_file

    manager.load_model("tiny-sd15")
    write_formats(manager.pipeline, "sd15", manager.paths.loras, "a", ("to_q", "to_k", "ff.net.2"), rank=4, seed=1)
    save_file({"unet.nope.lora_A.weight": torch.zeros(2, 4), "unet.nope.lora_B.weight": torch.zeros(4, 2)},
              str(manager.paths.loras / "alien.safetensors"))
    fast = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                           fast_path=FastPathOptions(allow_cpu=True, bf16=False, compile="off", lora_hotswap=True))
    fast.load_model("tiny-sd15")
    base = _pixels(fast.generate(_req()))
    with_a = _pixels(fast.generate(_req(loras=(("a_peft", 1.0),))))
    with pytest.raises(LoraError, match="alien"):
        fast.generate(_req(loras=(("a_peft", 1.0), ("alien", 1.0))))
    assert fast._loaded.active == (("a_peft", 1.0),)  # what the weights still hold
    assert np.array_equal(_pixels(fast.generate(_req())), base)
    assert np.array_equal(_pixels(fast.generate(_req(loras=(("a_peft", 1.0),)))), with_a)


def _fp8(layer: torch.nn.Linear) -> None:
    """The weight as BRANDGEN_QUANTIZATION=fp8 leaves it: torchao's Float8Tensor with one scale per row."""
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    layer.weight = torch.nn.Parameter(Float8Tensor.from_hp(layer.weight.data, granularity=PerRow()),
                                      requires_grad=False)


def _fp8_state(layer: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.weight.qdata.clone(), layer.weight.scale.clone()


def test_a_lora_merges_into_per_row_fp8_weights_and_switches_without_recompiling():
    """fp8 LoRA layers take the merge: dequantize W0, add the deltas, one requantization into the weight's own
    qdata and scale, so a compiled forward reads the new weights with no recompilation; W0 comes back exactly."""
    model = _model()
    _fp8(model.lin)
    _fp8(model.attn.to_qkv)
    w0 = {"lin": _fp8_state(model.lin), "qkv": _fp8_state(model.attn.to_qkv)}
    deq0 = {k: q.float() * s for k, (q, s) in w0.items()}
    a = _lora("a", {"lin": ((2, 5), (7, 2)), "attn.to_k": ((3, 4), (2, 3)), "conv": ((2, 4, 3, 3), (6, 2, 1, 1))}, 1)
    b = _lora("b", {"lin": ((4, 5), (7, 4))}, 2)
    fuser = _fuser(model, {"a": a, "b": b})
    lin = torch.compile(model.lin, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 5)
    lin(x)
    with torch._dynamo.config.patch(error_on_recompile=True):
        fuser.set([(Path("a"), 0.5, "a"), (Path("b"), -1.0, "b")])
        fa, fb = a.factors["unet"], b.factors["unet"]
        want = deq0["lin"] + 0.5 * _delta(fa["lin"], (7, 5)) - _delta(fb["lin"], (7, 5))
        got = model.lin.weight.dequantize().float()
        assert model.lin.weight.qdata.dtype == torch.float8_e4m3fn
        # e4m3 keeps 3 mantissa bits: each weight within 1/16 of its row's largest magnitude
        assert ((got - want).abs() <= want.abs().amax(dim=1, keepdim=True) / 16).all()
        assert (got - deq0["lin"]).abs().mean() > 0.1, "the LoRA shows"
        out = lin(x)
        assert torch.allclose(out.float(), x @ got.t() + model.lin.bias, atol=0.05, rtol=0.05)
        qkv = model.attn.to_qkv.weight  # to_k's rows are 4..5: only they (and their scales) change
        assert torch.equal(qkv.qdata[:4], w0["qkv"][0][:4]) and torch.equal(qkv.qdata[6:], w0["qkv"][0][6:])
        assert torch.equal(qkv.scale[:4], w0["qkv"][1][:4]) and torch.equal(qkv.scale[6:], w0["qkv"][1][6:])
        rows = qkv.dequantize().float()[4:6]
        want_rows = deq0["qkv"][4:6] + 0.5 * _delta(fa["attn.to_k"], (2, 4))
        assert ((rows - want_rows).abs() <= want_rows.abs().amax(dim=1, keepdim=True) / 16).all()
        fuser.set([(Path("b"), 1.0, "b")])  # to_qkv goes back to its fp8 W0 bit for bit
        assert torch.equal(qkv.qdata, w0["qkv"][0]) and torch.equal(qkv.scale, w0["qkv"][1])
        fuser.reset()
        assert torch.equal(model.lin.weight.qdata, w0["lin"][0]) and torch.equal(model.lin.weight.scale, w0["lin"][1])
        assert torch.equal(lin(x), model.lin(x))


def test_performance_mode_reads_the_librarys_loras_ahead_so_a_first_switch_reads_no_file(manager, monkeypatch):
    """After a load the library's LoRAs (up to the cache's size, a broken file skipped) are read in the background:
    a designer's first switch to one then costs a cached switch (H100: 113 ms, not 330-590 ms), same images."""
    from lora_formats import write_formats

    import brandgen.lora_hotswap as hot

    manager.load_model("tiny-sd15")
    loras = manager.paths.loras
    write_formats(manager.pipeline, "sd15", loras, "a", ("to_q", "to_k", "ff.net.2"), rank=4, seed=1)
    (loras / "broken.safetensors").write_bytes(b"\x00" * 64)
    fast = PipelineManager(registry=manager.registry, paths=manager.paths, device=manager.device,
                           fast_path=FastPathOptions(allow_cpu=True, bf16=False, compile="off", lora_hotswap=True))
    fast.load_model("tiny-sd15")
    fast.read_ahead.join(timeout=120)
    assert not fast.read_ahead.is_alive()
    reads: list[str] = []

    def no_file_read(pipe, path, *args, **kwargs):
        reads.append(Path(path).name)
        raise AssertionError(f"{path} read at switch time")

    monkeypatch.setattr(hot, "read_lora_factors", no_file_read)
    for name in ("a_diffusers", "a_peft", "a_kohya"):
        got = fast.generate(_req(loras=((name, 1.0),)))
        want = manager.generate(_req(loras=((name, 1.0),)))
        assert np.abs(_pixels(got) - _pixels(want)).max() <= 2.0, name
    assert reads == []
    with pytest.raises(LoraError, match="broken"):  # the skipped file still gets its own message at use
        fast.generate(_req(loras=(("broken", 1.0),)))
    monkeypatch.undo()
    write_formats(manager.pipeline, "sd15", loras, "late", ("to_q", "to_v"), rank=4, seed=4)  # added while running
    holding, release = threading.Event(), threading.Event()

    def generating() -> None:  # a generation holds the manager's lock all along
        with fast.lock:
            holding.set()
            release.wait(60)

    generation = threading.Thread(target=generating)
    generation.start()
    holding.wait(10)
    started = time.perf_counter()
    try:
        assert fast.read_loras_ahead()  # the Generate tab's "Refresh LoRA list": answers without waiting for it
        assert time.perf_counter() - started < 5
    finally:
        release.set()
        generation.join()
    fast.read_ahead.join(timeout=120)
    monkeypatch.setattr(hot, "read_lora_factors", no_file_read)
    got, want = (m.generate(_req(loras=(("late_peft", 1.0),))) for m in (fast, manager))
    assert reads == [] and np.abs(_pixels(got) - _pixels(want)).max() <= 2
    monkeypatch.undo()
    real = hot.read_lora_factors

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(hot, "read_lora_factors", slow)
    fast.unload()
    fast.load_model("tiny-sd15")
    thread = fast.read_ahead
    fast.unload()  # a load of another model must not find the old pipeline still held by the reading thread
    assert not thread.is_alive() and fast.read_ahead is None
