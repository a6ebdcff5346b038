"""The LoRA training loop: accelerate (devices, mixed precision, DDP, gradient accumulation) + peft LoRA
layers over the denoiser of any registered family. One `LoraTrainer.run()` is one run folder:

    training_runs/<name>-<time>/  config.json  loss.csv  loss.png  samples/  checkpoints/step_N/  result.json

The finished LoRA is exported to <run>/lora/ and only then moved into loras/<name>/ in one rename.
Works the same in the app's background thread, in `brandgen train`, and under `accelerate launch`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from pathlib import Path
from typing import Any, ContextManager

import torch

from brandgen.attention import contiguous_attention_grads, cudnn_attention_first
from brandgen.device import free_memory
from brandgen.errors import InvalidInput
from brandgen.paths import AppPaths, writing
from brandgen.registry import ModelRegistry
from brandgen.templates import AssetType, build_prompt, get_asset_type, load_asset_types
from brandgen.training import cache
from brandgen.training.checkpoints import resume_from, save_checkpoint
from brandgen.training.config import TrainConfig
from brandgen.training.cuda_graph import GraphedStep, unavailable_reason
from brandgen.training.dataset import DatasetReport, load_examples, validate_dataset
from brandgen.training.decoder_stage import restore_decoder, save_brand_decoder, tune_brand_decoder
from brandgen.training.export import ensure_lora_name_free, export_trained, publish
from brandgen.training.families import Cond, get_family
from brandgen.training.history import LossHistory
from brandgen.training.loading import (
    WEIGHT_DTYPES,
    add_lora,
    compile_note,
    load_training_pipeline,
    make_accelerator,
    make_optimizer,
    maybe_compile,
    new_run_dir,
    resolve_base_model,
    resolve_data_dir,
)
from brandgen.training.progress import TrainHooks, TrainProgress, TrainResult
from brandgen.training.sampling import fixed_noise_loss, render_images, save_samples
from brandgen.training.speed import RunSpeed, restore_layers, swap_layers


def overlaps_steps(device: torch.device) -> bool:
    """Whether the host may queue the next step before reading this one's loss (only GPUs run asynchronously)."""
    return device.type == "cuda"


