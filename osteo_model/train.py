"""One training loop for every method: pretraining and fine-tuning differ only in model + objective.

``fit(model, objective, dataset, cfg, run_dir)`` reads top to bottom:

1. seed everything, pick the device, wrap the model in DistributedDataParallel
   when ``torch.distributed`` is initialised;
2. AdamW (weight decay on matrices/kernels only, not on norms and biases), a
   linear warm-up then cosine LR schedule, an AMP grad scaler (CUDA only);
3. resume from ``run_dir/last.pt`` when present (signatures verified);
4. per epoch a seeded DistributedSampler order (also with one process), skipping
   the batches a resumed run already consumed, fed to one DataLoader whose workers
   persist across epochs (their pool caches survive); per batch: objective -> finite
   check -> backward -> model hooks -> clip -> step -> schedule -> log ->
   checkpoint every ``ckpt_every_steps``.

A dataset whose items depend on the epoch (``epoch_keyed = True``, e.g. fine-tuning
re-imaging, :mod:`osteo_model.augment`) receives keys ``index + epoch * len(dataset)``
and decodes them with ``divmod``: its randomness is a function of (seed, epoch, index),
drawn identically by a resumed run and by any worker process.

An *objective* is any callable ``objective(model, batch, step) -> (loss,
metrics)``; a model may define ``on_after_backward(step)`` and
``on_step_end(step)`` hooks (SwAV uses them for prototype freezing and
re-normalisation). Metrics go to ``log_metrics(step, dict)`` on rank 0: MLflow
or anything else plugs in there.
"""
from __future__ import annotations

import math
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from osteo_model.checkpoint import architecture_signature, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from osteo_model.config import TrainConfig
from osteo_model.errors import NonFiniteLossError

MetricsCallback = Callable[[int, dict[str, float]], None]
CHECKPOINT_NAME = "last.pt"


class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained (unwrapped) model and where the run stands."""

    model: nn.Module
    steps: int
    epochs: int
    checkpoint: Path
    resumed_from_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available (``LOCAL_RANK``'s GPU under DDP), else CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local_rank)


def _dist_info() -> tuple[bool, int, int]:
    on = dist.is_available() and dist.is_initialized()
    return on, (dist.get_rank() if on else 0), (dist.get_world_size() if on else 1)


def rank() -> int:
    """This process's rank in the torch.distributed job (0 without one): only rank 0 writes files and runs."""
    return _dist_info()[1]


def world_size() -> int:
    """Processes of the current torch.distributed job (1 without one)."""
    return _dist_info()[2]


def barrier() -> None:
    """Wait for every rank (no-op without a process group): e.g. until rank 0 has written a bundle."""
    if _dist_info()[0]:
        dist.barrier()


@contextmanager
def distributed_from_env(device: str = "auto"):
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), destroy it on exit.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT`` (the
    ``env://`` rendezvous). Backend: NCCL when training runs on CUDA (``train.device``), else gloo.
    Without those variables, or with a group already initialised, this does nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield
        return
    on_cuda = resolve_device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # Rank 0 evaluates and logs between the stage's last two barriers: allow it hours, not the 30 min default.
    dist.init_process_group("nccl" if on_cuda else "gloo", timeout=timedelta(hours=2))
    try:
        yield
    finally:
        dist.destroy_process_group()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _all_finite(loss: torch.Tensor, distributed: bool) -> bool:
    """True when the loss is finite on every rank (so all ranks stop together, none hangs in backward)."""
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


class EpochOrder(Sampler[int]):
    """The sample order of the current epoch, replaced before each epoch.

    One DataLoader (and with ``num_workers > 0`` one set of *persistent* worker processes)
    serves every epoch: the indices are drawn in the main process from this sampler, so
    changing ``order`` changes the epoch without restarting the workers and their
    in-memory pool caches (:class:`~osteo_model.data.TexturePoolDataset` ``cache=True``).
    """

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self):
        return iter(list(self.order))

    def __len__(self) -> int:
        return len(self.order)


