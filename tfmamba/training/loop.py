"""One epoch of training and one evaluation pass, plus the optimiser and learning-rate schedule.

Loss (paper Eq. 9): cross-entropy + cmdt_weight * CMDT, the CMDT term skipped when the weight is 0.
A non-finite loss on any rank stops every rank with a `TrainingError` naming the epoch and step. A batch that does
not fit in the device's memory stops its own rank with a `DeviceMemoryError` (`out_of_memory`) naming the batch's
size and what to lower.
On CUDA with `amp` the forward pass runs under bf16 autocast; the losses are computed in float32.
With `compile` the training steps call the model through `torch.compile` (`step_module`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from tfmamba.config import TrainConfig
from tfmamba.device import out_of_memory_as, to_device_async
from tfmamba.errors import DeviceMemoryError, TrainingError, first_line
from tfmamba.losses import CMDTLoss, total_loss
from tfmamba.model import ModelOutput, TFMamba, known_unpadded
from tfmamba.ssd import resolve_backend
from tfmamba.training import distributed
from tfmamba.training.input_norm import InputNorm

logger = logging.getLogger(__name__)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: parameters flagged `_no_weight_decay` (omega, A_log, dt_bias, D, as mamba-ssm flags them)
    with weight_decay 0, every other trainable parameter with `weight_decay`. Empty groups are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(config: TrainConfig, model: nn.Module) -> AdamW:
    """AdamW over `parameter_groups`; on CUDA its fused kernel (one launch per step, not one per tensor)."""
    fused = next(model.parameters()).device.type == "cuda"
    return AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, weight_decay=config.weight_decay,
                 fused=fused or None)


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Step -> LR multiplier: linear warmup over `warmup_epochs`, then constant or cosine decay to 0."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(total, int(round(config.warmup_epochs * steps_per_epoch)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(config: TrainConfig, optimizer: AdamW, steps_per_epoch: int) -> LambdaLR:
    return LambdaLR(optimizer, lr_factor(config, steps_per_epoch))


def make_cmdt(config: TrainConfig) -> CMDTLoss | None:
    """The fold's CMDT loss (built once, its settings checked then), or None when lambda is 0."""
    return CMDTLoss(config.cmdt_temperature, config.cmdt_bins) if config.cmdt_weight > 0 else None


