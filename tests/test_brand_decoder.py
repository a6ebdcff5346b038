"""Brand decoders (brandgen/brand_decoder.py): tuned on a brand's images, shipped beside its LoRA, blended in with
the LoRA's weight by the manager, and refused with a clear message when they do not fit the model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from brandgen.brand_decoder import (
    DECODER_FILE,
    DecoderBlend,
    decoder_file,
    load_decoder_delta,
    save_decoder_delta,
    train_decoder_delta,
    tuned_parameters,
)
from brandgen.errors import LoraError
from brandgen.generation import GenerationRequest
from brandgen.loras import DIFFUSERS_FILE
from brandgen.paths import AppPaths
from brandgen.training.progress import TrainHooks
from brandgen.training.trainer import LoraTrainer
from conftest import make_sd15_lora
from training_helpers import brand_image, make_dataset, one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


def _vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         layers_per_block=1, sample_size=32)


def _images(count: int = 3, size: int = 32) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(brand_image(size, i), np.float32) / 127.5 - 1).permute(2, 0, 1)
            for i in range(count)]


def _round_trip_error(vae: AutoencoderKL, images: list[torch.Tensor]) -> float:
    x = torch.stack(images)
    with torch.no_grad():
        return float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean())


def _snapshot(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def test_a_tuned_decoder_returns_the_brand_images_better_and_leaves_the_vae_as_it_was():
    vae, images = _vae(), _images()
    before, weights = _round_trip_error(vae, images), _snapshot(vae)
    flags = {n: p.requires_grad for n, p in vae.named_parameters()}
    steps = []
    delta = train_decoder_delta(vae, images, steps=150, lr=3e-3, batch=2, crop=16, on_step=lambda i, _: steps.append(i))
    assert steps == list(range(1, 151))
    assert all(torch.equal(weights[k], v) for k, v in vae.state_dict().items())  # untouched until applied
    assert {n: p.requires_grad for n, p in vae.named_parameters()} == flags
    assert set(delta) == set(tuned_parameters(vae))
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in delta)
    assert all(d.dtype == torch.float16 for d in delta.values())
    DecoderBlend().set(vae, [("brand", delta, 1.0)])
    assert _round_trip_error(vae, images) < 0.7 * before
    assert all(torch.equal(weights[k], v) for k, v in vae.state_dict().items() if k.startswith("encoder."))


def test_training_stops_when_asked_and_restores_the_weights():
    vae, images = _vae(), _images(2)
    weights, calls = _snapshot(vae), []
    result = train_decoder_delta(vae, images, steps=50, crop=16, should_stop=lambda: len(calls) >= 3,
                                 on_step=lambda i, _: calls.append(i))
    assert result is None and calls == [1, 2, 3]
    assert all(torch.equal(weights[k], v) for k, v in vae.state_dict().items())


def test_images_of_different_bucket_shapes_train_together():
    vae = _vae()
    images = [_images(1)[0], torch.rand(3, 24, 40) * 2 - 1]  # a square image and a 3:5 bucket of about its area
    delta = train_decoder_delta(vae, images, steps=3, batch=2)
    assert set(delta) == set(tuned_parameters(vae))


def test_the_blend_adds_each_delta_at_its_weight_and_restores_the_exact_base():
    vae = _vae()
    base = {k: v.clone() for k, v in tuned_parameters(vae).items()}
    one = {k: torch.full_like(v, 0.5).half() for k, v in base.items()}
    two = {k: torch.full_like(v, -0.25).half() for k, v in base.items()}
    blend = DecoderBlend()
    blend.set(vae, [])
    assert blend.base is None  # a model whose LoRAs have no decoder is never copied or touched
    blend.set(vae, [("a", one, 1.0)])
    name = next(iter(base))
    assert torch.allclose(tuned_parameters(vae)[name], base[name] + 0.5)
    blend.set(vae, [("a", one, 0.5), ("b", two, 2.0)])
    assert torch.allclose(tuned_parameters(vae)[name], base[name] + 0.25 - 0.5)
    blend.set(vae, [])
    assert all(torch.equal(tuned_parameters(vae)[k], base[k]) for k in base)


def test_a_decoder_for_another_autoencoder_or_a_broken_file_is_refused_by_name(tmp_path: Path):
    vae, other = _vae(), AutoencoderKL(block_out_channels=(8, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                       up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, layers_per_block=1)
    path = save_decoder_delta({k: torch.zeros_like(v).half() for k, v in tuned_parameters(other).items()}, tmp_path)
    with pytest.raises(LoraError, match=r"'acme'.*another autoencoder than Tiny's"):
        load_decoder_delta(path, vae, "acme", "Tiny")
    name, shape = next((k, v.shape) for k, v in tuned_parameters(vae).items())
    save_file({name: torch.zeros(shape, dtype=torch.int32)}, str(path))  # the right shape, but not weights
    with pytest.raises(LoraError, match=r"'acme'.*another autoencoder"):
        load_decoder_delta(path, vae, "acme", "Tiny")
    save_file({}, str(path))
    with pytest.raises(LoraError, match=r"'acme'.*another autoencoder"):
        load_decoder_delta(path, vae, "acme", "Tiny")
    path.write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(LoraError, match=r"'acme'.*cannot be read"):
        load_decoder_delta(path, vae, "acme", "Tiny")
    assert decoder_file(tmp_path / DIFFUSERS_FILE) == path and decoder_file(tmp_path / "x" / DIFFUSERS_FILE) is None
    assert decoder_file(tmp_path / "acme.safetensors") is None  # a single-file LoRA beside it has none


def test_the_library_never_takes_a_brand_decoder_for_the_lora_itself(manager, tiny_dirs: dict):
    from brandgen.loras import LoraLibrary

    folder = manager.paths.loras / "zeta-brand"  # a kohya file only, sorted after brand_decoder.safetensors
    make_sd15_lora(tiny_dirs["sd15"], folder / "zeta.safetensors")
    save_decoder_delta({"decoder.conv_out.bias": torch.zeros(3).half()}, folder)
    info = LoraLibrary(manager.paths.loras).get("zeta-brand")
    assert info.path.name == "zeta.safetensors" and decoder_file(info.path) is None


def _lora_with_decoder(manager, tiny_dirs: dict, name: str, scale: float, seed: int = 1) -> Path:
    folder = manager.paths.loras / name
    make_sd15_lora(tiny_dirs["sd15"], folder / DIFFUSERS_FILE, seed=seed)
    vae = AutoencoderKL.from_pretrained(tiny_dirs["sd15"] / "vae")
    generator = torch.Generator().manual_seed(seed)
    save_decoder_delta({k: (torch.randn(v.shape, generator=generator) * scale).half()
                        for k, v in tuned_parameters(vae).items()}, folder)
    return folder


def _decoder_weights(manager) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tuned_parameters(manager.pipeline.vae).items()}


def test_the_manager_blends_a_loras_brand_decoder_while_it_is_active(manager, tiny_dirs: dict):
    manager.load_model("tiny-sd15")
    base = _decoder_weights(manager)
    folder = _lora_with_decoder(manager, tiny_dirs, "brand", 0.05)
    delta = load_file_delta(folder)
    request = GenerationRequest(prompt="a star icon", model_id="tiny-sd15", steps=2, seed=3)
    plain = np.asarray(manager.generate(request).images[0])
    manager.set_loras([("brand", 1.0)])
    name = next(iter(base))
    assert torch.allclose(_decoder_weights(manager)[name], base[name] + delta[name].float(), atol=1e-6)
    manager.set_loras([("brand", 0.5)])
    assert torch.allclose(_decoder_weights(manager)[name], base[name] + 0.5 * delta[name].float(), atol=1e-6)
    on = np.asarray(manager.generate(GenerationRequest(prompt="a star icon", model_id="tiny-sd15", steps=2, seed=3,
                                                       loras=(("brand", 1.0),))).images[0])
    assert np.abs(on.astype(int) - plain.astype(int)).max() > 0
    manager.set_loras([])
    assert all(torch.equal(v, base[k]) for k, v in _decoder_weights(manager).items())
    manager.set_loras([("brand", 1.0)])
    manager.unload_loras()
    assert all(torch.equal(v, base[k]) for k, v in _decoder_weights(manager).items())
    again = np.asarray(manager.generate(request).images[0]).astype(int)  # unfusing rounds, as in test_manager
    assert np.abs(again - plain.astype(int)).max() <= 2


def test_a_bad_brand_decoder_changes_nothing_and_says_which_lora(manager, tiny_dirs: dict):
    manager.load_model("tiny-sd15")
    good = _lora_with_decoder(manager, tiny_dirs, "good", 0.05)
    bad = _lora_with_decoder(manager, tiny_dirs, "bad", 0.05, seed=2)
    save_file({"decoder.conv_out.weight": torch.zeros(1, 2, 3)}, str(bad / DECODER_FILE))
    manager.set_loras([("good", 1.0)])
    active = _decoder_weights(manager)
    with pytest.raises(LoraError, match=r"'bad'.*another autoencoder"):
        manager.set_loras([("bad", 1.0)])
    assert all(torch.equal(v, active[k]) for k, v in _decoder_weights(manager).items())
    assert manager._loaded.active == (("good", 1.0),)
    assert good.is_dir()


def load_file_delta(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / DECODER_FILE))


def test_training_with_decoder_steps_ships_a_brand_decoder_beside_the_lora(tiny_dirs: dict, tmp_path: Path):
    from safetensors.torch import load_file

    data = make_dataset(tmp_path / "data", count=2)
    seen: list[tuple[str, str]] = []
    config = tiny_config(data, str(tiny_dirs["sd15"]), max_steps=2, decoder_steps=4, validation_images=1,
                         validation_steps=2)
    trainer = LoraTrainer(config, paths=AppPaths(tmp_path / "home"), device="cpu",
                          hooks=TrainHooks(on_progress=lambda p: seen.append((p.phase, p.message))))
    result = trainer.run()
    assert result.status == "done" and "brand decoder" in result.message
    delta = load_file(str(result.lora_dir / DECODER_FILE))
    assert set(delta) == set(tuned_parameters(trainer.pipe.vae)) and any(v.abs().max() > 0 for v in delta.values())
    assert DECODER_FILE in (result.lora_dir / "README.md").read_text()
    assert any(phase == "decoder" and "step 4/4" in message for phase, message in seen)
    assert [phase for phase, _ in seen].index("decoder") < [phase for phase, _ in seen].index("validating")
    base = AutoencoderKL.from_pretrained(tiny_dirs["sd15"] / "vae").state_dict()  # the pipeline's decoder is back
    assert all(torch.allclose(v.float(), base[k].float()) for k, v in trainer.pipe.vae.state_dict().items())


def test_a_cancel_during_the_decoder_stage_keeps_the_lora_and_resume_runs_the_stage_again(tiny_dirs: dict,
                                                                                         tmp_path: Path):
    data = make_dataset(tmp_path / "data", count=2)
    paths, phases = AppPaths(tmp_path / "home"), []
    config = tiny_config(data, str(tiny_dirs["sd15"]), max_steps=2, decoder_steps=50, checkpoint_every=0)
    hooks = TrainHooks(on_progress=lambda p: phases.append(p.phase), should_stop=lambda: "decoder" in phases)
    first = LoraTrainer(config, paths=paths, hooks=hooks, device="cpu")
    cancelled = first.run()
    assert cancelled.status == "cancelled" and cancelled.steps == 2 and not (paths.loras / "brand").exists()
    config = tiny_config(data, str(tiny_dirs["sd15"]), max_steps=2, decoder_steps=3, checkpoint_every=0)
    resumed = LoraTrainer(config, paths=paths, run_dir=first.run_dir, device="cpu").run(resume=True)
    assert resumed.status == "done" and (resumed.lora_dir / DECODER_FILE).is_file()


def test_decoder_steps_are_checked_in_settings_and_in_a_models_lora_settings():
    from brandgen.errors import InvalidInput
    from brandgen.training.config import TrainConfig, lora_settings_problems

    with pytest.raises(InvalidInput, match="brand decoder steps must be 0..5000"):
        TrainConfig(name="x", decoder_steps=-1).validated()
    assert lora_settings_problems({"decoder_steps": 9999}, "sd15") == ["lora_settings.decoder_steps must be 0..5000"]
    assert lora_settings_problems({"decoder_steps": "200"}, "sd15") == ["lora_settings.decoder_steps must be int"]
    assert lora_settings_problems({"decoder_steps": 200}, "sd15") == []


def test_the_blend_rereads_a_changed_file_and_keeps_only_the_last_few(tmp_path: Path):
    from brandgen.brand_decoder import CACHED_DECODERS

    vae = _vae()
    blend = DecoderBlend()
    paths = []
    for i in range(CACHED_DECODERS + 2):
        folder = tmp_path / f"lora{i}"
        folder.mkdir()
        save_decoder_delta({k: torch.full_like(v, float(i)).half() for k, v in tuned_parameters(vae).items()}, folder)
        paths.append(folder / DIFFUSERS_FILE)
        blend.delta_for(paths[-1], vae, f"lora{i}", "Tiny")
    assert len(blend._cache) == CACHED_DECODERS
    name = next(iter(tuned_parameters(vae)))
    first = blend.delta_for(paths[-1], vae, "last", "Tiny")[name]
    assert float(first.flatten()[0]) == CACHED_DECODERS + 1
    save_decoder_delta({k: torch.full_like(v, 7.0).half() for k, v in tuned_parameters(vae).items()}, paths[-1].parent)
    os.utime(paths[-1].parent / DECODER_FILE, (1, 1))  # a new version of the file
    assert float(blend.delta_for(paths[-1], vae, "last", "Tiny")[name].flatten()[0]) == 7.0

