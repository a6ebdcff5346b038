"""The Train tab's last stage for models that ask for it (`lora_settings.decoder_steps`): a brand decoder tuned on the
dataset after the LoRA (brandgen/brand_decoder.py), used for the run's validation images and saved beside the LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brandgen.brand_decoder import DECODER_FILE, DecoderBlend, save_decoder_delta, train_decoder_delta
from brandgen.training.dataset import load_examples


def tune_brand_decoder(trainer: Any, step: int, total: int) -> bool:
    """Tune the decoder on the run's images and put it on the training pipeline (`trainer.decoder_delta`,
    `trainer.decoder_blend`). Every process computes the same delta (same seed, same images), so they stay in step.
    False when the designer cancelled during it (the LoRA's checkpoint is kept; resume runs this stage again)."""
    cfg, n = trainer.config, trainer.config.decoder_steps
    if not n:
        return True
    examples = load_examples(trainer.report, cfg.resolution, "", cfg.bucketing, trainer.family.divisibility(),
                             trainer.types)

    def shown(i: int, loss: float) -> None:
        if i == 1 or i % 10 == 0 or i == n:
            trainer._emit("decoder", step=step, total=total,
                          message=f"Tuning the brand decoder on {len(examples)} images: step {i}/{n} (loss {loss:.4f})")

    trainer._emit("decoder", step=step, total=total, message="Tuning the brand decoder (brand colours)")
    delta = train_decoder_delta(trainer.pipe.vae, [e.pixels for e in examples], n, seed=cfg.seed,
                                should_stop=trainer._stop_requested, on_step=shown, step_guard=trainer._guard)
    if delta is None:
        return False
    trainer.decoder_delta = delta
    trainer.decoder_blend = trainer.decoder_blend or DecoderBlend()  # one per run: restore_decoder writes its base back
    trainer.decoder_blend.set(trainer.pipe.vae, [("brand", delta, 1.0)])
    return True


def save_brand_decoder(trainer: Any, lora_dir: Path) -> str:
    """Write the run's brand decoder into the LoRA folder before it is published; a note for the done message."""
    delta = trainer.decoder_delta
    if delta is None:
        return ""
    save_decoder_delta(delta, lora_dir, {"steps": str(trainer.config.decoder_steps),
                                         "base_model": str(trainer.config.base_model)})
    readme = Path(lora_dir) / "README.md"
    if readme.is_file():
        with readme.open("a", encoding="utf-8") as out:
            out.write(f"\n- `{DECODER_FILE}`: this brand's decoder for the base model's autoencoder (a weight delta, "
                      f"{trainer.config.decoder_steps} steps on the training images). BrandGen blends it in with the "
                      "LoRA's weight; other tools use the LoRA without it.\n")
    return f"with a brand decoder ({DECODER_FILE})"


def restore_decoder(trainer: Any) -> None:
    """The base decoder again, for whatever uses the pipeline next."""
    if trainer.decoder_blend is not None and trainer.pipe is not None:
        trainer.decoder_blend.set(trainer.pipe.vae, [])