def _call_hook(model: nn.Module, name: str, step: int) -> None:
    hook = getattr(model, name, None)
    if callable(hook):
        hook(step)


def fit(model: nn.Module, objective: Objective, dataset: Dataset, cfg: TrainConfig, run_dir: Path, *,
        params_digest: str = "", extra_state: dict[str, Any] | None = None,
        log_metrics: MetricsCallback | None = None, resume: bool = True) -> FitResult:
    """Train ``model`` with ``objective`` on ``dataset``; resumable and DDP-ready.

    Args:
        model: the network (built by the caller after seeding, so its init is reproducible).
        objective: ``objective(model, batch, step) -> (loss, metrics)``.
        dataset: map-style dataset returning dicts of tensors.
        cfg: the stage's training configuration.
        run_dir: holds ``last.pt``; an existing one is resumed when ``resume``.
        params_digest: hash of the params this run was configured with (refused on mismatch).
        extra_state: saved in every checkpoint (e.g. ChannelNorm state, configs, method name).
        log_metrics: ``log_metrics(step, metrics)`` after every optimizer step (rank 0 only).
        resume: continue from ``run_dir/last.pt`` when it exists.

    Returns:
        A :class:`FitResult` with the trained, unwrapped model.

    Raises:
        NonFiniteLossError: NaN/inf loss (step, epoch and batch index recorded).
        CheckpointMismatchError: ``last.pt`` comes from another architecture or params.
    """
    distributed, rank, world = _dist_info()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    prior_determinism = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    use_amp = cfg.amp and device.type == "cuda"

    model.to(device)
    architecture = architecture_signature(model)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if distributed else model
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    steps_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, warmup_steps, cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    ckpt_path = Path(run_dir) / CHECKPOINT_NAME
    step, start_epoch, skip_batches, resumed_from = 0, 0, 0, None
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, architecture, params_digest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        step, start_epoch, skip_batches = state["step"], state["epoch"], state["batch_in_epoch"]
        resumed_from = step

    def checkpoint(epoch: int, batch_in_epoch: int) -> None:
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": capture_rng(),
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "architecture": architecture, "params_digest": params_digest, "extra": extra_state or {},
            })
        if distributed:
            dist.barrier()

    metrics: dict[str, float] = {}
    epoch_order = EpochOrder()
    epoch_keyed = bool(getattr(dataset, "epoch_keyed", False))   # items drawn from (seed, epoch, index)
    context = getattr(dataset, "multiprocessing_context", None) if cfg.num_workers > 0 else None   # e.g. spawn
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=epoch_order, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed),
                        pin_memory=device.type == "cuda", multiprocessing_context=context)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            order = list(sampler)[skip_batches * cfg.batch_size:]               # data position of a resumed run
            epoch_order.order = [i + epoch * len(dataset) for i in order] if epoch_keyed else order
            net.train()
            for batch_index, batch in enumerate(loader, start=skip_batches):
                batch = _to_device(batch, device)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    loss, metrics = objective(net, batch, step)
                if not _all_finite(loss, distributed):
                    raise NonFiniteLossError(step, epoch, batch_index, float(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                _call_hook(model, "on_after_backward", step)
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                _call_hook(model, "on_step_end", step)
                step += 1
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                metrics["epoch"] = float(epoch)
                end_of_epoch = batch_index + 1 == steps_per_epoch
                if step % cfg.ckpt_every_steps == 0 or step == total_steps:
                    checkpoint(epoch + 1 if end_of_epoch else epoch, 0 if end_of_epoch else batch_index + 1)
                if log_metrics is not None and rank == 0:
                    log_metrics(step, dict(metrics))
            skip_batches = 0
    finally:
        if cfg.deterministic and device.type == "cpu":
            torch.use_deterministic_algorithms(prior_determinism)
    return FitResult(model=model, steps=step, epochs=cfg.epochs, checkpoint=ckpt_path,
                     resumed_from_step=resumed_from, last_metrics=metrics)
