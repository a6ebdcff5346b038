"""Decoder colour tune (brandgen/tiny/vae_tune.py): latents stay put, reconstructions of new colours improve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brandgen.tiny import icon_data, icons, vae_tune
from tiny_pipelines import _vae


@pytest.fixture(scope="module")
def pack():
    masks, meta = icon_data.synthetic_pack(12, 32, seed=3)
    meta[0]["heldout"] = True
    meta[1]["style"] = "duotone"
    return masks, meta


def test_random_colour_variants_are_deterministic_and_skip_held_out_icons(pack):
    _, meta = pack
    a = vae_tune.random_colour_variants(meta, 200, seed=5)
    b = vae_tune.random_colour_variants(meta, 200, seed=5)
    assert [(v.icon, v.fg, v.bg, v.fg2) for v in a] == [(v.icon, v.fg, v.bg, v.fg2) for v in b]
    assert 0 not in {v.icon for v in a}
    for v in a:  # the icon reads on its background; only duotone icons get a second colour
        assert sum(abs(x - y) for x, y in zip(v.fg, v.bg)) > 160
        assert v.fg2 is None or meta[v.icon]["style"] == "duotone"
    assert any(v.fg2 for v in a)
    assert len({v.fg for v in a}) > 150  # not a small set of named colours


def test_tune_moves_only_the_decoder_and_improves_held_out_reconstruction(pack):
    masks, meta = pack
    vae = _vae(blocks=(16, 32), norm_num_groups=8)
    enc_before = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_quant"))}
    dec_before = vae.decoder.conv_out.weight.clone()
    x = icon_data.to_pixels(icon_data.Composer(masks, "cpu").compose(vae_tune.random_colour_variants(meta, 4, 1)))
    latents_before = vae.encode(x).latent_dist.mean.detach()
    result = vae_tune.tune_decoder(vae, masks, meta, seconds=120, max_steps=60, batch=8, lr=2e-3, log_every=1000)
    assert result["steps"] == 60
    for key, value in vae.state_dict().items():
        if key in enc_before:
            assert torch.equal(value, enc_before[key]), key
    assert not torch.equal(vae.decoder.conv_out.weight, dec_before)
    torch.testing.assert_close(vae.encode(x).latent_dist.mean, latents_before, rtol=0, atol=1e-5)
    assert result["heldout_psnr_after"] > result["heldout_psnr_before"] + 1.0
    assert not any(p.requires_grad for p in vae.parameters())


def test_encoder_anchor_trains_the_encoder_and_its_weight_bounds_the_latent_drift(pack):
    masks, meta = pack
    drifts = {}
    for anchor in (0.0, 100.0):
        torch.manual_seed(0)
        vae = _vae(blocks=(16, 32), norm_num_groups=8)
        enc_before = vae.encoder.conv_in.weight.clone()
        result = vae_tune.tune_decoder(vae, masks, meta, seconds=120, max_steps=40, batch=8, lr=2e-3, log_every=1000,
                                       encoder_anchor=anchor)
        assert not torch.equal(vae.encoder.conv_in.weight, enc_before)  # the encoder trained
        assert not any(p.requires_grad for p in vae.parameters())
        assert result["encoder_anchor"] == anchor
        drifts[anchor] = result["heldout_latent_drift"]
    assert drifts[100.0] < drifts[0.0] / 3  # the penalty holds latents near the UNet's


def test_fg_weight_weighs_the_icon_pixels_and_leaves_the_background_at_one(pack):
    masks, meta = pack
    variants = vae_tune.random_colour_variants(meta, 6, seed=2)
    x = icon_data.to_pixels(icon_data.Composer(masks, "cpu").compose(variants))
    assert torch.equal(icon_data.glyph_weights(x, [v.bg for v in variants], 0.0), torch.ones_like(x[:, :1]))
    w = icon_data.glyph_weights(x, [v.bg for v in variants], 8.0)
    assert set(w.unique().tolist()) == {1.0, 9.0}
    alpha = icon_data.Composer(masks, "cpu").alpha([v.icon for v in variants], [v.scale for v in variants],
                                                   [v.dx for v in variants], [v.dy for v in variants])
    assert (w[alpha > 0.5] == 9.0).all() and (w[alpha == 0] == 1.0).all()  # the glyph, not the canvas


def test_cli_writes_a_model_with_the_tuned_decoder_and_keeps_the_source(pack, tmp_path, capsys):
    masks, meta = pack
    src = tmp_path / "model"
    _vae(blocks=(16, 32), norm_num_groups=8).save_pretrained(src / "vae")
    (src / "model_index.json").write_text("{}")
    pack_path = tmp_path / "pack.npz"
    np.savez(pack_path, masks=masks, meta=icons.json_array(meta), summary=icons.json_array({}))
    original = (src / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    out = tmp_path / "tuned"
    result = vae_tune.main(["--model", str(src), "--out", str(out), "--pack", str(pack_path), "--seconds", "3"])
    assert (src / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == original
    assert (out / "model_index.json").exists()
    assert json.loads((out / "vae" / "decoder_tune.json").read_text())["steps"] == result["steps"] >= 1
    missing_pack = str(tmp_path / "no.npz")
    for bad, message in ((["--model", str(src), "--out", str(src), "--pack", str(pack_path)], "another folder"),
                         (["--model", str(tmp_path), "--out", str(out), "--pack", str(pack_path)], "no autoencoder"),
                         (["--model", str(src), "--out", str(out), "--pack", missing_pack], "no icon pack")):
        with pytest.raises(SystemExit):
            vae_tune.main(bad)
        assert message in capsys.readouterr().err


def test_latent_noise_reaches_the_decoder_in_the_unets_scaled_units_and_only_while_training(pack):
    """--latent-noise S: the decoder trains on encoded latents plus N(0, S) in the UNet's scaled units (what a
    UNet's imperfect latents look like to it); the held-out PSNR before and after still decodes clean latents."""
    masks, meta = pack
    vae = _vae(blocks=(16, 32), norm_num_groups=8)
    vae.register_to_config(scaling_factor=0.5)
    seen: list[tuple[str, torch.Tensor]] = []
    encode, decode = vae.encode, vae.decode

    def spy_encode(x, *args, **kwargs):
        out = encode(x, *args, **kwargs)
        seen.append(("encode", out.latent_dist.mean.detach().clone()))
        return out

    def spy_decode(z, *args, **kwargs):
        seen.append(("decode", z.detach().clone()))
        return decode(z, *args, **kwargs)

    vae.encode, vae.decode = spy_encode, spy_decode
    result = vae_tune.tune_decoder(vae, masks, meta, seconds=120, max_steps=3, batch=8, eval_n=8, log_every=1000,
                                   latent_noise=0.3)
    assert result["latent_noise"] == 0.3 and [kind for kind, _ in seen] == ["encode", "decode"] * 5
    deltas = [(seen[i + 1][1] - seen[i][1]) for i in range(0, len(seen), 2)]
    assert deltas[0].abs().max() == 0 and deltas[-1].abs().max() == 0  # held-out PSNR: clean latents
    for delta in deltas[1:-1]:  # the three training steps: noise of std 0.3 / scaling_factor = 0.6
        assert 0.5 < delta.std().item() < 0.7 and abs(delta.mean().item()) < 0.1