class LoraTrainer:
    """One training run. After `run()` the trained pipeline stays in `self.pipe` (tests compare it with the
    exported file) until the object is dropped."""

    def __init__(
        self,
        config: TrainConfig,
        paths: AppPaths | None = None,
        registry: ModelRegistry | None = None,
        run_dir: Path | None = None,
        hooks: TrainHooks | None = None,
        device: str | None = None,
        asset_types: dict[str, AssetType] | None = None,
    ):
        self.config = config.validated()
        self.paths = paths or AppPaths.from_env()
        self.registry = registry
        self.run_dir = Path(run_dir) if run_dir else new_run_dir(self.paths, config.name)
        self.hooks = hooks or TrainHooks()
        self.device = device
        self.types = asset_types or load_asset_types()
        self.history = LossHistory()
        self.samples: list[str] = []
        self.pipe: Any = None
        self.report: DatasetReport | None = None
        self.speed = RunSpeed()
        self.decoder_delta: dict[str, torch.Tensor] | None = None  # the brand decoder, when the config asks for one
        self.decoder_blend: Any = None

    # ----- plumbing ------------------------------------------------------------------------------
    def _emit(self, phase: str, **kw: Any) -> None:
        if self.hooks.on_progress is not None and self.accelerator.is_main_process:
            self.hooks.on_progress(TrainProgress(phase=phase, samples=list(self.samples), **kw))

    def _guard(self) -> ContextManager:
        return self.hooks.step_guard() if self.hooks.step_guard else contextlib.nullcontext()

    def _stop_requested(self) -> bool:
        return bool(self.hooks.should_stop and self.hooks.should_stop())

    def _generator(self, micro: int) -> torch.Generator:
        """Noise for micro-batch `micro` of this process: a pure function of (seed, rank, micro)."""
        rank = self.accelerator.process_index
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + rank * 7_919 + micro) % 2**63)

    # ----- the run -------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        """Train (or continue the newest checkpoint of `run_dir` when resume=True) and export the LoRA."""
        cfg = self.config
        if not resume:
            ensure_lora_name_free(self.paths.loras, cfg.name)
        self.accelerator = make_accelerator(cfg, self.device, self.run_dir)
        if self.accelerator.num_processes > 1:  # every process must use the main process's run folder
            from accelerate.utils import broadcast_object_list

            self.run_dir = Path(broadcast_object_list([str(self.run_dir)])[0])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.accelerator.is_main_process:
            cfg.save(self.run_dir / "config.json")
            (self.run_dir / "error.txt").unlink(missing_ok=True)
        try:
            # a full or read-only disk (checkpoint, samples, loss curve, the LoRA) becomes a StorageError with advice
            with writing("this training run's files", self.run_dir), cudnn_attention_first(self._cudnn_attention()):
                return self._run(resume)
        except BaseException as exc:
            if self.accelerator.is_main_process and not isinstance(exc, KeyboardInterrupt):
                with contextlib.suppress(OSError):  # on a full disk the report itself may not fit
                    (self.run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            raise
        finally:
            if self.pipe is not None:  # the exact base weights again, for whatever uses the pipeline next
                restore_layers(getattr(self.pipe, self.family.denoiser))
                restore_decoder(self)
            free_memory()

    def _cudnn_attention(self) -> bool:
        return self.config.cudnn_attention and self.accelerator.device.type == "cuda"

    def _run(self, resume: bool) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        self._emit("loading", message="Checking the dataset")
        get_asset_type(cfg.asset_type, self.types)  # an unknown asset type fails here, before any loading
        source, family_name, self.entry = resolve_base_model(cfg.base_model, self.registry, cfg.family)
        self.family = family = get_family(family_name)
        family.use_timesteps(cfg.timesteps)
        if not cfg.resolution:
            cfg.resolution = self.entry.native_resolution[0] if self.entry else family.default_resolution
        folder, small = resolve_data_dir(cfg.data_dir), cfg.allow_small_dataset
        self.report = validate_dataset(folder, cfg.asset_type, cfg.resolution, self.types, allow_small=small)
        if not self.report.ok:
            raise InvalidInput(self.report.summary())
        self._emit("loading", message="Loading the base model")
        self.precision = acc.mixed_precision
        self.dtype = WEIGHT_DTYPES[self.precision]
        with self._guard():  # the accelerator's lock; LOAD_LOCK inside keeps this apart from any other load
            self.pipe = pipe = load_training_pipeline(source, family_name, self.entry, self.dtype)
        family.setup(pipe)
        if cfg.resolution % family.divisibility():
            raise InvalidInput(
                f"Resolution {cfg.resolution} must be a multiple of {family.divisibility()} for this model."
            )
        trigger = cfg.trigger
        examples = load_examples(self.report, cfg.resolution, trigger, cfg.bucketing, family.divisibility(), self.types)

        self._emit("caching", message=f"Encoding {len(examples)} images and captions once")
        device = acc.device
        triggers = (trigger,) if trigger else ()
        pair = build_prompt(cfg.validation_prompt or "a simple brand icon", cfg.asset_type, "", triggers, self.types)
        with self._guard():
            dataset, text = cache.cache_training_data(family, pipe, examples, [pair.prompt, pair.negative], device)
        self.val_cond, self.val_uncond = text[pair.prompt], text[pair.negative]
        self.validation_prompt = pair.prompt
        del examples, text
        free_memory()

        model = getattr(pipe, family.denoiser)
        model.to(device)
        add_lora(model, cfg, self.family.default_targets, self.dtype)
        if self._cudnn_attention():  # cuDNN SDPA's backward needs them (brandgen/attention.py)
            contiguous_attention_grads(model)
        fused = cfg.fused_lora and family.fused_lora  # where measured to pay (UNet families)
        swap_layers(model, self.speed, cfg.fp8_base, fused, device, acc.num_processes)
        self.speed.compiled_blocks = blocks = maybe_compile(model, cfg.compile, device.type)
        self.speed.compile_note = compile_note(cfg.compile, device.type, blocks, model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer, self.optimizer_name = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay, device.type)
        sampler = cache.BucketBatchSampler(dataset.buckets, cfg.batch_size, cfg.seed)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=cache.collate, pin_memory=device.type == "cuda"
        )
        steps_per_epoch = math.ceil(len(sampler) / acc.num_processes / cfg.grad_accum)
        total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        from diffusers.optimization import get_scheduler

        n = acc.num_processes  # accelerate steps a prepared scheduler once per process
        warmup, steps = cfg.warmup_steps * n, total * n
        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
        wrapped, optimizer, loader, lr_scheduler = acc.prepare(model, optimizer, loader, lr_scheduler)
        self.model, self.optimizer, self.lr_scheduler, self.dataset = model, optimizer, lr_scheduler, dataset
        speed = self.speed
        speed.graph_note = unavailable_reason(
            cfg.cuda_graph, device.type, acc.num_processes, self.precision, family_name
        )
        if speed.graph_note is None:  # forward + backward replayed as one CUDA graph per bucket shape
            loss_fn = lambda noised, cond: family.loss_from(wrapped, noised, cond)  # noqa: E731
            speed.graphed = GraphedStep(loss_fn, params, loss_scale=1 / cfg.grad_accum)
        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "micro": 0}
        if resume:
            state = self._restore()
        with self._guard():
            self.metrics = {"eval_loss_base": self.evaluation_loss(use_lora=False)}
        return self._loop(wrapped, loader, sampler, params, state, total)

    def _restore(self) -> dict[str, int]:
        step, state = resume_from(self.run_dir, self.model, self.optimizer, self.lr_scheduler)
        self.history = LossHistory.load(self.run_dir / "loss.csv", up_to_step=step)
        keep = self.config.validation_images
        self.samples = sorted(str(p) for p in (self.run_dir / "samples").glob("*.png"))[-keep:] if keep else []
        return state

    def _loop(
        self, wrapped: Any, loader: Any, sampler: Any, params: list, state: dict[str, int], total: int
    ) -> TrainResult:
        cfg, acc, family = self.config, self.accelerator, self.family
        step, epoch, batch_in_epoch, micro = state["step"], state["epoch"], state["batch_in_epoch"], state["micro"]
        start, first_step = time.perf_counter(), step
        losses: list[torch.Tensor] = []
        pending: tuple | None = None  # (step, epoch, loss on the device, lr) not yet in the history
        stopped = False
        self._emit("training", step=step, total=total, epoch=epoch, message=self.speed.message() or "Training")
        while step < total and not stopped:
            batches = acc.skip_first_batches(loader, batch_in_epoch) if batch_in_epoch else loader
            sampler.set_epoch(epoch)  # under DDP accelerate's shard does not forward set_epoch to our sampler
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(epoch)  # accelerate re-sets the epoch from its own counter on every __iter__
            for batch in batches:
                with self._guard():
                    generator = self._generator(micro)
                    with acc.accumulate(wrapped):
                        latents = batch["latents"].to(self.dtype)
                        cond: Cond = {k: v.to(self.dtype) for k, v in batch.items() if k != "latents"}
                        if self.speed.graphed is not None:
                            loss = self.speed.graphed(family.noised(latents, generator), cond)
                        else:
                            loss = family.loss(wrapped, latents, cond, generator)
                            acc.backward(loss)
                        if acc.sync_gradients and cfg.max_grad_norm > 0:
                            acc.clip_grad_norm_(params, cfg.max_grad_norm)
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        self.optimizer.zero_grad(set_to_none=self.speed.graphed is None)  # graphs keep grads
                micro += 1
                batch_in_epoch += 1
                losses.append(loss.detach().float())
                if not acc.sync_gradients:
                    continue
                step += 1
                # the loss is read one step late: until then the host prepares the next step while the GPU runs
                if pending is not None:
                    self._record(*pending, first_step, total, start)
                pending = (step, epoch, acc.gather(torch.stack(losses).mean()[None]).mean(), self._lr())
                losses = []
                if not overlaps_steps(acc.device):
                    self._record(*pending, first_step, total, start)
                    pending = None
                state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "micro": micro}
                checkpoint = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total
                validate = cfg.validate_every and step % cfg.validate_every == 0 and step < total
                stopped = step < total and self._stop_requested()
                if pending is not None and (checkpoint or validate or stopped or step >= total):  # they read history
                    self._record(*pending, first_step, total, start)
                    pending = None
                if checkpoint:
                    self._checkpoint(state)
                if validate:
                    self._validate(step, total)
                if step >= total or stopped:
                    break
            else:
                epoch, batch_in_epoch = epoch + 1, 0
        final_loss = self.history.rows[-1]["loss"] if self.history.rows else None
        if stopped or not tune_brand_decoder(self, step, total):  # the decoder stage can be cancelled too
            return self._finish_cancelled(state, total, final_loss)
        if cfg.validation_images:
            self._validate(step, total)
        with self._guard():
            self.metrics["eval_loss_final"] = self.evaluation_loss()
        return self._finish_done(step, total, final_loss)

    def _lr(self) -> float:
        return self.lr_scheduler.get_last_lr()[0]

    def _record(
        self, step: int, epoch: int, loss: torch.Tensor, lr: float, first: int, total: int, start: float
    ) -> None:
        """One optimizer step into the loss history and the progress callback (`.item()` waits for its GPU work)."""
        value = loss.item()
        elapsed = time.perf_counter() - start
        self.history.append(step, epoch, value, lr, elapsed)
        message = self.speed.message() if step == first + 1 else ""  # after the capture
        eta = elapsed / (step - first) * (total - step)
        self._emit("training", step=step, total=total, epoch=epoch, loss=value, lr=lr, seconds=elapsed,
                   eta_seconds=eta, message=message)

    def evaluation_loss(self, draws: int = 16, use_lora: bool = True) -> float:
        """Fixed-noise loss on the training images (see sampling.fixed_noise_loss)."""
        acc = self.accelerator
        return fixed_noise_loss(self.model, self.family, self.dataset.items, seed=self.config.seed, draws=draws,
                                device=acc.device, dtype=self.dtype, autocast=acc.autocast, use_lora=use_lora)

    # ----- side outputs --------------------------------------------------------------------------
    def _save_history(self) -> None:
        if self.accelerator.is_main_process:
            self.history.save_csv(self.run_dir / "loss.csv")
            self.history.plot(self.run_dir / "loss.png", f"{self.config.name}: training loss")

    def _checkpoint(self, state: dict[str, int]) -> Path | None:
        from peft.utils import get_peft_model_state_dict

        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            self._emit("saving", step=state["step"], message="Saving a checkpoint")
            with self._guard():
                lora, optimizer = get_peft_model_state_dict(self.model), self.optimizer.state_dict()
                path = save_checkpoint(self.run_dir / "checkpoints", state["step"], lora, optimizer,
                                       self.lr_scheduler.state_dict(), {**state, "seed": self.config.seed},
                                       self.config.keep_checkpoints)
            self._save_history()
        acc.wait_for_everyone()
        return path

    def render(
        self, pipe: Any = None, seeds: list[int] | None = None, output_type: str = "pil", steps: int | None = None
    ) -> Any:
        """Validation-prompt images from cached embeddings. With `pipe` given (e.g. a fresh pipeline with the
        exported LoRA loaded) the same call is made on it, which is how tests compare the two."""
        cfg, entry, family = self.config, self.entry, self.family
        return render_images(
            pipe or self.pipe,
            family,
            self.val_cond,
            self.val_uncond,
            seeds=seeds or [cfg.seed + i for i in range(max(1, cfg.validation_images))],
            steps=steps or cfg.validation_steps or (entry.default_steps if entry else family.default_steps),
            # as the Generate tab will run this LoRA: with the model's guidance for a LoRA (ModelEntry)
            guidance=entry.default_guidance_for(True) if entry else family.default_guidance,
            resolution=cfg.resolution,
            device=self.accelerator.device,
            dtype=self.dtype,
            autocast=self.accelerator.autocast,
            output_type=output_type,
        )

    def _validate(self, step: int, total: int) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process and self.config.validation_images:
            self._emit("validating", step=step, total=total, message="Rendering validation images")
            with self._guard():  # the GPU lock: held for rendering, not for writing the files
                images = self.render()
            self.samples = save_samples(images, self.run_dir / "samples", step)
        acc.wait_for_everyone()

    def _finish_cancelled(self, state: dict[str, int], total: int, final_loss: float | None) -> TrainResult:
        path = self._checkpoint(state)
        message = f"Cancelled at step {state['step']}/{total}; resume continues from the checkpoint."
        result = TrainResult("cancelled", self.run_dir, None, state["step"], final_loss, path, message)
        self._write_result(result)
        self._emit("cancelled", step=state["step"], total=total, loss=final_loss, message=result.message)
        self.accelerator.end_training()
        return result

    def _finish_done(self, step: int, total: int, final_loss: float | None) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        acc.wait_for_everyone()
        lora_dir, message = None, ""
        if acc.is_main_process:
            self._emit("saving", step=step, total=total, message="Exporting the LoRA")
            extra = {
                "steps": step,
                "dataset_hash": self.report.dataset_hash,
                "images": self.report.stats["count"],
                "optimizer": self.optimizer_name,
                "mixed_precision": self.precision,
                "final_loss": final_loss,
                "validation_prompt": self.validation_prompt,
                **self.metrics,
            }
            base = self.entry.source if self.entry else str(cfg.base_model)
            exported = export_trained(self.run_dir / "lora", cfg, self.family, self.model, base, extra)
            decoder_note = save_brand_decoder(self, exported.lora_dir)
            self._save_history()
            lora_dir = publish(exported.lora_dir, self.paths.loras, cfg.name)
            notes = ", ".join(n for n in (decoder_note, exported.kohya_note) if n)
            message = f"LoRA {cfg.name!r} saved to {lora_dir} ({notes})."
        result = TrainResult("done", self.run_dir, lora_dir, step, final_loss, None, message, dict(self.metrics))
        self._write_result(result)
        acc.wait_for_everyone()
        self._emit("done", step=step, total=total, loss=final_loss, message=message)
        acc.end_training()
        return result

    def _write_result(self, result: TrainResult) -> None:
        if self.accelerator.is_main_process:
            (self.run_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")