def autocast(config: TrainConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA with `amp`. Its cache of cast weights is off: each weight is used once a
    forward pass, and a cache would not survive into a CUDA graph's capture."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=config.amp and device.type == "cuda", cache_enabled=False)


@dataclass
class Batch:
    """A batch on the training device, except `lengths`, which stay on the host: the model decides from them
    what is padded without waiting for the GPU (`TFMamba.forward`)."""

    features: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor


# frames: with CUDA graphs, a padded batch's length is rounded up to a multiple of this, so that a fold's batches
# take a few graphs (one per rounded length and batch size) rather than one per length, for <= 31 frames of padding
GRAPH_FRAME_STEP = 32


def cuda_graph_options() -> dict:
    """Inductor's options for `mode="reduce-overhead"` (CUDA graphs over the compiled code), without its warning
    that a dynamic-shape function records many graphs: `CompiledSteps` bounds them (`GRAPH_FRAME_STEP`)."""
    from torch._inductor import config as inductor_config

    options = {"triton.cudagraphs": True}
    if hasattr(inductor_config.triton, "cudagraph_dynamic_shape_warn_limit"):
        options["triton.cudagraph_dynamic_shape_warn_limit"] = None
    return options


class CompiledSteps(nn.Module):
    """`torch.compile(net)` for the training steps, the batch and its length symbolic from the first call, with the
    decisions that need the lengths on the host taken before the graph. A batch with nothing padded is passed as
    lengths None (the unpadded graph: no masks, one DFT basis for the filter), which the compiled model could not tell
    without splitting its graph. A batch whose length the model's graph would special-case
    (`TFMamba.compiled_frames`: short, or a whole number of SSD chunks) is padded to one it does not, with its
    lengths, and its sequence output cut back to the batch's length: the model masks the added frames, and the
    CMDT loss, whose spectrum spans the batch's length, sees the eager step's frames. One graph serves every
    padded batch, another every unpadded one; but once these steps have run the padded graph and not the unpadded
    one, an unpadded batch goes through the padded graph with nothing masked instead of compiling a second graph:
    in a fold most batches are padded (a few of cropped clips are not), and a graph costs a minute or more to
    compile while masks cost those few batches little. (Each fold has its own steps: a lane's later fold whose
    first batch is unpadded compiles the unpadded graph if no fold before it did.) `net` is the model, or DDP
    around it (`distributed.wrap`).

    With `cuda_graphs` the compiled code runs as CUDA graphs (torch.compile's "reduce-overhead": the forward and
    backward each replayed as one launch), for a step whose kernel launches would otherwise outlast its GPU work.
    A CUDA graph replays fixed sizes, so one is recorded per batch shape: a padded batch is padded on up to a
    multiple of `GRAPH_FRAME_STEP` frames, an unpadded one (clips cropped to `max_frames`) keeps its length, and
    its lengths go to the GPU first (a graph takes no host tensor)."""

    def __init__(self, net: nn.Module, backend: str = "inductor", cuda_graphs: bool = False) -> None:
        super().__init__()
        options = cuda_graph_options() if cuda_graphs else None
        self.compiled = torch.compile(net, backend=backend, options=options)
        self.cuda_graphs = cuda_graphs
        model: TFMamba = distributed.unwrap(net)
        self.frames = model.compiled_frames
        self.graphs: set[bool] = set()  # the graphs these steps have run: padded (True), unpadded (False)

    def _compiled(self, features: torch.Tensor, lengths: torch.Tensor | None) -> ModelOutput:
        """The compiled model with only the batch and the length symbolic (a batch of one stays a size of its own).
        `dynamic=True` made every size and every float of the model symbolic too: the feature dimension, and the
        norms' eps and dropout rates, which Dynamo then had to specialise again by tracing the model a second time."""
        torch._dynamo.maybe_mark_dynamic(features, 0)
        torch._dynamo.maybe_mark_dynamic(features, 1)
        if lengths is not None:
            torch._dynamo.maybe_mark_dynamic(lengths, 0)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(features, lengths)

    def padded_frames(self, seqlen: int, padded: bool) -> int:
        """The frames the graph takes a batch of `seqlen` frames in: rounded up for CUDA graphs if padded, then
        moved off the lengths the model's graph special-cases."""
        if self.cuda_graphs and padded:
            seqlen = -(-seqlen // GRAPH_FRAME_STEP) * GRAPH_FRAME_STEP
        return self.frames(seqlen)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None) -> ModelOutput:
        seqlen = features.shape[1]
        if lengths is not None and known_unpadded(lengths, seqlen):
            lengths = None
        padded = lengths is not None or self.graphs == {True}  # once only the padded graph ran, it serves all
        frames = self.padded_frames(seqlen, padded)
        if lengths is None and (padded or frames != seqlen):  # through the padded graph, nothing masked
            lengths = torch.full(features.shape[:1], seqlen, dtype=torch.long)
        if frames != seqlen:
            features = F.pad(features, (0, 0, 0, frames - seqlen))
        self.graphs.add(lengths is not None)
        if self.cuda_graphs and lengths is not None:
            lengths = to_device_async(lengths, features.device)
        out = self._compiled(features, lengths)
        if frames == seqlen:
            return out
        return ModelOutput(out.logits, out.sequence[:, :seqlen], out.mask[:, :seqlen])


def step_module(config: TrainConfig, net: nn.Module, device: torch.device) -> nn.Module:
    """The module the training steps call: `net`, or with `config.compile` `CompiledSteps(net)`, which shares its
    parameters (so the optimiser, checkpoints and evaluation keep using `net`).

    Padded batches come in many lengths, so the batch and its length are symbolic from the start: one graph
    serves every padded batch (another the unpadded ones, if one comes first), and later models of the same
    settings in this process (a lane's next folds). Left to Dynamo's automatic dynamic shapes, every new length
    compiled again, until its limit of 8 left the rest eager. Compiled, the model reads no lengths on the host
    (`TFMamba.forward`, `FrequencyFilter.padded_mode`), which would split the graph. The SSD backend is chosen
    here, eagerly: "auto" and "mamba_ssm" import mamba-ssm on a GPU, which does not belong inside a graph.

    `config.cuda_graphs` takes effect on a GPU for a fold trained by one worker; elsewhere it is left off, and
    logged: on a CPU, and with DDP (several workers per fold, whose gradients are reduced between the graphs'
    kernels)."""
    if not config.compile:
        return net
    resolve_backend(config.model.ssd_backend, device)
    cuda_graphs = config.cuda_graphs
    if cuda_graphs and device.type != "cuda":
        logger.warning("cuda_graphs is left off: the fold trains on %s, not a CUDA device", device)
        cuda_graphs = False
    if cuda_graphs and distributed.unwrap(net) is not net:
        logger.warning("cuda_graphs is left off: this fold trains on several workers (DDP)")
        cuda_graphs = False
    return CompiledSteps(net, cuda_graphs=cuda_graphs)


def to_device(batch: dict, norm: InputNorm, device: torch.device) -> Batch:
    """A loader's batch on `device`, its features standardised in float32 (a GPU's batches come in the store's
    float16, converted after the copy: `loaders.batch_dtype`)."""
    return Batch(norm(to_device_async(batch["features"], device).float()), batch["lengths"],
                 to_device_async(batch["labels"], device))


def device_batches(loader: Iterable[dict], norm: InputNorm, device: torch.device) -> Iterator[tuple[dict, Batch]]:
    """Each of the loader's batches with its `to_device` form. On a GPU the next batch is copied on a side stream
    while the current one computes: on the compute stream its copy (~0.7 ms for 32 x 300 frames, an H200's profile)
    would wait for the step before it and hold up the step after. The next batch is taken from the loader only
    once the current one is handed on, so collating it (a loader without workers) overlaps this step too."""
    if device.type != "cuda":
        for raw in loader:
            yield raw, to_device(raw, norm, device)
        return
    copies = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)
    batches = iter(loader)

    def copy_next() -> tuple[dict, dict] | None:
        raw = next(batches, None)
        if raw is None:
            return None
        with torch.cuda.stream(copies):
            return raw, raw | {key: to_device_async(raw[key], device) for key in ("features", "labels")}

    ahead = copy_next()
    while ahead is not None:
        raw, moved = ahead
        compute.wait_stream(copies)
        for key in ("features", "labels"):  # allocated for the side stream, freed only after the compute uses them
            moved[key].record_stream(compute)
        yield raw, to_device(moved, norm, device)  # on the device already: only the conversion and the norm
        ahead = copy_next()


