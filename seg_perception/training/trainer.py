"""The training loop of ``seg-perception train`` (RegSeg recipe, any registered model).

Recipe (Gao 2021, section 5): SGD with momentum 0.9 (or AdamW), a linear warm-up then a poly
learning-rate decay (power 0.9), random scale 0.5-2.0, random crop, horizontal flip, cross-entropy
that skips the ignore label, mixed precision on CUDA. The learning rate is a pure function of the
iteration and the sample stream a pure function of ``(seed, sample number)``, so ``--resume``
continues exactly where an uninterrupted run would be: same learning rate, same next batch.

Checkpoints (``last.pth`` every validation and at the end, ``best.pth`` at the best validation
mIoU) hold ``state_dict`` plus plain-data ``meta`` (model, variant, class names, palette, label
mapping), so they load with the package's one checkpoint loader and the node publishes the
checkpoint's class names. They are written atomically (a temporary file, synced, then renamed), so
an interrupted run never leaves a truncated ``last.pth``.

Under ``torchrun`` the same loop runs data-parallel (:mod:`.distributed`): ``--batch-size`` is per
process, rank ``r`` takes block ``r`` of each global batch of the sample stream, the loss is
normalised over the global batch, validation is sharded and summed, and rank 0 alone writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..choices import ONNX_MODEL
from ..cityscapes import IGNORE_INDEX
from ..evaluation.metrics import ConfusionMatrix, class_iou
from ..models import build_model, normalization_for
from ..models.checkpoint import (
    CHECKPOINT_FORMAT,
    ClassCountMismatchError,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint,
    resolve_weights,
)
from ..text import bounded_repr
from . import distributed
from .data import AugmentedCrops, Frames, Sample, check_samples, collect_samples
from .labels import LabelMapping, cityscapes_mapping, load_label_mapping

OPTIMIZERS = ("sgd", "adamw")
CLASS_BALANCE = ("none", "sqrt")
#: Largest loss weight ``--class-balance sqrt`` gives a rare class.
MAX_CLASS_WEIGHT = 10.0
DEFAULT_LR = {"sgd": 0.02, "adamw": 1e-3}
POLY_POWER = 0.9


class TrainConfigError(ValueError):
    """A training option that cannot work (the message names it)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in its checkpoints."""

    data: list[str]
    out: str
    split: str = "train"
    val: list[str] = field(default_factory=list)
    val_split: str = "val"
    model: str = "regseg"
    variant: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    label_mapping: str | None = None
    iterations: int = 1000
    batch_size: int = 8
    crop: tuple[int, int] = (512, 512)
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup: int | None = None
    class_balance: str = "none"
    init: str | None = None
    resume: str | None = None
    val_every: int = 500
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    image_topic: str = "/camera/image_raw"
    gt_topic: str = "/camera/semantic_gt"
    progress: bool = True
    #: Synchronised batch norms under torchrun: statistics over the global batch, not each rank's.
    sync_bn: bool = False

    def validate(self) -> None:
        if not self.data:
            raise TrainConfigError("no training data given")
        for name in ("iterations", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise TrainConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if min(self.crop) < 16:
            raise TrainConfigError(f"crop must be at least 16x16, got {self.crop[0]}x{self.crop[1]}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.class_balance not in CLASS_BALANCE:
            raise TrainConfigError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, "
                                   f"got {self.class_balance!r}")
        if self.lr is not None and not self.lr > 0:
            raise TrainConfigError(f"lr must be > 0, got {self.lr}")
        if self.warmup is not None and not 0 <= self.warmup < self.iterations:
            raise TrainConfigError(f"warmup must be in 0..iterations-1, got {self.warmup}")
        if self.init and self.resume:
            raise TrainConfigError("--init and --resume exclude each other (a resumed run has its weights)")
        if self.model == ONNX_MODEL:
            raise TrainConfigError(
                "train cannot train model onnx: an ONNX file is an inference graph (batch norms folded into the "
                "convolutions, no training graph); train the network where it was written (PyTorch, "
                "mmsegmentation, ...) and export it again, or train a registered model here (seg-perception "
                "models). eval and bench take --model onnx --weights FILE.onnx")
        if self.init and str(self.init).lower().endswith(".onnx"):
            raise TrainConfigError(
                f"--init takes a PyTorch checkpoint, not an ONNX file ({bounded_repr(self.init, 200)}): an "
                "exported graph's weights cannot be loaded back into a trainable model; start from the "
                "checkpoint it was exported from")

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def warmup_iterations(self) -> int:
        return self.warmup if self.warmup is not None else min(1000, self.iterations // 10)


def learning_rate(iteration: int, base_lr: float, total: int, warmup: int) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` iterations, then poly decay to 0 at ``total``."""
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    return base_lr * (1.0 - (iteration - warmup) / max(1, total - warmup)) ** POLY_POWER


