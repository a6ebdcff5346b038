"""Runs as the app drives them: checkpoints and exact resume, cancel, crashes that leave no LoRA behind,
and the job registry sharing the accelerator with generation."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from brandgen.errors import InvalidInput, StorageError
from brandgen.generation import GenerationRequest
from brandgen.loras import DIFFUSERS_FILE
from brandgen.paths import AppPaths
from brandgen.training import checkpoints
from brandgen.training.checkpoints import checkpoint_dirs
from brandgen.training.config import TrainConfig
from brandgen.training.jobs import TrainingJobs
from brandgen.training.progress import TrainHooks
from brandgen.training.trainer import LoraTrainer
from training_helpers import make_dataset, one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _config(data: Path, model: str, **overrides) -> TrainConfig:
    settings = dict(max_steps=6, grad_accum=2, checkpoint_every=2, keep_checkpoints=2, target_modules=TARGETS)
    return tiny_config(data, model, **{**settings, **overrides})


def _poll(jobs: TrainingJobs, predicate, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = jobs.status()
        if predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"timed out; last state {jobs.status()}")


def test_resume_after_cancel_matches_an_uninterrupted_run(tiny_dirs: dict, tmp_path: Path):
    data = make_dataset(tmp_path / "data", count=3)
    model = str(tiny_dirs["sd15"])
    straight = LoraTrainer(_config(data, model, checkpoint_every=0), paths=AppPaths(tmp_path / "a"), device="cpu")
    straight_result = straight.run()

    paths = AppPaths(tmp_path / "b")
    seen: list[int] = []
    hooks = TrainHooks(on_progress=lambda p: seen.append(p.step), should_stop=lambda: bool(seen) and max(seen) >= 3)
    first = LoraTrainer(_config(data, model), paths=paths, hooks=hooks, device="cpu")
    cancelled = first.run()
    assert cancelled.status == "cancelled" and cancelled.steps == 3 and cancelled.lora_dir is None
    assert [p.name for p in checkpoint_dirs(first.run_dir / "checkpoints")] == ["step_000002", "step_000003"]
    assert not (paths.loras / "brand").exists()

    resumed = LoraTrainer(_config(data, model), paths=paths, run_dir=first.run_dir, device="cpu").run(resume=True)
    assert resumed.status == "done" and resumed.steps == 6
    assert [p.name for p in checkpoint_dirs(first.run_dir / "checkpoints")] == ["step_000003", "step_000004"]
    a = load_file(str(straight_result.lora_dir / DIFFUSERS_FILE))
    b = load_file(str(resumed.lora_dir / DIFFUSERS_FILE))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["loss"] for r in straight.history.rows] == pytest.approx(
        [float(line.split(",")[2]) for line in (first.run_dir / "loss.csv").read_text().splitlines()[1:]], rel=1e-5
    )


def test_a_crash_leaves_an_error_and_no_lora(tiny_dirs: dict, tmp_path: Path):
    data = make_dataset(tmp_path / "data", count=2)
    paths = AppPaths(tmp_path / "home")

    def explode(progress):
        if progress.step == 2:
            raise RuntimeError("GPU fell off the bus")

    trainer = LoraTrainer(
        _config(data, str(tiny_dirs["sd15"])), paths=paths, hooks=TrainHooks(on_progress=explode), device="cpu"
    )
    with pytest.raises(RuntimeError, match="fell off"):
        trainer.run()
    assert "fell off the bus" in (trainer.run_dir / "error.txt").read_text()
    assert not paths.loras.exists() or not any(paths.loras.iterdir())
    with pytest.raises(InvalidInput, match="at least 25"):
        LoraTrainer(_config(data, str(tiny_dirs["sd15"]), allow_small_dataset=False), paths=paths, device="cpu").run()


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_older_checkpoint(
    tiny_dirs: dict, tmp_path: Path, monkeypatch
):
    data = make_dataset(tmp_path / "data", count=2)
    paths = AppPaths(tmp_path / "home")
    real_save, files = checkpoints.save_file, []

    def filling_disk(tensors, path, *args, **kwargs):
        files.append(path)
        if len(files) > 2:  # the first checkpoint's two files fit, the second checkpoint does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_file", filling_disk)
    trainer = LoraTrainer(_config(data, str(tiny_dirs["sd15"])), paths=paths, device="cpu")
    with pytest.raises(StorageError, match="Could not save this training run's files .* the disk is full"):
        trainer.run()
    ckpts = trainer.run_dir / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step_000002"]  # no half-written step_000004, no .tmp folder
    assert checkpoints.load_checkpoint(ckpts / "step_000002")["step"] == 2  # and it resumes
    assert "No space left" in (trainer.run_dir / "error.txt").read_text()
    assert not paths.loras.exists() or not any(paths.loras.iterdir())


def test_jobs_train_beside_generation_and_the_lora_is_usable_at_once(manager, tmp_path: Path):
    data = make_dataset(tmp_path / "data", count=2)
    jobs = TrainingJobs(manager)
    assert jobs.exclusive is False  # CPU: the lock is taken per step
    state = jobs.start(
        _config(
            data, "tiny-sd15", max_steps=12, checkpoint_every=0, validation_images=1, validation_steps=2, trigger="acme"
        )
    )
    assert state.status in ("queued", "running")
    with pytest.raises(InvalidInput, match="cancel it or wait"):
        jobs.start(_config(data, "tiny-sd15", name="other"))
    request = GenerationRequest(prompt="a red star icon", model_id="tiny-sd15", steps=2, seed=1)
    assert len(manager.generate(request).images) == 1  # generation keeps working while the job runs
    final = jobs.wait(timeout=300)
    assert final.status == "done", final.error
    assert final.step == 12 and len(final.history) == 12 and final.loss is not None
    assert final.samples and Path(final.samples[0]).is_file()
    assert "brand" in [info.name for info in manager.list_loras()]
    result = manager.generate(
        GenerationRequest(prompt="a red star icon", model_id="tiny-sd15", steps=2, seed=1, loras=(("brand", 1.0),))
    )
    assert result.metadata[0]["prompt"].startswith("acme, ")


def test_cancel_keeps_a_checkpoint_and_resume_finishes(manager, tmp_path: Path):
    data = make_dataset(tmp_path / "data", count=2)
    jobs = TrainingJobs(manager, exclusive=True)  # the GPU policy: the lock is held for the whole run
    jobs.start(_config(data, "tiny-sd15", max_steps=400, checkpoint_every=0))
    _poll(jobs, lambda s: s.step >= 1)
    assert not manager.lock.acquire(blocking=False)  # generation would wait for the job
    cancelling = jobs.cancel()
    assert cancelling.status in ("cancelling", "cancelled")
    state = jobs.wait(timeout=120)
    assert state.status == "cancelled" and 1 <= state.step < 400
    assert manager.lock.acquire(blocking=False)
    manager.lock.release()
    runs = jobs.list_runs()
    assert runs[0]["resumable"] and runs[0]["status"] == "cancelled"
    resumed = jobs.resume(runs[0]["run"])
    assert resumed.history and resumed.history[-1]["step"] == state.step  # the curve continues, not restarts
    jobs.cancel()
    assert jobs.wait(timeout=120).status == "cancelled"
    with pytest.raises(InvalidInput, match="not a training run|outside|Invalid run"):
        jobs.resume("../../etc")


def test_a_cuda_graph_request_on_the_cpu_trains_and_says_why_it_is_off(tiny_dirs: dict, tmp_path: Path, capsys):
    from brandgen.training.command import _printer

    data = make_dataset(tmp_path / "data", count=2)
    paths = AppPaths(tmp_path / "home")
    messages: list[str] = []
    show = _printer(log_every=1)

    def watch(progress) -> None:
        messages.append(progress.message)
        show(progress)

    config = _config(data, str(tiny_dirs["sd15"]), max_steps=2, grad_accum=1, checkpoint_every=0, cuda_graph=True)
    result = LoraTrainer(config, paths=paths, hooks=TrainHooks(on_progress=watch), device="cpu").run()
    assert result.status == "done" and result.steps == 2
    assert "Training (CUDA graph off: needs a CUDA GPU)" in messages
    assert capsys.readouterr().err.count("CUDA graph off: needs a CUDA GPU") == 1  # the CLI says it once


def test_overlapped_steps_record_every_step_once_in_order_and_train_the_same(
    tiny_dirs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """On a GPU the loss of step N is read only after step N+1 is queued; checkpoints, cancel and the end flush
    it first. Forced on here (the CPU has nothing to overlap), the run must record the same history."""
    from brandgen.training import trainer as trainer_module

    data = make_dataset(tmp_path / "data", count=3)
    model = str(tiny_dirs["sd15"])
    plain = LoraTrainer(_config(data, model), paths=AppPaths(tmp_path / "a"), device="cpu")
    plain.run()

    monkeypatch.setattr(trainer_module, "overlaps_steps", lambda device: True)
    seen: list[tuple[int, float | None]] = []
    saved_history: dict[int, int] = {}
    real_checkpoint = LoraTrainer._checkpoint

    def checkpoint(self, state):  # what loss.csv holds when a checkpoint is written
        path = real_checkpoint(self, state)
        saved_history[state["step"]] = len((self.run_dir / "loss.csv").read_text().splitlines()) - 1
        return path

    monkeypatch.setattr(LoraTrainer, "_checkpoint", checkpoint)
    hooks = TrainHooks(on_progress=lambda p: seen.append((p.step, p.loss)) if p.phase == "training" else None)
    overlapped = LoraTrainer(_config(data, model), paths=AppPaths(tmp_path / "b"), hooks=hooks, device="cpu")
    result = overlapped.run()

    assert result.status == "done" and result.steps == 6
    assert [r["step"] for r in overlapped.history.rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in overlapped.history.rows] == pytest.approx([r["loss"] for r in plain.history.rows])
    assert [step for step, loss in seen if loss is not None] == [1, 2, 3, 4, 5, 6]  # each once, in order
    assert saved_history == {2: 2, 4: 4}  # a checkpoint's loss curve includes its own step


def test_a_served_cpu_job_trains_with_every_core(manager, tmp_path: Path, monkeypatch):
    """The served app leaves a core to the server (ThreadPlan.busy), and a new thread inherits that count; a CPU
    job's steps take turns with generations under the lock, so its thread uses every core (the brand demo in the
    served app: 140 s of UNet steps at 1 thread, ~72 s at 2)."""
    from brandgen.device import ThreadPlan

    manager.thread_plan = ThreadPlan(lone=2, busy=1)
    torch.set_num_threads(1)  # as `brandgen serve` leaves the main thread
    seen: list[int] = []

    def record(job):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    jobs = TrainingJobs(manager)
    monkeypatch.setattr(jobs, "_train", record)
    jobs.start(_config(make_dataset(tmp_path / "data", count=2), "tiny-sd15"))
    assert jobs.wait(timeout=60).status == "failed" and seen == [2]
    assert torch.get_num_threads() == 1  # the server's own threads keep the busy count