class LaggedValues:
    """A step's few scalars (loss terms, a not-finite flag) read on the host one step late.

    Reading a GPU value at once makes the host wait for the step it just queued, so the GPU idles while the
    next step is launched. Here each step's values are copied to pinned host memory without waiting, and
    are read after the next step has been queued, when they are (almost always) already there.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: tuple[int, torch.Tensor, torch.cuda.Event | None] | None = None

    def push(self, step: int, values: torch.Tensor) -> tuple[int, list[float]] | None:
        """Queue `values` (1-D) of `step`; return the previous step's (step, values), or None."""
        previous = self.pop()
        if self.cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values.detach(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending = (step, host, event)
        else:
            self.pending = (step, values.detach(), None)
        return previous

    def pop(self) -> tuple[int, list[float]] | None:
        """The queued step's (step, values), waiting for them if need be; None when nothing is queued."""
        if self.pending is None:
            return None
        step, host, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        return step, host.tolist()


def batch_losses(config: TrainConfig, model: nn.Module, batch: Batch, cmdt_loss: CMDTLoss | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training loss of Eq. 9 for one batch and its two terms: (loss, ce, cmdt), cmdt 0 when lambda is 0."""
    with autocast(config, device):
        out = model(batch.features, batch.lengths)
    ce = F.cross_entropy(out.logits.float(), batch.labels)
    cmdt = cmdt_loss(out.sequence, out.mask, batch.labels) if cmdt_loss is not None else torch.zeros((), device=device)
    return total_loss(ce, cmdt, config.cmdt_weight), ce, cmdt


def out_of_memory(err: BaseException, config: TrainConfig, device: torch.device, at: str,
                  shape: tuple[int, ...] | None, training: bool) -> DeviceMemoryError:
    """The `DeviceMemoryError` of a batch that did not fit: where, its size, torch's words, and the settings to lower
    (a training batch: `batch_size`, `max_frames`; an evaluation batch, whose clips are whole: `eval_max_frames`)."""
    size = f"a batch of {shape[0]} clip{'s' if shape[0] != 1 else ''} x {shape[1]} frames" if shape else "the first batch"
    lower = (f"batch_size (now {config.batch_size}) or max_frames (now {config.max_frames})" if training else
             f"eval_max_frames (now {config.eval_max_frames or 'unset: clips are scored whole'}) or batch_size "
             f"(now {config.batch_size})")
    return DeviceMemoryError(f"{at}: out of memory on {device} at {size} ({first_line(err, 200)}); lower {lower} "
                             "with --set, or give each worker a device with more memory")


def train_epoch(config: TrainConfig, model: nn.Module, norm: InputNorm, loader: DataLoader, optimizer: AdamW,
                scheduler: LambdaLR, device: torch.device, epoch: int, where: distributed.Dist,
                cmdt_loss: CMDTLoss | None, on_step: Callable[[float], None] | None = None) -> dict[str, float]:
    """Train one epoch with `cmdt_loss` (`make_cmdt`; None: lambda is 0); returns the utterance-weighted means
    over all ranks: train_loss, train_ce, train_cmdt.

    The step never waits for the GPU: the loss terms and the not-finite flag (summed over ranks on the device)
    are read one step late (`LaggedValues`), so a non-finite loss stops training one step after it happened,
    naming the step where it did; that step's update is then discarded with the fold.
    """
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, ce, cmdt, each times the batch size
    count = 0
    lagged = LaggedValues(device)

    def check(read: tuple[int, list[float]] | None) -> None:
        if read is None:
            return
        at, (loss_value, ce_value, cmdt_value, not_finite) = read
        if not_finite > 0:
            raise TrainingError(f"epoch {epoch}, step {at}: the training loss is not finite "
                                f"(ce {ce_value:.4g}, cmdt {cmdt_value:.4g}); lower lr or check the features")
        if on_step is not None:
            on_step(loss_value)

    step, shape = 1, None
    with out_of_memory_as(lambda err: out_of_memory(err, config, device, f"epoch {epoch}, step {step}", shape,
                                                    training=True)):
        for step, (_, batch) in enumerate(device_batches(loader, norm, device), start=1):
            shape = tuple(batch.features.shape[:2])
            loss, ce, cmdt = batch_losses(config, model, batch, cmdt_loss, device)
            terms = torch.stack([loss, ce, cmdt]).detach().double()
            not_finite = distributed.device_sum((~torch.isfinite(loss)).double().reshape(1), where)
            check(lagged.push(step, torch.cat([terms, not_finite])))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            n = len(batch.labels)
            sums += terms * n
            count += n
        check(lagged.pop())
    loss_sum, ce_sum, cmdt_sum, total = distributed.all_sum(sums.tolist() + [count], device, where)
    total = max(total, 1.0)
    return {"train_loss": loss_sum / total, "train_ce": ce_sum / total, "train_cmdt": cmdt_sum / total}


@dataclass
class Predictions:
    """Gathered predictions for a whole evaluation set, in dataset order, and its mean cross-entropy."""

    labels: np.ndarray
    predicted: np.ndarray
    loss: float


@torch.no_grad()
def evaluate(config: TrainConfig, model: nn.Module, norm: InputNorm, loader: DataLoader, size: int,
             device: torch.device, where: distributed.Dist) -> Predictions:
    """Predict this rank's share, gather every rank's, and return them for all `size` utterances.

    The losses and predictions stay on the device until the last batch is queued: reading each batch's on the
    host would make it wait for that batch, and the GPU idle while the next one is collated and launched."""
    model.eval()
    indices, labels, predicted, losses = [], [], [], []
    shape = None
    with out_of_memory_as(lambda err: out_of_memory(err, config, device, f"evaluating {size} clips", shape,
                                                    training=False)):
        for raw, batch in device_batches(loader, norm, device):
            shape = tuple(batch.features.shape[:2])
            with autocast(config, device):
                logits = model(batch.features, batch.lengths).logits.float()
            losses.append(F.cross_entropy(logits, batch.labels, reduction="none"))
            predicted.append(logits.argmax(dim=1))
            labels.append(raw["labels"])
            indices.append(raw["indices"])
    local = [torch.cat(t).cpu().numpy() if t else np.zeros(0) for t in (indices, labels, predicted, losses)]
    parts = distributed.all_gather(local, where)
    index, label, pred, loss = (np.concatenate([p[i] for p in parts]) for i in range(4))
    order = np.argsort(index, kind="stable")
    if len(order) != size or not np.array_equal(index[order], np.arange(size)):
        raise TrainingError(f"evaluation gathered {len(order)} predictions for {size} utterances")
    return Predictions(label[order].astype(np.int64), pred[order].astype(np.int64), float(loss.mean()))