def class_weights(pixel_counts: np.ndarray, mode: str) -> torch.Tensor | None:
    """Loss weight per class: ``sqrt`` gives ``sqrt(median frequency / frequency)`` (at most
    :data:`MAX_CLASS_WEIGHT`; absent classes 1), so thin classes (poles, signs) are learnt in a short
    schedule instead of being drowned by road and sky; ``none`` is the paper's plain loss."""
    if mode == "none":
        return None
    present = pixel_counts > 0
    weights = np.ones(len(pixel_counts))
    if present.any():
        freq = pixel_counts[present] / pixel_counts[present].sum()
        weights[present] = np.minimum(np.sqrt(np.median(freq) / freq), MAX_CLASS_WEIGHT)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class TrainResult:
    out: Path
    iterations: int
    best_miou: float | None
    last_loss: float
    seconds: float


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("device cuda requested but torch sees no CUDA device")
    return torch.device(name)


def _init_weights(model: nn.Module, weights: str) -> str:
    """Load ``--init`` weights; a checkpoint for another class count keeps all but the classifier."""
    try:
        load_checkpoint(model, weights)
        return f"initialised from {weights}"
    except ClassCountMismatchError as exc:
        skipped = {key for key, _, _ in exc.wrong_shape}
        state = extract_state_dict(read_checkpoint(resolve_weights(weights)), weights)
        state = {k: v for k, v in state.items() if k not in skipped}
        model.load_state_dict(state, strict=False)
        return (f"initialised from {weights} except {len(skipped)} class-count-shaped tensor(s) "
                f"({exc.checkpoint_classes} -> {exc.model_classes} classes), which start random")


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and bias parameters, as in the RegSeg code.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.base_lr, momentum=0.9, nesterov=False)
    return torch.optim.AdamW(groups, lr=config.base_lr)


