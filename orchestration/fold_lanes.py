"""A trial's folds on warm Ray Train workers: each fold slot of the trial is one `TorchTrainer` (a lane) whose
workers train the folds handed to them one after another, so a trial pays Train's start-up (worker processes,
imports, the process group: ~11 s on 2 cores) once per lane instead of once per fold.

The trial driver hands out folds through the sweep's `FoldDispatcher` actor (one per sweep, started by its driver
on its node and named after the sweep): it assigns a lane its next fold only after Tune's scheduler has judged the
previous one (a pruned trial starts no new fold), and a lane's workers `claim` their fold from it. Each fold keeps
its own MLflow run and its fault tolerance: the lane's Train run reports a checkpoint per epoch, marked with the
fold it belongs to, and a worker group that Train restarts (a lost node, a killed worker) claims the fold it was
on and resumes it from that checkpoint (`FailureConfig` per lane).

A trial that Tune stops (ASHA) ends with its process, which takes its lanes' Train controllers with it;
the placement groups holding their workers' CPUs/GPUs belong to the sweep's job, and Ray Train's own
cleaner needs the dashboard's state API, which a private local Ray does not run. So the dispatcher
watches each trial's driver actor and removes the placement groups of a trial whose driver is gone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger(__name__)

STOP = None  # what `claim` returns when the lane has no more folds
WATCH_SECONDS = 1.0  # how often the dispatcher looks for trials whose driver is gone


class FoldDispatcher:
    """The sweep's fold queues, a Ray async actor living as long as the sweep's driver (which owns it).

    A lane is named `trial_id:index`. Per lane it keeps the folds assigned in order; `claim(lane, last)` returns
    the lane's newest assignment that is neither `last` (the fold the caller just trained) nor finished, waiting
    for one, or STOP once the lane is stopped. A worker that Train restarted passes `last=None` and gets the fold
    it was on, if unfinished. Finished folds' outcomes wait per trial for `next_result`; `forget` drops a trial.
    `watch` / `placed` record a trial's driver actor and each lane's placement group, for `_release_orphans`.
    """

    def __init__(self) -> None:
        self._assigned: dict[str, list[dict[str, Any]]] = {}
        self._stopped: set[str] = set()
        self._finished: set[tuple[str, str]] = set()  # (lane, fold key)
        self._changed = asyncio.Condition()
        self._results: dict[str, asyncio.Queue] = {}
        self._drivers: dict[str, str] = {}  # trial id -> its driver's actor id
        self._groups: dict[str, str] = {}  # lane -> the placement group id its workers run in
        self._watcher: asyncio.Task | None = None

    async def watch(self, trial_id: str, actor_id: str) -> None:
        self._drivers[trial_id] = actor_id
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_drivers())

    async def placed(self, lane: str, group_id: str) -> None:
        self._groups[lane] = group_id

    async def assign(self, lane: str, task: dict[str, Any]) -> None:
        async with self._changed:
            self._assigned.setdefault(lane, []).append(task)
            self._changed.notify_all()

    async def stop(self, lane: str) -> None:
        async with self._changed:
            self._stopped.add(lane)
            self._changed.notify_all()

    def _next(self, lane: str, last: str | None) -> dict[str, Any] | None | bool:
        assigned = self._assigned.get(lane)
        newest = assigned[-1] if assigned else None
        if newest is not None and newest["key"] != last and (lane, newest["key"]) not in self._finished:
            return newest
        return STOP if lane in self._stopped else False

    async def claim(self, lane: str, last: str | None) -> dict[str, Any] | None:
        async with self._changed:
            while (task := self._next(lane, last)) is False:
                await self._changed.wait()
            return task

    async def finish(self, lane: str, key: str, outcome: dict[str, Any]) -> None:
        """Rank 0 of `lane` trained fold `key`: hand its outcome to the trial's driver (once, however often a
        restarted worker group repeats it)."""
        async with self._changed:
            if (lane, key) in self._finished:
                return
            self._finished.add((lane, key))
            self._changed.notify_all()
        await self._queue(trial_of(lane)).put((lane, key, outcome))

    async def next_result(self, trial_id: str) -> tuple[str, str, dict[str, Any]]:
        return await self._queue(trial_id).get()

    async def forget(self, trial_id: str) -> None:
        """Drop a finished or stopped trial's lanes (their tasks carry utterance lists)."""
        async with self._changed:
            for lane in [lane for lane in self._assigned if trial_of(lane) == trial_id]:
                del self._assigned[lane]
            self._stopped = {lane for lane in self._stopped if trial_of(lane) != trial_id}
            self._finished = {item for item in self._finished if trial_of(item[0]) != trial_id}
            self._results.pop(trial_id, None)
            self._drivers.pop(trial_id, None)
            self._groups = {lane: group for lane, group in self._groups.items() if trial_of(lane) != trial_id}

    async def _watch_drivers(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                await self._release_orphans()
            except Exception as err:  # keep watching; a GCS hiccup is not the end of the sweep
                logger.warning("could not check the trials' drivers: %s", err)

    async def _release_orphans(self) -> None:
        """Remove the placement groups of the lanes of every trial whose driver actor is dead (stopped by Tune or
        lost), so their CPUs/GPUs go to the next trial, and forget the trial."""
        import ray
        from ray._private.state import actors
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        for trial_id, actor_id in list(self._drivers.items()):
            state = await asyncio.to_thread(actors, actor_id)
            if state.get("State") != "DEAD":
                continue
            for lane, group_id in self._groups.items():
                if trial_of(lane) != trial_id:
                    continue
                group = PlacementGroup(PlacementGroupID.from_hex(group_id))
                if ray.util.placement_group_table(group).get("state") != "REMOVED":
                    await asyncio.to_thread(remove_placement_group, group)
                    logger.info("lane %s: its trial's driver is gone; removed placement group %s", lane, group_id)
            await self.forget(trial_id)

    def _queue(self, trial_id: str) -> asyncio.Queue:
        return self._results.setdefault(trial_id, asyncio.Queue())


def lane_name(trial_id: str, index: int) -> str:
    return f"{trial_id}:{index}"


def trial_of(lane: str) -> str:
    return lane.rpartition(":")[0]


_STARTED: list[Any] = []  # the driver keeps its dispatcher's handle for the sweep's lifetime


def start_dispatcher(sweep_id: str) -> str:
    """Start the sweep's dispatcher on this (the driver's) node; returns the name trials find it by."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"tfmamba-folds-{sweep_id}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    _STARTED.append(ray.remote(FoldDispatcher).options(name=name, num_cpus=0, scheduling_strategy=here).remote())
    return name


@dataclass(frozen=True)
class LaneEvent:
    """What the driver waits for: a fold finished on a lane (`key`, `outcome`), or a lane's Train run ended
    (`error` set if it failed for good)."""

    lane: int
    key: str | None = None
    outcome: dict[str, Any] | None = None
    error: BaseException | None = None


class FoldLanes:
    """A trial driver's side: one Train run per lane (`fit_lane(lane, dispatcher)` builds and fits it, in a
    daemon thread, so a trial stopped by the scheduler leaves nothing that keeps its process alive), folds
    assigned through the sweep's dispatcher `dispatcher_name`, and the `LaneEvent`s to wait for."""

    def __init__(self, trial_id: str, lanes: int, dispatcher_name: str, fit_lane: Callable[[int, Any], Any]) -> None:
        import ray

        self.trial_id = trial_id
        self.lanes = lanes
        self.busy: dict[int, str] = {}  # lane -> the fold key it trains
        self._events: queue.Queue[LaneEvent] = queue.Queue()
        self.dispatcher = ray.get_actor(dispatcher_name)
        ray.get(self.dispatcher.forget.remote(trial_id))  # what an earlier attempt of this trial left there
        ray.get(self.dispatcher.watch.remote(trial_id, ray.get_runtime_context().get_actor_id()))
        self._threads = [threading.Thread(target=self._fit, args=(lane, fit_lane), name=f"lane-{lane}", daemon=True)
                         for lane in range(lanes)]
        threading.Thread(target=self._pump, name="lane-results", daemon=True).start()
        for thread in self._threads:
            thread.start()

    def assign(self, lane: int, task: dict[str, Any]) -> None:
        import ray

        self.busy[lane] = task["key"]
        ray.get(self.dispatcher.assign.remote(lane_name(self.trial_id, lane), task))

    def stop(self, lane: int) -> None:
        import ray

        ray.get(self.dispatcher.stop.remote(lane_name(self.trial_id, lane)))

    def next_event(self) -> LaneEvent:
        event = self._events.get()
        if event.key is not None:
            self.busy.pop(event.lane, None)
        return event

    def close(self, timeout: float) -> None:
        """Wait (up to `timeout` s each) for the lanes' Train runs to end once every lane was stopped, then drop
        the trial from the dispatcher."""
        import ray

        for thread in self._threads:
            thread.join(timeout)
        ray.get(self.dispatcher.forget.remote(self.trial_id))

    def _fit(self, lane: int, fit_lane: Callable[[int, Any], Any]) -> None:
        try:
            fit_lane(lane, self.dispatcher)
            self._events.put(LaneEvent(lane))
        except BaseException as err:  # handed to the trial's thread, which raises it
            self._events.put(LaneEvent(lane, error=err))

    def _pump(self) -> None:
        import ray

        while True:
            try:
                lane, key, outcome = ray.get(self.dispatcher.next_result.remote(self.trial_id))
            except Exception:  # the sweep is ending
                return
            self._events.put(LaneEvent(int(lane.rpartition(":")[2]), key, outcome))


def register_placement_group(dispatcher: Any, lane: str) -> None:
    """A lane's worker tells the dispatcher which placement group its worker group runs in (see the module doc)."""
    import ray

    group = ray.util.get_current_placement_group()
    if group is not None:
        ray.get(dispatcher.placed.remote(lane, group.id.hex()))


def claim(dispatcher: Any, lane: str, last: str | None) -> dict[str, Any] | None:
    """A worker's next fold task on `lane` (see `FoldDispatcher.claim`), or STOP."""
    import ray

    return ray.get(dispatcher.claim.remote(lane, last))
