"""Training jobs: one LoRA training at a time in a background thread, with live state the UI polls.

The registry belongs to the app process (build_app creates one and hands it to the tab), not to a module
global. The accelerator is shared with generation through the PipelineManager's lock: on a GPU the job
holds it for the whole run (generation waits; two big models would not fit), on a CPU only around each
step (generation keeps working between steps).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from brandgen.device import free_memory
from brandgen.errors import BrandGenError, InvalidInput
from brandgen.ownership import OPERATOR, Access
from brandgen.paths import AppPaths, resolve_inside, writing
from brandgen.registry import ModelRegistry
from brandgen.training.checkpoints import latest_checkpoint
from brandgen.training.config import TrainConfig
from brandgen.training.dataset import validate_dataset
from brandgen.training.export import ensure_lora_name_free
from brandgen.training.history import LossHistory
from brandgen.training.loading import new_run_dir, resolve_data_dir
from brandgen.training.progress import TrainHooks, TrainProgress, TrainResult
from brandgen.training.trainer import LoraTrainer

ACTIVE = ("queued", "running", "cancelling")
MAX_HISTORY_POINTS = 2000


@dataclass
class JobState:
    """Everything the Train tab shows; a copy is handed out, so readers never see a half-updated state."""

    id: str
    name: str
    run_dir: str
    status: str = "queued"  # queued | running | cancelling | cancelled | failed | done
    phase: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_seconds: float | None = None
    message: str = ""
    error: str = ""
    samples: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # {"step", "loss"}
    lora_dir: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OWNER_FILE = "owner"  # the run's brandgen.ownership.owner_key, so cancel and resume know whose run it is


def run_owner(run_dir: Path) -> str | None:
    """Who started a run folder's job from the web app (None: the CLI, or a run from before owners were kept)."""
    try:
        return (run_dir / OWNER_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


class TrainingJob:
    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool, owner: str | None = None):
        self.config, self.run_dir, self.resume, self.owner = config, run_dir, resume, owner
        self.state = JobState(id=run_dir.name, name=config.name, run_dir=str(run_dir))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None


