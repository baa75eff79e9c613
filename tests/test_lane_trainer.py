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


def wait_for_stop(config: dict) -> None:
    """A lane loop that says it runs (a file), then holds its worker and its CPU until the lane is killed (120 s)."""
    import time

    Path(config["running"]).touch()
    time.sleep(120)


def blocking_lane(running: str, lane: str, dispatcher) -> None:
    """A sweep lane's Train run on the private Ray, as `trial.fit_lane` builds it, with a loop that only waits."""
    from functools import partial

    import ray.train

    from orchestration.fold_lanes import hand_placement_group

    trainer = lane_trainer(1, local=True, keeper=partial(hand_placement_group, dispatcher, lane))(
        wait_for_stop, train_loop_config={"running": running}, scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name=lane, storage_path=str(Path(running).parent / "storage")))
    trainer.fit()


def test_a_lane_whose_controller_dies_gives_its_cpu_back_through_the_dispatcher(tmp_path, monkeypatch) -> None:
    """On the private Ray a lane's placement group goes to the sweep's dispatcher, not to a cleaner actor of its own;
    when the lane's Train controller is SIGKILLed (it cannot remove the group itself), the dispatcher removes the
    group, so the CPU a new lane needs comes back."""
    import os
    import signal
    import sys
    import time
    from functools import partial

    import ray
    from ray import cloudpickle
    from ray._private.state import actors

    from orchestration.fold_lanes import close_dispatcher, start_dispatcher
    from orchestration.ray_cluster import start_private_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the dispatcher runs `blocking_lane`
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    start_private_ray(2, {}, {})
    try:
        running = tmp_path / "running"
        start_dispatcher("pg", partial(blocking_lane, str(running)), lanes=1)

        def live(kind: str) -> list[dict]:
            return [a for a in actors().values() if a["ActorClassName"] == kind and a["State"] == "ALIVE"]

        deadline = time.monotonic() + 90
        while not running.exists():  # its worker group is started: the group was handed over
            assert time.monotonic() < deadline, f"the lane did not start: {ray.available_resources()}"
            time.sleep(0.2)
        assert not live("PlacementGroupCleaner")
        [controller] = live("TrainController")
        os.kill(controller["Pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < 2:
            assert time.monotonic() < deadline, f"the dead lane kept its CPU: {ray.available_resources()}"
            time.sleep(0.2)
        close_dispatcher(5)
    finally:
        ray.shutdown()
