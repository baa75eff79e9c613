"""The Ray Train trainer class a lane runs (`trial.fit_lane`): Train's own, less what a lane never uses.

On 2 cores every process started with the sweep competes with the lanes' start-up, and the lane's start is a chain
(the dispatcher builds the trainer, its Train controller starts, then its workers), so each part taken away is
wall-clock time before the first fold trains:

- a lane of one worker is a plain `DataParallelTrainer`: no torch process group for a group of one, so the
  dispatcher and the lane's Train controller never import torch (~1.7 s of CPU each; the controller unpickles
  `TorchConfig`, whose module imports torch). `train_fold` then runs as on the CLI, without a DDP wrapper around its
  single process (the same updates: DDP averages gradients over one rank). Several workers: `TorchTrainer`.
- no Ray Data callback: it starts a `DatasetManager` actor (a process, ~1.5 s of CPU) per worker group even with no
  `datasets`, and a lane reads its folds from the feature cache itself.
- `local=True` (the sweep's private one-machine Ray): the controller sends no resource requests to Ray Data's
  autoscaling coordinator, an actor process started on the first request that the controller waits for (~1.5 s on
  2 cores); a one-machine Ray has no autoscaler to tell. A joined cluster keeps them: they make it add nodes.
- `keeper` (given on the private Ray): the worker group's placement group is handed to `keeper` (the sweep's
  dispatcher, a process that already runs), which removes it if the controller dies without doing so, instead of to
  the detached cleaner actor Train starts per run (a process importing Ray Train and pandas, ~1.4 s of CPU while the
  lanes start, whose registration the worker group's start waits for).

The last three rest on private Ray 2.60 API; where it cannot be found the trainer keeps that part as it is.
"""

from __future__ import annotations

from typing import Any, Callable


def lane_trainer(workers: int, local: bool = False, keeper: Callable[[Any], None] | None = None) -> type:
    """The trainer class of a lane of `workers` workers; `local` on the sweep's private local Ray; `keeper(group)`
    is told each placement group the lane's controller reserves (called in the controller's process)."""
    if workers > 1:
        from ray.train.torch import TorchTrainer as base
    else:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as base
    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:
        DatasetsCallback = None
    quiet_policy = _policy_without_autoscaler() if local else None
    handover = _placement_group_handover(keeper) if keeper is not None else None

    class LaneTrainer(base):
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            if DatasetsCallback is not None and not self.datasets:
                callbacks = [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]
            if handover is not None:
                callbacks = [callback for callback in callbacks if not isinstance(callback, handover.replaces)]
                callbacks.append(handover)
            return callbacks

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            policy = controller_init_kwargs.get("scaling_policy")
            if quiet_policy is not None and type(policy) is quiet_policy.__base__:
                controller_init_kwargs["scaling_policy"] = quiet_policy(policy.scaling_config)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    return LaneTrainer


def _policy_without_autoscaler() -> type | None:
    """Train's fixed scaling policy without its autoscaling-coordinator requests (None where Ray has none)."""
    try:
        from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
    except ImportError:
        return None

    class LocalScalingPolicy(FixedScalingPolicy):
        def after_controller_start(self, train_run_context: Any) -> None:
            return None

        async def before_controller_shutdown(self) -> None:
            return None

        def before_controller_abort(self) -> None:
            return None

        def _maybe_send_resource_request(self) -> None:
            return None

        def _send_resource_request(self) -> None:
            return None

    return LocalScalingPolicy


def _placement_group_handover(keeper: Callable[[Any], None]) -> Any:
    """A worker-group callback telling `keeper` each placement group, in place of Train's cleaner callback (None
    where Ray has neither)."""
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError:
        return None

    class PlacementGroupHandover(WorkerGroupCallback):
        replaces = PlacementGroupCleanerCallback

        def after_worker_group_start(self, worker_group: Any) -> None:
            keeper(worker_group.get_worker_group_state().placement_group_handle.placement_group)

    return PlacementGroupHandover()
