"""Data-parallel training with two CPU processes (gloo): every rank sees the same gathered metrics."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_train import Recorder, synthetic, tiny_config
from tfmamba.training.fold import train_fold


def _worker(rank: int, folder: str, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    try:
        store, manifest, fold = synthetic()
        recorder = Recorder()
        result = train_fold(tiny_config(batch_size=8), fold, store, recorder, manifest=manifest,
                            out_dir=f"{folder}/out", progress=False)
        queue.put((rank, result.to_dict(), [(m, str(c) if c else None) for m, c in recorder.calls]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_gather_predictions_and_agree(tmp_path):
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_worker, args=(str(tmp_path), queue), nprocs=2, join=True, start_method="spawn")
    results = dict((rank, (result, calls)) for rank, result, calls in (queue.get(), queue.get()))
    (r0, calls0), (r1, calls1) = results[0], results[1]
    for key in ("best_epoch", "valid", "test", "test_confusion", "history"):
        assert r0[key] == r1[key], key
    _, _, fold = synthetic()
    assert sum(map(sum, r0["test_confusion"])) == len(fold.test)  # each test utterance counted once
    assert [c for _, c in calls0[:-1]] == [str(tmp_path / "out/checkpoints/last")] * 2
    assert [c for _, c in calls1] == [None] * 3
    assert json.loads((tmp_path / "out/metrics.json").read_text())["test"] == r0["test"]


def test_compiled_steps_pad_a_batch_through_ddp(tmp_path, monkeypatch):
    """With several workers per fold the steps call the model through DDP; `CompiledSteps` still asks the model inside
    it how far to pad a batch (a one-process gloo group is enough for DDP; the graph itself is not what is tested)."""
    from test_train import DIM

    from tfmamba.model import TFMamba
    from tfmamba.model_config import ModelConfig
    from tfmamba.training import distributed
    from tfmamba.training.loop import step_module

    config = tiny_config(compile=True)
    model = TFMamba(ModelConfig.from_dict({**config.model.to_dict(), "input_dim": DIM}))
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: net)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        net = distributed.wrap(model, torch.device("cpu"), distributed.current())
        assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
        out = step_module(config, net, torch.device("cpu"))(torch.randn(2, 32, DIM), torch.tensor([32, 20]))
    finally:
        dist.destroy_process_group()
    assert model.compiled_frames(32) == 33 and out.sequence.shape == (2, 32, config.model.d_model)


def _one_rank_out_of_memory(rank: int, folder: str, queue) -> None:
    """Rank 1's second training batch does not fit (the `torch.OutOfMemoryError` CUDA raises); rank 0's fits."""
    from tfmamba.model import TFMamba

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    forward, calls = TFMamba.forward, []

    def small_forward(model, features, lengths=None, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        if rank == 1 and calls.count(True) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return forward(model, features, lengths, *args, **kwargs)

    TFMamba.forward = small_forward
    store, manifest, fold = synthetic()
    recorder, started = Recorder(), time.monotonic()
    try:
        train_fold(tiny_config(batch_size=8), fold, store, recorder, manifest=manifest, out_dir=f"{folder}/out{rank}",
                   progress=False)
        outcome = "finished"
    except Exception as err:  # rank 0's collective fails once rank 1 has gone
        outcome = f"{type(err).__name__}: {err}"
    queue.put((rank, outcome, time.monotonic() - started, [metrics for metrics, _ in recorder.calls]))


@pytest.mark.slow
def test_a_batch_too_big_on_one_rank_fails_it_without_a_collective(tmp_path):
    """Out of memory on one rank alone: the other ranks wait for it inside the step's all-reduce. Its failed fold used
    to report `failed` like a NaN loss, which every rank reaches together; under Ray Train that report is a barrier,
    and the lane hung until the collective's timeout (a sweep with --workers-per-fold 2 sat 10 minutes on it). The
    rank now raises its DeviceMemoryError and calls no reporter, so Ray Train sees the error and restarts the lane."""
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_one_rank_out_of_memory, args=(str(tmp_path), queue), nprocs=2, join=True,
                       start_method="spawn")
    outcomes = {rank: (outcome, seconds, reports) for rank, outcome, seconds, reports in (queue.get(), queue.get())}
    outcome, seconds, reports = outcomes[1]
    assert outcome.startswith("DeviceMemoryError: fold 1 (toy), epoch 1, step 2: out of memory on cpu"), outcome
    assert reports == [] and seconds < 25
    assert outcomes[0][0] != "finished" and not (tmp_path / "out0/metrics.json").exists()