def _grad_scaler(enabled: bool) -> Any:
    """``torch.amp.GradScaler`` (torch >= 2.3) or the older ``torch.cuda.amp`` one."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


@torch.no_grad()
def validate(model: nn.Module, frames: Frames, device: torch.device, amp: bool,
             class_names: tuple[str, ...], ctx: distributed.Distributed | None = None) -> dict[str, Any]:
    """Whole-frame mIoU with the evaluator's confusion matrix (NaN classes left out of the mean).

    Under torchrun each rank runs every ``world_size``-th frame and the matrices are summed: the
    same figure as one process over all frames, in a fraction of the time.
    """
    ctx = ctx or distributed.Distributed(device=device)
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(len(class_names))
    for i in range(ctx.rank, len(frames), ctx.world_size):
        x, y = frames[i]
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(x.unsqueeze(0).to(device))
        pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        matrix.update(pred, y.numpy().astype(np.uint8))
    model.train(was_training)
    matrix.matrix = ctx.sum_array(matrix.matrix)
    ious = class_iou(matrix.matrix)
    finite = [float(v) for v in ious if not math.isnan(v)]
    return {"miou": sum(finite) / len(finite) if finite else math.nan,
            "class_iou": {n: (None if math.isnan(v) else float(v)) for n, v in zip(class_names, ious, strict=True)},
            "pixels": int(matrix.matrix.sum())}


def _meta(config: TrainConfig, mapping: LabelMapping, model: nn.Module, iteration: int,
          val: dict[str, Any] | None, world_size: int = 1) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "variant": getattr(model, "variant", config.variant),
        "model_options": dict(config.model_options),
        "num_classes": mapping.num_classes,
        "labels": mapping.as_dict(),
        "iteration": iteration,
        "val_miou": None if val is None or math.isnan(val["miou"]) else float(val["miou"]),
        "world_size": world_size,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
    }


def _save(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a synced temporary file renamed over ``path``, so an interrupted or
    failing save leaves the previous checkpoint (or none), never a truncated one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plot(out: Path, history: dict[str, list]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its, losses = history["iteration"], history["loss"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(its, losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 10:
        k = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    if history["val_iteration"]:
        ax.plot(history["val_iteration"], [100 * v for v in history["val_miou"]], marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mIoU (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "val_miou.png", dpi=100)
    plt.close(fig)


class RankSamples:
    """The sample numbers one rank trains on from iteration ``start``: block ``rank`` of every
    global batch of ``batch_size * world_size`` consecutive numbers of the sample stream. Rank
    blocks put side by side are the global batch, so N ranks see what one process of the global
    batch sees, and a resumed run the samples an uninterrupted one would have seen."""

    def __init__(self, start: int, iterations: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start, self.iterations, self.batch_size = start, iterations, batch_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return (self.iterations - self.start) * self.batch_size

    def __iter__(self):
        step = self.batch_size * self.world_size
        for iteration in range(self.start, self.iterations):
            first = iteration * step + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)


def _loader(dataset: AugmentedCrops, config: TrainConfig, start: int, ctx: distributed.Distributed) -> DataLoader:
    samples = RankSamples(start, config.iterations, config.batch_size, ctx.rank, ctx.world_size)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=samples, num_workers=config.num_workers,
                      pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                      prefetch_factor=2 if config.num_workers else None)


def _loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None,
          ctx: distributed.Distributed) -> tuple[torch.Tensor, float]:
    """Cross-entropy over the global batch: the loss to back-propagate on this rank, and the
    global batch's mean loss (for the log).

    The sum over this rank's pixels is divided by the (weighted) pixel count of the global batch
    and multiplied by the world size, which DistributedDataParallel's gradient averaging divides
    out again: the gradient is exactly that of one process over the global batch, however the
    ignored pixels fall between ranks. In one process this is plain ``reduction="mean"``.
    """
    summed = F.cross_entropy(logits.float(), y, weight=weights, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = y != IGNORE_INDEX
    count = weights[y[valid]].sum() if weights is not None else valid.sum()
    totals = ctx.all_reduce_sum(torch.stack([summed.detach(), count.to(summed.dtype)]))
    total_loss, total_count = (float(v) for v in totals.cpu())
    if total_count == 0:  # an all-ignored global batch: no gradient, and no NaN
        return logits.float().sum() * 0.0, 0.0
    return summed * (ctx.world_size / total_count), total_loss / total_count


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; writes best.pth, last.pth, loss.png, val_miou.png, log.jsonl.

    Under ``torchrun`` every process calls this; rank 0 reads and checks the data and alone writes.
    """
    config.validate()
    ctx = distributed.setup(_device(config.device))
    try:
        result = _train(config, ctx)
        ctx.barrier()  # no rank leaves while rank 0 still writes
        return result
    finally:
        ctx.close()


def _data(config: TrainConfig, out: Path) -> tuple[LabelMapping, list[Sample], np.ndarray, list[Sample]]:
    """The label mapping, the checked training and validation frames and the class pixel counts."""
    out.mkdir(parents=True, exist_ok=True)
    mapping = load_label_mapping(config.label_mapping) if config.label_mapping else cityscapes_mapping()
    samples = collect_samples(config.data, config.split, out / "data_cache", config.image_topic,
                              config.gt_topic, config.progress)
    counts = check_samples(samples, mapping, config.progress)
    val_samples: list[Sample] = []
    if config.val:
        val_samples = collect_samples(config.val, config.val_split, out / "data_cache", config.image_topic,
                                      config.gt_topic, config.progress)
        check_samples(val_samples, mapping, config.progress)
    return mapping, samples, counts, val_samples


