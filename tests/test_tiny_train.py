"""brandgen-tiny recipe: the smoke run trains, saves a loadable SD pipeline, and resumes after a stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brandgen.tiny import model, run_state, train, vae_stage
from brandgen.tiny.recipe import set_value

RECIPE = Path(train.__file__).with_name("recipe.json")
MIB = 2**20


def _smoke(tmp_path: Path, *extra: str) -> dict | None:
    return train.main(["--config", str(RECIPE), "--smoke", "--device", "cpu", "--work-dir", str(tmp_path / "work"),
                       "--out", str(tmp_path / "model"), *extra])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("smoke")
    return tmp, _smoke(tmp, "--samples", str(tmp / "grid.png"))


def test_smoke_run_saves_a_pipeline_that_loads_offline(smoke_run):
    tmp_path, summary = smoke_run
    out = tmp_path / "model"
    assert summary["largest_file"] < 16 * MIB and (out / "model_index.json").exists()
    assert (tmp_path / "grid.png").exists() and (out / "README.md").exists()
    script = (
        "import torch; from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(out)!r}, torch_dtype=torch.float32)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "img = pipe('a red star icon', num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]\n"
        "print(type(pipe).__name__, pipe.unet.dtype, img.size)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "StableDiffusionPipeline torch.float32 (64, 64)" in done.stdout


def test_lora_load_set_adapters_and_fuse_work_like_sd15(smoke_run, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model_dir = smoke_run[0] / "model"
    pipe = DiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    for name, param in pipe.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet))

    def draw():
        gen = torch.Generator().manual_seed(0)
        return pipe("a red star icon", num_inference_steps=2, generator=gen, output_type="np").images

    pipe = DiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base = draw()
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="brand")
    pipe.set_adapters(["brand"], adapter_weights=[1.0])
    with_lora = draw()
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert abs(with_lora - base).max() > 1e-3
    assert abs(draw() - with_lora).max() < 1e-4


def test_resume_continues_from_the_checkpoints(tmp_path, capsys):
    work = tmp_path / "work"
    assert _smoke(tmp_path, "--stop-after", "vae:2") is None
    assert json.loads((work / "state.json").read_text())["done"] == ["data", "text"] and (work / "vae_ckpt.pt").exists()
    assert _smoke(tmp_path, "--resume", "--stop-after", "unet:3") is None
    state = json.loads((work / "state.json").read_text())
    assert state["done"] == ["data", "text", "vae", "latents"] and (work / "unet_ckpt.pt").exists()
    assert state["info"]["vae_steps"] == train.load_config(RECIPE, smoke=True)["train_vae"]["max_steps"]
    assert not (tmp_path / "model").exists()
    log = capsys.readouterr().out
    assert "[vae] resumed_at_step 2" in log and log.count("[data] icons") == 1 and log.count("[text] done") == 1
    summary = _smoke(tmp_path, "--resume")
    log = capsys.readouterr().out
    assert "[unet] resumed_at_step 3" in log and "[data] images" not in log and "[vae] step" not in log
    assert summary["unet_steps"] == train.load_config(RECIPE, smoke=True)["train_unet"]["max_steps"]
    assert (tmp_path / "model" / "unet" / "config.json").exists()


def test_resume_refuses_a_different_config(tmp_path):
    _smoke(tmp_path, "--stop-after", "data")
    cfg = train.load_config(RECIPE, smoke=True)
    cfg["train_unet"]["lr"] *= 2
    with pytest.raises(SystemExit):
        train.train(cfg, tmp_path / "work", tmp_path / "model", resume=True, device="cpu")


def test_default_config_fits_the_size_budget(tmp_path):
    from diffusers import DiffusionPipeline

    cfg = train.load_config(RECIPE)
    torch.manual_seed(0)
    pipe = model.assemble_pipeline(model.build_components(cfg))
    counts = model.parameter_counts(pipe)
    assert sum(counts.values()) * 2 <= 60 * 2**20  # float16; < 100 MB in the repo, < 64 MiB back from a GPU call
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size * 8 == cfg["image_size"] == 256
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    model.save_pipeline(pipe, tmp_path / "full", data="icons")
    assert pipe.unet.dtype == torch.float32  # saving converts a copy
    card = (tmp_path / "full" / "README.md").read_text()
    assert "256x256" in card and "Tabler, Lucide, Phosphor, Fluent" in card and "THIRD_PARTY_NOTICES" in card
    files = [p for p in (tmp_path / "full").rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in files) < 16 * MIB
    assert sum(p.stat().st_size for p in files) < 60 * 2**20
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "full", torch_dtype=torch.float32)
    loaded.set_progress_bar_config(disable=True)
    sd_in, sd_out = pipe.unet.state_dict(), loaded.unet.state_dict()
    assert all(torch.allclose(sd_in[k].half().float(), sd_out[k]) for k in sd_in)
    image = loaded("a red star icon", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (256, 256)


def test_lr_factor_warms_up_then_anneals():
    assert run_state.lr_factor(0.0, 0, 10, 0.1) == pytest.approx(0.1)
    assert run_state.lr_factor(0.0, 10, 10, 0.1) == pytest.approx(1.0)
    assert run_state.lr_factor(1.0, 500, 10, 0.1) == pytest.approx(0.1)


def test_set_overrides_one_recipe_value_and_refuses_unknown_keys():
    cfg = train.load_config(RECIPE)
    set_value(cfg, "train_unet.seconds=1200")
    set_value(cfg, 'text_init=".work/text-init"')
    assert cfg["train_unet"]["seconds"] == 1200 and cfg["text_init"] == ".work/text-init"
    for bad in ("train_unet.secnds=5", "nope.seconds=5", "train_unet.seconds"):
        with pytest.raises(SystemExit, match="expected KEY=JSON"):
            set_value(cfg, bad)
    with pytest.raises(SystemExit, match="seconds has type int in the recipe, got 'abc'"):
        set_value(cfg, "train_unet.seconds=abc")
    set_value(cfg, "train_unet.lr=3")  # an int where the recipe has a float is still a number
    assert cfg["train_unet"]["seconds"] == 1200 and cfg["train_unet"]["lr"] == 3


def test_a_new_run_in_an_old_work_dir_learns_its_own_tokenizer(tmp_path):
    first = _smoke(tmp_path)
    second = _smoke(tmp_path, "--set", "tokenizer.vocab_size=700")
    assert first["vocab_size"] == 1024 and second["vocab_size"] == 700
    assert len(json.loads((tmp_path / "work" / "tokenizer" / "vocab.json").read_text())) == 700


def test_init_model_continues_a_saved_model(smoke_run, tmp_path, capsys):
    """A model returned from one machine trains on from its own weights on another: VAE, text encoder,
    tokenizer and latent scale kept, the UNet starting where it was."""
    from diffusers import UNet2DConditionModel

    saved = smoke_run[0] / "model"
    before = UNet2DConditionModel.from_pretrained(saved / "unet", torch_dtype=torch.float32).state_dict()
    capsys.readouterr()
    assert _smoke(tmp_path, "--init-model", str(saved), "--stop-after", "unet:0") is None
    log = capsys.readouterr().out
    assert "[vae] step" not in log and "[text]" not in log  # neither is trained again
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["info"]["scaling_factor"] == json.loads((saved / "vae" / "config.json").read_text())["scaling_factor"]
    ckpt = torch.load(tmp_path / "work" / "unet_ckpt.pt", map_location="cpu")
    cfg = train.load_config(RECIPE, smoke=True)
    fresh = model.build_components(cfg, tokenizer=_tokenizer(saved))["unet"].state_dict()

    def distance(weights: dict) -> float:
        return float(sum((weights[k].float() - v).abs().sum() for k, v in before.items()))

    assert ckpt["step"] == 1 and distance(ckpt["unet"]) < 0.05 * distance(fresh)  # one warm-up step from the saved
    summary = _smoke(tmp_path, "--init-model", str(saved), "--resume")
    after = UNet2DConditionModel.from_pretrained(tmp_path / "model" / "unet", torch_dtype=torch.float32).state_dict()
    assert summary["unet_steps"] > 0 and any(not torch.equal(after[k].half(), v.half()) for k, v in before.items())
    for part in ("text_encoder/config.json", "tokenizer/vocab.json"):
        assert (tmp_path / "model" / part).read_text() == (saved / part).read_text()


def test_init_model_can_train_its_autoencoder_on(smoke_run, tmp_path, capsys):
    """train_vae.continue_seconds > 0: the continued model's VAE trains from its own weights (for two-tone
    icons the first runs never saw) and the latent scale is measured again for the UNet stage."""
    from diffusers import AutoencoderKL

    saved = smoke_run[0] / "model"
    before = AutoencoderKL.from_pretrained(saved / "vae", torch_dtype=torch.float32).state_dict()
    capsys.readouterr()
    summary = _smoke(tmp_path, "--init-model", str(saved), "--set", "train_vae.continue_seconds=60")
    assert "[vae] step" in capsys.readouterr().out
    after = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae", torch_dtype=torch.float32)
    changed = [k for k, v in before.items() if not torch.equal(after.state_dict()[k].half(), v.half())]
    assert len(changed) > len(before) // 2
    assert summary["scaling_factor"] != json.loads((saved / "vae" / "config.json").read_text())["scaling_factor"]
    assert vae_stage.vae_retuned({"init_model": "m", "train_vae": {"continue_seconds": 5}})
    assert not vae_stage.vae_retuned({"init_model": None, "train_vae": {"continue_seconds": 5}})
    assert not vae_stage.vae_retuned({"init_model": "m", "train_vae": {}})


def test_init_model_can_start_a_fresh_autoencoder_with_more_latent_channels(smoke_run, tmp_path, capsys):
    """train_vae.fresh: a new autoencoder (here 8 latent channels, trained with the glyph's pixels weighted) under
    the continued UNet, which keeps every weight but the latent-facing conv_in / conv_out."""
    from diffusers import UNet2DConditionModel

    saved = smoke_run[0] / "model"
    before = UNet2DConditionModel.from_pretrained(saved / "unet", torch_dtype=torch.float32).state_dict()
    capsys.readouterr()
    eight = ("--set", "vae.latent_channels=8", "--set", "unet.in_channels=8", "--set", "unet.out_channels=8")
    assert _smoke(tmp_path, "--init-model", str(saved), "--set", "train_vae.fresh=true", "--set",
                  "train_vae.fg_weight=8", *eight, "--stop-after", "unet:0") is None
    assert "[vae] step" in capsys.readouterr().out
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["info"]["scaling_factor"] != json.loads((saved / "vae" / "config.json").read_text())["scaling_factor"]
    unet = torch.load(tmp_path / "work" / "unet_ckpt.pt", map_location="cpu")["unet"]
    assert unet["conv_in.weight"].shape[1] == 8 and unet["conv_out.weight"].shape[0] == 8
    kept = [k for k in before if not k.startswith(("conv_in.", "conv_out."))]
    moved = sum(float((unet[k].float() - before[k]).abs().sum()) for k in kept)
    assert moved < 0.05 * sum(float(before[k].abs().sum()) for k in kept)  # one step from the saved weights
    from brandgen.tiny import snapshot  # what a lent GPU returns mid-run carries the new autoencoder

    snapshot.main(["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "snap")])
    assert json.loads((tmp_path / "snap" / "vae" / "config.json").read_text())["latent_channels"] == 8
    summary = _smoke(tmp_path, "--init-model", str(saved), "--set", "train_vae.fresh=true", "--set",
                     "train_vae.fg_weight=8", *eight, "--resume")
    assert summary["unet_steps"] > 0
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tmp_path / "model", torch_dtype=torch.float32)
    assert pipe.vae.config.latent_channels == 8 == pipe.unet.config.in_channels
    image = pipe("bell icon", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    assert vae_stage.vae_fresh({"init_model": "m", "train_vae": {"fresh": True}}) and vae_stage.vae_retuned(
        {"init_model": "m", "train_vae": {"fresh": True}})
    assert not vae_stage.vae_fresh({"init_model": None, "train_vae": {"fresh": True}})


def test_snapshot_of_a_continued_run_keeps_the_autoencoder_it_retuned(smoke_run, tmp_path):
    """A continued run whose VAE trained on (continue_seconds) has its UNet learn that VAE's latents and scale:
    a snapshot taken mid-UNet must carry them, not the saved model's old autoencoder."""
    from diffusers import AutoencoderKL

    from brandgen.tiny import snapshot

    saved = smoke_run[0] / "model"
    assert _smoke(tmp_path, "--init-model", str(saved), "--set", "train_vae.continue_seconds=60",
                  "--stop-after", "unet:2") is None
    info = snapshot.main(["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "snap")])
    snap = AutoencoderKL.from_pretrained(tmp_path / "snap" / "vae", torch_dtype=torch.float32)
    retuned = torch.load(tmp_path / "work" / "vae_done.pt", map_location="cpu")
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert info["step"] == 2 and snap.config.scaling_factor == state["info"]["scaling_factor"]
    assert all(torch.equal(v, retuned[k].half().float()) for k, v in snap.state_dict().items())
    old = json.loads((saved / "vae" / "config.json").read_text())["scaling_factor"]
    assert snap.config.scaling_factor != old
    assert "icon-sets" not in (tmp_path / "snap" / "README.md").read_text()  # smoke data: the procedural card


def _tokenizer(folder: Path):
    from brandgen.tiny.tokenizer import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder / "tokenizer")


def test_init_model_refuses_a_folder_that_is_not_a_model(smoke_run, tmp_path):
    comps = model.build_components(train.load_config(RECIPE, smoke=True), tokenizer=_tokenizer(smoke_run[0] / "model"))
    with pytest.raises(ValueError, match="not a saved brandgen-tiny pipeline"):
        model.load_trained(comps, tmp_path)
    wider = train.load_config(RECIPE, smoke=True)
    wider["unet"]["block_out_channels"] = [16, 32, 64]
    comps = model.build_components(wider, tokenizer=_tokenizer(smoke_run[0] / "model"))
    with pytest.raises(ValueError, match="its unet does not fit"):
        model.load_trained(comps, smoke_run[0] / "model")


def test_snapshot_of_a_running_unet_loads_with_its_ema_weights(tmp_path):
    from diffusers import DiffusionPipeline

    from brandgen.tiny import snapshot

    assert _smoke(tmp_path, "--stop-after", "unet:3") is None
    info = snapshot.main(["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "snap")])
    ckpt = torch.load(tmp_path / "work" / "unet_ckpt.pt", map_location="cpu")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "snap", torch_dtype=torch.float32)
    assert info["step"] == 3
    for param, ema in zip(pipe.unet.parameters(), ckpt["ema"]):
        assert torch.allclose(param, ema.half().float())
    assert any(not torch.allclose(e.half().float(), v.half().float())
               for e, v in zip(ckpt["ema"], ckpt["unet"].values()))
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert pipe.vae.config.scaling_factor == state["info"]["scaling_factor"]
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red star icon", num_inference_steps=2).images[0].size == (64, 64)


def test_full_recipe_architecture_runs_a_cfg_step_and_decodes_at_its_image_size():
    """The full (not smoke) recipe's parts fit together: head counts divide the widths, the UNet cross-attends to
    the text encoder's width, and its latent decodes to the recipe's image size (the CPU latency figures in
    docs/TINY_MODEL.md are for exactly this architecture)."""
    from brandgen.tiny.tokenizer import train_tokenizer

    cfg = train.load_config(RECIPE)
    comps = model.build_components(cfg, tokenizer=train_tokenizer(300, ["a teal bell icon"] * 4))
    latent = cfg["image_size"] // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
    assert latent == cfg["unet"]["sample_size"]
    with torch.no_grad():
        ids = comps["tokenizer"](["a teal bell icon", ""], padding="max_length", return_tensors="pt").input_ids
        text = comps["text_encoder"](ids)[0]
        noise = comps["unet"](torch.randn(2, 4, latent, latent), torch.tensor([500, 500]), text).sample
        image = comps["vae"].decode(noise[:1]).sample
    assert noise.shape == (2, 4, latent, latent)
    assert image.shape == (1, 3, cfg["image_size"], cfg["image_size"])
