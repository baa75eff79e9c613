"""The sweep's folds on warm Ray Train workers: a lane is one Train run (`lane_trainer`) whose workers train the
folds handed to them one after another, trial after trial, so Train's start-up (worker processes, imports, the
process group: ~7 s on an idle 2-core machine, ~18 s beside a training fold; on GPUs also mamba-ssm's Triton JIT)
is paid once per fold slot of the sweep instead of once per fold or per trial.

The sweep's `FoldDispatcher` actor (one per sweep, started by its driver on its node and named after the sweep)
owns the lanes: it starts `lanes` of them with the sweep, before Tune has its first trial, lends them to trials
(`acquire`, `release`), and runs each lane's Train run in a thread of its own. A trial hands its folds out through
it: it assigns a lane its next fold only after Tune's scheduler has judged the previous one (a pruned trial starts
no new fold), and a lane's workers `claim` their fold from it. Each fold keeps its own MLflow run and its fault
tolerance: the lane's Train run reports each checkpoint (every epoch's, or one a minute with `checkpoint_seconds`),
marked with the fold run it belongs to, and a worker group that Train restarts (a lost node, a killed worker)
claims the fold it was on and resumes it from the last checkpoint, up to `--fold-retries` times per fold
(`begin`); then that fold fails, and its trial with it.

A trial that ends, fails or is stopped by Tune gives its lanes back; one whose driver is gone (a killed process)
is noticed by the dispatcher, which watches each trial's driver actor. A fold still running for a trial that gave
its lanes back is abandoned at its next epoch (`wanted`). A lane no trial asks for within `idle_seconds` ends,
and so frees its CPUs/GPUs; `close` ends them all when the sweep is over.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger(__name__)

STOP = None  # what `claim` returns when the lane is to end
WATCH_SECONDS = 1.0  # how often the dispatcher looks for gone drivers and idle lanes
IDLE_SECONDS = 20.0  # how long a lane no trial uses keeps its workers


@dataclass
class Lane:
    """One Train run of warm workers, as the dispatcher sees it."""

    name: str
    trial: str | None = None  # the trial it serves now
    tasks: list[dict[str, Any]] = field(default_factory=list)  # that trial's folds assigned to it, in order
    ready: bool = False  # its workers have claimed once
    idle_since: float | None = None
    stopped: bool = False
    ended: str | None = None  # why its Train run ended, once it has


class FoldDispatcher:
    """The sweep's lanes and fold queues, a Ray async actor living as long as the sweep's driver (which owns it).

    `fit_lane(name, dispatcher)` runs lane `name`'s Train run to its end (`trial.fit_lane`). A task is one fold
    run: a dict with its `run_id` (what identifies it here), `key` (the fold in its trial) and `trial`. Per lane,
    `claim(lane, last)` returns the lane's newest task that is neither `last` (the one the caller just trained or
    dropped) nor finished nor cancelled, waiting for one, or STOP once the lane is to end; a worker group that
    Train restarted passes `last=None` and gets the fold it was on, if unfinished. Finished folds' outcomes, and
    folds that failed for good, wait per trial for `next_result`.
    """

    def __init__(self, fit_lane: Callable[[str, Any], Any] | None = None, fold_retries: int = 0,
                 idle_seconds: float = IDLE_SECONDS, lanes: int = 0) -> None:
        self._fit_lane = fit_lane
        self._fold_retries = fold_retries
        self._idle_seconds = idle_seconds
        self._lanes: dict[str, Lane] = {}
        self._started = 0
        self._capacity = lanes  # lanes the sweep keeps at most (0: no limit), known before any call (`start`)
        self._waiting: list[tuple[int, int]] = []  # trials waiting for lanes: (order, arrival)
        self._tickets = itertools.count()
        self._threads: list[threading.Thread] = []
        self._tasks: dict[str, tuple[str, dict[str, Any]]] = {}  # run id -> (lane, task) while its trial holds it
        self._holding: set[str] = set()  # trials holding lanes
        self._finished: set[str] = set()  # run ids whose outcome (or failure) went to their trial
        self._cancelled: set[str] = set()  # run ids of folds whose trial gave its lanes back first
        self._attempts: Counter[str] = Counter()
        self._errors: dict[str, str] = {}  # run id -> the last error a worker reported for it
        self._changed = asyncio.Condition()
        self._results: dict[str, asyncio.Queue] = {}
        self._drivers: dict[str, str] = {}  # trial id -> its driver's actor id
        self._groups: dict[str, Any] = {}  # lane -> its controller's placement group (`keep_placement_group`)
        self._watcher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> list[str]:
        """Start the sweep's lanes now, idle, before any trial asks (their start-up overlaps Tune's): as many as its
        limit leaves room for (a trial that asked first has started its own)."""
        async with self._changed:
            return [self._new_lane().name for _ in range(max(0, self._room()))]

    async def acquire(self, trial_id: str, count: int, driver: str | None = None, order: int = 0) -> list[str]:
        """Lend `count` lanes to the trial; `driver` is the trial's actor id, watched so that a trial whose process is
        gone gives its lanes back. Without a lane limit (the constructor's `lanes`): idle lanes first, new ones for
        the rest. With one, trials wait in turn (`order`: Tune's trial number, then arrival) for warm lanes, or for
        room to start new ones, so they train in the order Tune started them whatever order they got here in."""
        async with self._changed:
            if driver is not None:
                self._drivers[trial_id] = driver
            self._ensure_watcher()
            ticket = (order, next(self._tickets))
            self._waiting.append(ticket)
            try:
                while (lent := self._lendable(ticket, count)) is None:
                    await self._changed.wait()
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()
            lent += [self._new_lane() for _ in range(count - len(lent))]
            for lane in lent:
                lane.trial, lane.tasks, lane.idle_since = trial_id, [], None
            self._holding.add(trial_id)
            return [lane.name for lane in lent]

    def _lendable(self, ticket: tuple[int, int], count: int) -> list[Lane] | None:
        """The idle lanes to lend the trial holding `ticket` (new ones make up the rest), or None: it waits."""
        idle = [lane for lane in self._lanes.values() if lane.trial is None and not lane.stopped]
        idle.sort(key=lambda lane: not lane.ready)  # warm ones first
        if not self._capacity:
            return idle[:count]
        if ticket != min(self._waiting):
            return None
        warm = [lane for lane in idle if lane.ready][:count]
        return warm if len(warm) + self._room() >= count else None

    def _room(self) -> int:
        """Lanes the limit leaves room to start (negative past it)."""
        return self._capacity - sum(not lane.stopped for lane in self._lanes.values())

    async def release(self, trial_id: str) -> None:
        """The trial is done with its lanes (ended, failed, stopped): they wait for the next trial, and folds still
        running for it are abandoned at their next epoch."""
        async with self._changed:
            for lane in self._lanes.values():
                if lane.trial != trial_id:
                    continue
                for task in lane.tasks:
                    if task["run_id"] not in self._finished:
                        self._cancelled.add(task["run_id"])
                    self._tasks.pop(task["run_id"], None)
                lane.trial, lane.tasks = None, []
                lane.idle_since = time.monotonic() if lane.ready else None
            for name in [name for name, lane in self._lanes.items() if lane.ended and lane.trial is None]:
                del self._lanes[name]
            self._drivers.pop(trial_id, None)
            self._holding.discard(trial_id)
            results = self._results.pop(trial_id, None)
            self._changed.notify_all()
        if results is not None:
            await results.put(None)  # ends the trial's wait for results

    async def assign(self, lane_name: str, task: dict[str, Any]) -> None:
        async with self._changed:
            lane = self._lanes.get(lane_name)
            if lane is None or lane.ended or lane.trial != task["trial"]:
                why = lane.ended if lane is not None and lane.ended else "it is not lent to this trial"
                await self._queue(task["trial"]).put((lane_name, task["key"], None, f"lane {lane_name}: {why}"))
                return
            lane.tasks.append(task)
            self._tasks[task["run_id"]] = (lane_name, task)
            self._changed.notify_all()

    def _next(self, lane: Lane, last: str | None) -> dict[str, Any] | None | bool:
        if lane.stopped:
            return STOP
        newest = lane.tasks[-1]["run_id"] if lane.tasks else None
        if newest is not None and newest != last and newest not in self._finished and newest not in self._cancelled:
            return lane.tasks[-1]
        return False

    async def claim(self, lane_name: str, last: str | None) -> dict[str, Any] | None:
        async with self._changed:
            lane = self._lanes.get(lane_name)
            if lane is None:
                return STOP
            if not lane.ready:
                lane.ready = True
                lane.idle_since = time.monotonic() if lane.trial is None else None
                self._changed.notify_all()  # a trial may be waiting for a warm lane
            while (task := self._next(lane, last)) is False:
                await self._changed.wait()
            return task

    async def begin(self, run_id: str) -> bool:
        """A lane's rank 0 starts an attempt at fold run `run_id`. False if its retries are spent: the fold failed
        for good (its trial hears why) and the lane moves on."""
        async with self._changed:
            if run_id in self._finished or run_id in self._cancelled:
                return False
            self._attempts[run_id] += 1
            if self._attempts[run_id] <= self._fold_retries + 1:
                return True
            error = self._errors.get(run_id, "its Train workers were lost")
            message = f"{error} (tried {self._attempts[run_id] - 1} times; --fold-retries {self._fold_retries})"
            self._finished.add(run_id)
            self._changed.notify_all()
        await self._hand_over(run_id, None, message)
        return False

    async def failed(self, run_id: str, error: str) -> None:
        """A worker's attempt at fold run `run_id` raised `error` (Train restarts the workers; `begin` decides)."""
        self._errors[run_id] = error

    async def wanted(self, run_id: str) -> bool:
        """Whether the fold run's trial still wants it (False once the trial gave its lanes back)."""
        return run_id not in self._cancelled

    async def finish(self, run_id: str, outcome: dict[str, Any]) -> None:
        """Rank 0 trained fold run `run_id`: hand its outcome to the trial's driver (once, however often a
        restarted worker group repeats it)."""
        async with self._changed:
            if run_id in self._finished or run_id in self._cancelled:
                return
            self._finished.add(run_id)
            self._changed.notify_all()
        await self._hand_over(run_id, outcome, None)

    async def next_result(self, trial_id: str) -> tuple[str, str, dict[str, Any] | None, str | None] | None:
        """(lane, fold key, outcome, error) of the trial's next finished or failed fold; None once it gave its lanes
        back."""
        waiting = self._results.get(trial_id)
        if trial_id not in self._holding and (waiting is None or waiting.empty()):
            return None
        return await self._queue(trial_id).get()

    async def lanes(self) -> dict[str, str | None]:
        """Each lane and the trial it serves now (None: idle)."""
        return {name: lane.trial for name, lane in self._lanes.items() if not lane.ended}

    async def close(self, timeout: float = 60.0) -> None:
        """End every lane (the sweep is over) and wait up to `timeout` s for their Train runs to finish."""
        async with self._changed:
            for lane in self._lanes.values():
                lane.stopped = True
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))

    async def _hand_over(self, run_id: str, outcome: dict[str, Any] | None, error: str | None) -> None:
        if run_id not in self._tasks:  # its trial has given its lanes back
            return
        lane, task = self._tasks[run_id]
        await self._queue(task["trial"]).put((lane, task["key"], outcome, error))

    def _new_lane(self) -> Lane:
        """A new lane; its Train run starts in a thread of its own (none without `fit_lane`: the tests drive it)."""
        import ray

        self._loop = asyncio.get_running_loop()
        lane = Lane(f"lane{self._started}")
        self._started += 1
        self._lanes[lane.name] = lane
        if self._fit_lane is None:
            return lane
        handle = ray.get_runtime_context().current_actor
        thread = threading.Thread(target=self._run, args=(lane.name, handle), name=lane.name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return lane

    def _run(self, name: str, handle: Any) -> None:
        error = None
        try:
            self._fit_lane(name, handle)
        except BaseException as err:  # told to the trial the lane serves
            error = f"{type(err).__name__}: {err}"
            logger.warning("lane %s: its Train run failed: %s", name, error)
        group = self._groups.pop(name, None)
        if error is not None and group is not None:
            _remove_placement_group(group, name)
        asyncio.run_coroutine_threadsafe(self._lane_ended(name, error), self._loop)

    async def keep_placement_group(self, lane: str, group: Any) -> None:
        """Lane `lane`'s controller reserved placement group `group` (`hand_placement_group`): if its Train run fails,
        the group is removed here, so that a controller that died without removing it holds no CPUs or GPUs a new
        lane needs."""
        self._groups[lane] = group

    async def _lane_ended(self, name: str, error: str | None) -> None:
        """Lane `name`'s Train run is over: the folds it had not finished fail, with `error`."""
        async with self._changed:
            lane = self._lanes.get(name)
            if lane is None:
                return
            lane.stopped = True
            lane.ended = error or "its Train run ended"
            unfinished = [t["run_id"] for t in lane.tasks if t["run_id"] not in self._finished | self._cancelled]
            self._finished.update(unfinished)
            if lane.trial is None:
                del self._lanes[name]
            self._changed.notify_all()
        for run_id in unfinished:
            await self._hand_over(run_id, None, lane.ended)

    def _ensure_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                await self._release_gone_trials()
                await self._stop_idle_lanes()
            except Exception as err:  # keep watching; a GCS hiccup is not the end of the sweep
                logger.warning("could not check the trials' drivers: %s", err)

    async def _release_gone_trials(self) -> None:
        from ray._private.state import actors

        for trial_id, actor_id in list(self._drivers.items()):
            state = await asyncio.to_thread(actors, actor_id)
            if state.get("State") == "DEAD":
                logger.info("trial %s: its driver is gone; its lanes wait for the next trial", trial_id)
                await self.release(trial_id)

    async def _stop_idle_lanes(self) -> None:
        async with self._changed:
            now = time.monotonic()
            for lane in self._lanes.values():
                if lane.trial is None and lane.idle_since is not None and now - lane.idle_since > self._idle_seconds:
                    lane.stopped = True
                    self._changed.notify_all()

    def _queue(self, trial_id: str) -> asyncio.Queue:
        return self._results.setdefault(trial_id, asyncio.Queue())


_STARTED: list[Any] = []  # the driver keeps its dispatcher's handle for the sweep's lifetime


def start_dispatcher(sweep_id: str, fit_lane: Callable[[str, Any], Any] | None = None, lanes: int = 0,
                     fold_retries: int = 0, idle_seconds: float = IDLE_SECONDS, wait: bool = True) -> str:
    """Start the sweep's dispatcher on this (the driver's) node with `lanes` lanes warming up (and at most that many:
    0, no limit); returns the name trials find it by. With `wait=False` it returns at once: the actor's process start
    and imports (~2 s on 2 cores) overlap the driver's next steps and Tune's start, and a trial that asks for lanes
    first is answered after the actor's constructor, so it finds the limit in place."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = f"tfmamba-folds-{sweep_id}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    dispatcher = ray.remote(FoldDispatcher).options(name=name, num_cpus=0, scheduling_strategy=here).remote(
        fit_lane, fold_retries, idle_seconds, lanes)
    _STARTED.append(dispatcher)
    if lanes:
        starting = dispatcher.start.remote()
        if wait:
            ray.get(starting)
    return name


def hand_placement_group(dispatcher: Any, lane: str, group: Any) -> None:
    """Called in lane `lane`'s Train controller (`lane_trainer`'s `keeper`): give its placement group to the
    sweep's dispatcher to remove should the controller die first."""
    import ray

    ray.get(dispatcher.keep_placement_group.remote(lane, group))