def _train(config: TrainConfig, ctx: distributed.Distributed) -> TrainResult:
    out = Path(config.out)
    device = ctx.device
    amp = device.type == "cuda"
    say = print if ctx.is_main else (lambda *args, **kwargs: None)
    # Rank 0 reads, unpacks and checks the data once; the others get its lists (or its error).
    mapping, samples, counts, val_samples = ctx.from_main(_data, replace(config, progress=config.progress
                                                                           and ctx.is_main), out)
    present = [n for n, c in zip(mapping.class_names, counts, strict=True) if c]
    say(f"train: {len(samples)} frames, {len(present)}/{mapping.num_classes} classes present "
        f"({', '.join(present)}); val: {len(val_samples)} frames")
    say(f"train: {ctx.describe()}; batch {config.batch_size} per process, global batch "
        f"{config.batch_size * ctx.world_size}" + ("; synchronised batch norm" if config.sync_bn else ""))
    if config.sync_bn and not ctx.enabled:
        say("train: --sync-bn has no effect in a single process (start the run with torchrun)")

    torch.manual_seed(config.seed)
    model = build_model(config.model, mapping.num_classes, config.variant, **config.model_options)
    history: dict[str, list] = {"iteration": [], "loss": [], "lr": [], "val_iteration": [], "val_miou": []}
    start, best = 0, -math.inf
    state: dict[str, Any] | None = None
    if config.resume:
        state = read_checkpoint(config.resume)
        if not isinstance(state, dict) or "optimizer" not in state:
            raise TrainConfigError(f"--resume {config.resume}: not a last.pth of seg-perception train "
                                   f"(no optimizer state); use --init to start from its weights")
        load_checkpoint(model, config.resume)
        start, history = int(state["meta"]["iteration"]), state["history"]
        best = max(history["val_miou"], default=-math.inf)
        say(f"resumed from {config.resume} at iteration {start}")
        was = int(state["meta"].get("world_size", 1))
        if was != ctx.world_size:
            say(f"train: the run was at world size {was}, now {ctx.world_size}: the global batch changes "
                f"from {config.batch_size * was} to {config.batch_size * ctx.world_size} (with the same --batch-size)")
    elif config.init:
        say(_init_weights(model, config.init))
    if start >= config.iterations:
        raise TrainConfigError(f"--resume checkpoint is at iteration {start}; nothing to do for "
                               f"--iterations {config.iterations}")
    model.to(device).train()
    if config.sync_bn and ctx.enabled:
        model = distributed.convert_sync_batchnorm(model, device)
    optimizer = _optimizer(config, model)
    scaler = _grad_scaler(amp)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    net = model  # the plain model: what is saved and validated
    if ctx.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    weights = class_weights(counts, config.class_balance)
    if weights is not None:
        weights = weights.to(device)

    # Crops and validation frames are fed as the engine will feed the model: its registry entry's
    # normalisation (mean, std, channel order).
    normalization = normalization_for(config.model, config.variant)
    frames = Frames(val_samples, mapping, normalization)
    val: dict[str, Any] | None = None
    began = time.monotonic()
    log = (out / "log.jsonl").open("a") if ctx.is_main else None

    def write_log(record: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")

    def checkpoint(iteration: int, val: dict[str, Any] | None, full: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {"state_dict": net.state_dict(),
                                   "meta": _meta(config, mapping, net, iteration, val, ctx.world_size)}
        if full:
            payload.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), history=history)
        return payload

    write_log({"start_iteration": start, "world_size": ctx.world_size, "backend": ctx.backend,
               "batch_size": config.batch_size, "global_batch": config.batch_size * ctx.world_size,
               "sync_bn": bool(config.sync_bn and ctx.enabled)})
    loss_value = math.nan
    try:
        loader = _loader(AugmentedCrops(samples, mapping, config.crop, config.seed, normalization), config,
                         start, ctx)
        bar = None
        if config.progress and ctx.is_main:
            from tqdm import tqdm

            bar = tqdm(total=config.iterations, initial=start, desc="train", unit="it", dynamic_ncols=True)
        iteration = start
        for x, y in loader:
            lr = learning_rate(iteration, config.base_lr, config.iterations, config.warmup_iterations)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                loss, loss_value = _loss(model(x), y, weights, ctx)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at iteration {iteration}; lower --lr")
            history["iteration"].append(iteration)
            history["loss"].append(loss_value)
            history["lr"].append(lr)
            write_log({"iteration": iteration, "loss": loss_value, "lr": lr})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if iteration % config.val_every == 0 or iteration == config.iterations:
                ctx.sync_buffers(net)  # every rank validates the model rank 0 saves
                if val_samples:
                    val = validate(net, frames, device, amp, mapping.class_names, ctx)
                    history["val_iteration"].append(iteration)
                    history["val_miou"].append(val["miou"])
                    write_log({"iteration": iteration, "val": val})
                    message = f"iteration {iteration}: val mIoU {100 * val['miou']:.1f}%"
                    (bar.write if bar is not None else say)(message)
                    if val["miou"] > best:
                        best = val["miou"]
                        if ctx.is_main:
                            _save(out / "best.pth", checkpoint(iteration, val, full=False))
                if ctx.is_main:
                    _save(out / "last.pth", checkpoint(iteration, val, full=True))
                    _plot(out, history)
                    log.flush()
        if bar is not None:
            bar.close()
        if not val_samples and ctx.is_main:  # nothing to choose by: the final weights are the best we know
            _save(out / "best.pth", checkpoint(iteration, None, full=False))
    finally:
        if log is not None:
            log.close()
    return TrainResult(out, config.iterations, best if val_samples else None, loss_value,
                       time.monotonic() - began)
