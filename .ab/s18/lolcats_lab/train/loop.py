"""The training loop both stages share: AdamW, LR schedule, gradient accumulation and clipping, tqdm
progress, a metrics callback, NaN/inf guards, atomic safetensors checkpoints and exact resume.

A stage supplies the parameters to train and ``loss_fn(batch) -> (loss, metrics)``; the loop owns
everything else. Batches come from a fixed tensor of packed sequences [N, T] in an order that depends
only on the seed and the step, so a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would have seen (and, on CPU with a fixed seed, ends with the same weights).

Checkpoint = one safetensors file (written to a temp name, then renamed): the trained parameters, the
AdamW moments, the torch RNG state, and JSON metadata (step, config, history, and ``sha256``: a digest of
every tensor's name, dtype, shape and bytes in sorted key order, checked on resume so a damaged file is
refused instead of silently resuming from altered weights). Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..io import atomic_path

CHECKPOINT_NAME = "train_state.safetensors"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class LoopConfig:
    """Settings of one training stage (all counts in optimizer steps)."""

    steps: int = 100
    lr: float = 1e-2
    batch_size: int = 4
    grad_accum: int = 1  # micro-batches per optimizer step
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr) or "constant"
    min_lr_ratio: float = 0.1
    max_grad_norm: float | None = 1.0  # None: no clipping
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at the end and on Ctrl-C
    progress: bool = True
    desc: str = "train"

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError("warmup_steps and checkpoint_every must be >= 0")


@dataclass
class LoopResult:
    steps_done: int
    history: list[dict] = field(default_factory=list)  # one dict per optimizer step
    interrupted: bool = False


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Multiplier of cfg.lr at optimizer step ``step`` (0-based): linear warm-up, then cosine or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(micro_step: int, batch_size: int, num_sequences: int, seed: int) -> torch.Tensor:
    """Rows of the data for micro-batch ``micro_step``: a stream of seeded per-epoch permutations."""
    start = micro_step * batch_size
    rows = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), num_sequences)
        perm = torch.randperm(num_sequences, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        rows.extend(perm[offset : offset + batch_size - len(rows)].tolist())
    return torch.tensor(rows)


# --------------------------------------------------------------------------------------------------
# checkpoints


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict, path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"lolcats": json.dumps(metadata)})


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and raw bytes, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # a buffer: no copy
    return h.hexdigest()


def save_train_state(path: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                     step: int, cfg: LoopConfig, history: list[dict]) -> None:
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in params.items()}
    for n, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim/{n}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {"step": step, "config": asdict(cfg), "history": history, "params": sorted(params),
            "sha256": _tensors_sha256(tensors)}
    _atomic_save(tensors, meta, path)


def load_train_state(path: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """Restore parameters, AdamW state and RNG from ``path``; return (step, history).

    Raises ValueError when the file is unreadable or its tensors do not match the stored sha256 (a
    checkpoint written before the checksum existed is loaded without the check)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["lolcats"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise ValueError(f"checkpoint {path} is unreadable ({err}); delete it to start over") from err
    if not isinstance(meta, dict) or not {"step", "history", "params"} <= set(meta):
        raise ValueError(f"checkpoint {path} is unreadable (its metadata lacks step/history/params); "
                         "delete it to start over")
    if "sha256" in meta and meta["sha256"] != _tensors_sha256(tensors):
        raise ValueError(f"checkpoint {path} is corrupted (checksum mismatch); delete it to start over")
    if meta["params"] != sorted(params):
        raise ValueError(
            f"checkpoint {path} trains parameters {meta['params'][:3]}... but this run trains "
            f"{sorted(params)[:3]}...; it belongs to another model or stage"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"].to(p.device, p.dtype))
    for n, p in params.items():
        state = {k.split("/")[-1]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"optim/{n}/")}
        if state:
            optimizer.state[p] = state
    torch.set_rng_state(tensors["rng/torch"])
    return int(meta["step"]), list(meta["history"])


# --------------------------------------------------------------------------------------------------
# the loop


def _check_finite(loss: torch.Tensor, metrics: dict, step: int) -> None:
    if torch.isfinite(loss).all():
        return
    where = ""
    layer_values = metrics.get("layer_mse")
    if layer_values is not None:
        bad = [i for i, x in enumerate(layer_values) if not math.isfinite(x)]
        if bad:
            where = f" (first non-finite layer: {bad[0]})"
    raise TrainingDiverged(
        f"loss is {loss.item()} at step {step}{where}; lower the learning rate, use fp32, or check the data"
    )


def run_training(
    params: dict[str, nn.Parameter],
    loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict]],
    data: torch.Tensor,
    cfg: LoopConfig,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
) -> LoopResult:
    """Train ``params`` to minimise ``loss_fn`` over batches of ``data`` ([N, T] token ids).

    Args:
        params: name -> parameter (all must require grad).
        loss_fn: batch [b, T] -> (scalar loss, metrics dict of floats / lists of floats).
        checkpoint_dir: where ``train_state.safetensors`` goes (every ``cfg.checkpoint_every`` steps, at
            the end, and on Ctrl-C); None: no checkpoints.
        resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
        callback: called after every optimizer step with {"step", "loss", "lr", **metrics}.
        stop_after: stop (with a checkpoint) after this many steps in total, as if interrupted; for tests.
    """
    if not params:
        raise ValueError("no parameters to train: did you linearize the model (or add LoRA) first?")
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"parameters {frozen[:3]} do not require grad; unfreeze them or leave them out")
    if data.dim() != 2 or data.shape[0] < 1:
        raise ValueError(f"data must be packed token ids [N, T] with N >= 1, got shape {tuple(data.shape)}")
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None

    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if resume and ckpt is not None and ckpt.exists():
        step, history = load_train_state(ckpt, params, optimizer)

    def checkpoint():
        if ckpt is not None:
            save_train_state(ckpt, params, optimizer, step, cfg, history)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.desc, disable=not cfg.progress, dynamic_ncols=True)
    interrupted = False
    try:
        while step < cfg.steps:
            if stop_after is not None and step >= stop_after:
                interrupted = True
                break
            lr = cfg.lr * lr_factor(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            total, metrics_sum = 0.0, {}
            for a in range(cfg.grad_accum):
                rows = batch_indices(step * cfg.grad_accum + a, cfg.batch_size, data.shape[0], cfg.seed)
                loss, metrics = loss_fn(data[rows])
                _check_finite(loss, metrics, step)
                (loss / cfg.grad_accum).backward()
                total += loss.item() / cfg.grad_accum
                for key, value in metrics.items():
                    metrics_sum[key] = _add(metrics_sum.get(key), value, cfg.grad_accum)
            grad_norm = None
            if cfg.max_grad_norm is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm))
                if not math.isfinite(grad_norm):
                    raise TrainingDiverged(f"gradient norm is {grad_norm} at step {step}; lower the learning rate")
            optimizer.step()
            step += 1
            record = {"step": step, "loss": total, "lr": lr, **metrics_sum}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4g}")
            if callback is not None:
                callback(record)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        checkpoint()
        bar.close()
        raise
    finally:
        bar.close()
    checkpoint()
    return LoopResult(steps_done=step, history=history, interrupted=interrupted)


def _add(acc, value, n):
    """Running mean over micro-batches of floats or lists of floats."""
    if isinstance(value, (list, tuple)):
        value = [float(x) / n for x in value]
        return value if acc is None else [a + b for a, b in zip(acc, value)]
    value = float(value) / n
    return value if acc is None else acc + value
