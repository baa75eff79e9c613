"""The trainer a lane runs: a group of one trains without a torch process group and, on the private local Ray,
without Ray Data's autoscaling coordinator; a group of several stays a `TorchTrainer`."""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestration.lane_trainer import lane_trainer


def report_process_group(config: dict) -> None:
    """A lane loop that reports whether torch.distributed was set up for it."""
    import torch.distributed as dist

    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "done").write_text("1")
        ray.train.report({"process_group": int(dist.is_initialized())},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


def test_several_workers_keep_torchs_process_group() -> None:
    from ray.train.torch import TorchTrainer

    assert issubclass(lane_trainer(2), TorchTrainer)
    assert issubclass(lane_trainer(2, local=True), TorchTrainer)
    assert not issubclass(lane_trainer(1), TorchTrainer)


def test_a_one_worker_lane_on_the_private_ray_starts_no_process_group_and_no_autoscaler(tmp_path, monkeypatch) -> None:
    import sys

    import ray
    import ray.train
    from ray import cloudpickle
    from ray._private.state import actors

    from orchestration.ray_cluster import start_private_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers run `report_process_group`
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: Ray's socket paths
    start_private_ray(2, {}, {})
    try:
        trainer = lane_trainer(1, local=True)(
            report_process_group, scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name="lane", storage_path=str(tmp_path / "storage")))
        result = trainer.fit()
        assert result.metrics["process_group"] == 0
        classes = {actor["ActorClassName"] for actor in actors().values()}
        assert "TrainController" in classes, classes
        assert not any("AutoscalingCoordinator" in name or "DatasetManager" in name for name in classes), classes
    finally:
        ray.shutdown()