def _remove_placement_group(group: Any, lane: str) -> None:
    """Remove the placement group of lane `lane`, whose Train run failed (gone already if its controller removed it)."""
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(group)  # a no-op where its controller removed it
        logger.info("lane %s: its placement group %s is removed", lane, group.id.hex())
    except Exception as err:
        logger.warning("lane %s: could not remove its placement group %s: %s", lane, group.id.hex(), err)


def close_dispatcher(timeout: float = 60.0) -> None:
    """End the lanes of the sweep this driver started (its trials are over), waiting up to `timeout` s for their
    Train runs to finish (0: tell them and go on; they wind down while the sweep writes its summary)."""
    import ray

    for dispatcher in _STARTED:
        try:
            ray.get(dispatcher.close.remote(timeout))
        except Exception as err:  # the sweep's results are safe; Ray ends the lanes with the driver
            logger.warning("could not end the sweep's lanes cleanly: %s", err)


@dataclass(frozen=True)
class LaneEvent:
    """What the trial's driver waits for: a fold finished on a lane (`outcome`), or failed for good (`error`)."""

    lane: str
    key: str
    outcome: dict[str, Any] | None = None
    error: str | None = None


class FoldLanes:
    """A trial driver's side: `lanes` lanes lent by the sweep's dispatcher `dispatcher_name` (waiting its turn,
    `order`, for them), folds assigned through it, and the `LaneEvent`s to wait for; `release` gives them back."""

    def __init__(self, trial_id: str, lanes: int, dispatcher_name: str, order: int = 0) -> None:
        import ray

        self.trial_id = trial_id
        self.busy: dict[str, str] = {}  # lane -> the fold key it trains
        self._events: queue.Queue[LaneEvent] = queue.Queue()
        self.dispatcher = ray.get_actor(dispatcher_name)
        ray.get(self.dispatcher.release.remote(trial_id))  # what an earlier attempt of this trial left there
        self.names: list[str] = ray.get(self.dispatcher.acquire.remote(
            trial_id, lanes, ray.get_runtime_context().get_actor_id(), order))
        self._released = False
        threading.Thread(target=self._pump, name="lane-results", daemon=True).start()

    def assign(self, lane: str, task: dict[str, Any]) -> None:
        import ray

        self.busy[lane] = task["key"]
        ray.get(self.dispatcher.assign.remote(lane, task | {"trial": self.trial_id}))

    def next_event(self) -> LaneEvent:
        event = self._events.get()
        self.busy.pop(event.lane, None)
        return event

    def release(self) -> None:
        """Give the lanes back to the sweep (once; folds still running are abandoned)."""
        import ray

        if not self._released:
            self._released = True
            ray.get(self.dispatcher.release.remote(self.trial_id))

    def _pump(self) -> None:
        import ray

        while True:
            try:
                item = ray.get(self.dispatcher.next_result.remote(self.trial_id))
            except Exception:  # the sweep is ending
                return
            if item is None:
                return
            self._events.put(LaneEvent(*item))


def claim(dispatcher: Any, lane: str, last: str | None) -> dict[str, Any] | None:
    """A worker's next fold task on `lane` (see `FoldDispatcher.claim`), or STOP."""
    import ray

    return ray.get(dispatcher.claim.remote(lane, last))