class TrainingJobs:
    """Starts, watches, cancels and resumes LoRA training runs for one app process."""

    def __init__(
        self,
        manager: Any = None,
        paths: AppPaths | None = None,
        registry: ModelRegistry | None = None,
        device: str | None = None,
        exclusive: bool | None = None,
    ):
        self.manager = manager
        self.paths = paths or (manager.paths if manager is not None else AppPaths.from_env())
        self.registry = registry or (manager.registry if manager is not None else None)
        self.device = device or (manager.device.device if manager is not None else None)
        self.exclusive = (self.device == "cuda") if exclusive is None else exclusive
        self.asset_types = manager.asset_types if manager is not None else None
        self._jobs: dict[str, TrainingJob] = {}
        self._latest: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_manager(cls, manager: Any) -> "TrainingJobs":
        """The app's registry, kept on the manager (`manager.training_jobs`) so rebuilding the UI finds the
        running job again instead of starting a second registry."""
        jobs = getattr(manager, "training_jobs", None)
        if not isinstance(jobs, cls):
            jobs = cls(manager)
            manager.training_jobs = jobs
        return jobs

    # ----- queries ---------------------------------------------------------------------------------
    def active(self) -> TrainingJob | None:
        with self._lock:
            return self._find_active()

    def _find_active(self) -> TrainingJob | None:
        """The job holding the accelerator; the caller holds `self._lock`."""
        return next((j for j in self._jobs.values() if j.state.status in ACTIVE), None)

    def status(self, job_id: str | None = None) -> JobState | None:
        """A copy of a job's state (the latest job when no id is given); asdict copies its lists and dicts."""
        job = self._jobs.get(job_id or self._latest or "")
        if job is None:
            return None
        with job.lock:
            return JobState(**job.state.to_dict())

    def owner(self, job_id: str | None = None) -> str | None:
        """Who started a job (the latest when no id is given); None: the operator, or no job."""
        job = self._jobs.get(job_id or self._latest or "")
        return job.owner if job is not None else None

    def list_runs(self, access: Access = OPERATOR) -> list[dict[str, Any]]:
        """Run folders, newest first, and whether each can be resumed (it has a checkpoint); in private mode
        only the caller's own runs."""
        root = self.paths.training_runs
        if not root.is_dir():
            return []
        runs = [p for p in root.iterdir() if (p / "config.json").is_file() and access.sees(run_owner(p))]
        runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        out = []
        for p in runs:
            result: Any = {}
            if (p / "result.json").is_file():
                try:  # one damaged run folder must not hide the others
                    result = json.loads((p / "result.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    result = None
            if not isinstance(result, dict):
                result = {"status": "unreadable result.json"}
            out.append(
                {
                    "run": p.name,
                    "status": result.get("status", "failed" if (p / "error.txt").is_file() else "unfinished"),
                    "resumable": latest_checkpoint(p / "checkpoints") is not None and result.get("status") != "done",
                }
            )
        return out

    def wait(self, job_id: str | None = None, timeout: float | None = None) -> JobState | None:
        job = self._jobs.get(job_id or self._latest or "")
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
        return self.status(job_id)

    # ----- actions ---------------------------------------------------------------------------------
    def start(self, config: TrainConfig, run_dir: Path | None = None, resume: bool = False,
              owner: str | None = None) -> JobState:
        """Queue a run in a background thread; refused while another job is active (one accelerator).
        `owner` (an ownership.owner_key) is the only caller besides the operator that may cancel it."""
        config = config.validated()
        if not resume:
            self._check_dataset(config)
        run_dir = Path(run_dir) if run_dir else new_run_dir(self.paths, config.name)
        job = TrainingJob(config, run_dir, resume, owner)
        if resume:  # the curve continues where the checkpoint left it
            rows = LossHistory.load(job.run_dir / "loss.csv").rows
            job.state.history = [{"step": r["step"], "loss": r["loss"]} for r in rows]
            job.state.step = rows[-1]["step"] if rows else 0
        with self._lock:  # check and register in one step, so two quick clicks cannot start two jobs
            busy = self._find_active()
            if busy is not None:
                raise InvalidInput(f"Training job {busy.state.name!r} is {busy.state.status}; cancel it or wait.")
            if not resume:
                ensure_lora_name_free(self.paths.loras, config.name)
            self._jobs[job.state.id] = job
            self._latest = job.state.id
        if owner:
            with writing("the training run's owner", run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / OWNER_FILE).write_text(owner, encoding="utf-8")
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"train-{config.name}", daemon=True)
        job.thread.start()
        return self.status(job.state.id)  # type: ignore[return-value]

    def _check_dataset(self, config: TrainConfig) -> None:
        """The trainer's first check, made before the job is queued: a dataset the validator calls "Not ready"
        is refused with the same report instead of starting a job that is "running" until it fails."""
        resolution = config.resolution
        if not resolution and self.registry is not None and config.base_model in self.registry.ids():
            resolution = self.registry.get(config.base_model).native_resolution[0]
        report = validate_dataset(resolve_data_dir(config.data_dir), config.asset_type, resolution or 512,
                                  self.asset_types, allow_small=config.allow_small_dataset)
        if not report.ok:
            raise InvalidInput(report.summary())

    def resume(self, run: str | Path, access: Access = OPERATOR) -> JobState:
        """Continue a cancelled or crashed run from its newest checkpoint (same run folder, same settings);
        only its owner may (see brandgen.ownership), who then owns the resumed job."""
        root = self.paths.training_runs.resolve()
        given = Path(run)
        if given.is_absolute():  # a full path is accepted only when it is one of this app's run folders
            if given.resolve().parent != root:
                raise InvalidInput(f"Run {given.name!r} is not in {root.name}/; resume runs from that folder only.")
            given = Path(given.name)
        run_dir = resolve_inside(root, str(given), "run")
        if not (run_dir / "config.json").is_file():
            raise InvalidInput(f"{run_dir.name} is not a training run folder.")
        recorded = run_owner(run_dir)
        if not access.may_change(recorded):
            raise InvalidInput(f"Run {run_dir.name} was started in another browser session or by another user; "
                               "only they can resume it.")
        if latest_checkpoint(run_dir / "checkpoints") is None:
            raise InvalidInput(f"Run {run_dir.name} has no checkpoint to resume from; start a new run.")
        return self.start(TrainConfig.from_file(run_dir / "config.json"), run_dir=run_dir, resume=True,
                          owner=access.owner or recorded)

    def cancel(self, job_id: str | None = None, access: Access = OPERATOR) -> JobState | None:
        """Stop after the current step; the trainer saves a checkpoint so the run can be resumed. Only the job's
        owner may cancel it: on a shared app one designer must not stop another's training."""
        job = self._jobs.get(job_id or self._latest or "")
        if job is not None and job.state.status in ("queued", "running") and not access.may_change(job.owner):
            raise InvalidInput(f"Training job {job.state.name!r} was started in another browser session or by "
                               "another user; only they can cancel it.")
        if job is not None:
            with job.lock:  # checked under the lock: a job that just finished must not turn back to cancelling
                if job.state.status in ("queued", "running"):
                    job.stop.set()
                    job.state.status = "cancelling"
                    job.state.message = "Stopping after the current step and saving a checkpoint…"
        return self.status(job_id)

    # ----- the worker ------------------------------------------------------------------------------
    def _update(self, job: TrainingJob, progress: TrainProgress) -> None:
        with job.lock:
            s = job.state
            s.phase, s.message = progress.phase, progress.message or s.message
            s.step, s.total = progress.step or s.step, progress.total or s.total
            s.eta_seconds = progress.eta_seconds
            s.samples = list(progress.samples)
            if progress.loss is not None:
                s.loss = progress.loss
                if progress.phase == "training" and (not s.history or s.history[-1]["step"] < progress.step):
                    s.history.append({"step": progress.step, "loss": progress.loss})
                    del s.history[:-MAX_HISTORY_POINTS]

    def _guard(self) -> contextlib.AbstractContextManager:
        return self.manager.lock if self.manager is not None else contextlib.nullcontext()

    def _train(self, job: TrainingJob) -> TrainResult:
        """One run under the accelerator policy. The trainer (and the models it holds) lives only in this frame,
        so after a failure it goes with the exception once _run has recorded it, before free_memory()."""
        per_step = None if self.exclusive else self._guard
        hooks = TrainHooks(on_progress=lambda p: self._update(job, p), should_stop=job.stop.is_set, step_guard=per_step)
        with self._guard() if self.exclusive else contextlib.nullcontext():
            if self.exclusive and self.manager is not None:
                self.manager.unload()  # the generation model leaves the GPU while training has it
            trainer = LoraTrainer(
                job.config,
                paths=self.paths,
                registry=self.registry,
                run_dir=job.run_dir,
                hooks=hooks,
                device=self.device,
                asset_types=self.asset_types,
            )
            result = trainer.run(resume=job.resume)
            del trainer  # its models go before the accelerator is handed back to generation
        return result

    def _run(self, job: TrainingJob) -> None:
        plan = getattr(self.manager, "thread_plan", None) if self.device == "cpu" else None
        if plan is not None:  # steps and generations take turns under the lock, so a step may use every core; a new
            torch.set_num_threads(plan.lone)  # thread starts with the server's busy count (1 of 2): 2x slower steps
        with job.lock:
            job.state.status = "cancelling" if job.stop.is_set() else "running"
        try:
            result = self._train(job)
            with job.lock:
                job.state.status, job.state.message = result.status, result.message
                job.state.lora_dir = str(result.lora_dir or "")
                job.state.metrics = dict(result.metrics)
                job.state.step = result.steps
        except Exception as exc:  # the thread must end in a readable state, whatever happened
            text = str(exc) if isinstance(exc, BrandGenError) else f"{type(exc).__name__}: {exc}"
            with job.lock:
                job.state.status, job.state.error = "failed", text
                job.state.message = f"Training failed: {text[:500]}"
        finally:
            with job.lock:
                job.state.finished_at = time.time()
            free_memory()
