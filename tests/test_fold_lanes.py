"""The sweep's fold dispatcher: lanes lent to trial after trial, what their workers claim (also after Train
restarted them), folds dropped when their trial gives its lanes back, retries per fold, idle lanes ending."""

from __future__ import annotations

import asyncio

import pytest

from orchestration import fold_lanes
from orchestration.fold_lanes import STOP, FoldDispatcher


async def claimed(dispatcher: FoldDispatcher, lane: str, last: str | None, wait: float = 0.2):
    """What `claim` returns within `wait` seconds: the task's run id, STOP, or "waiting"."""
    try:
        task = await asyncio.wait_for(dispatcher.claim(lane, last), wait)
    except TimeoutError:
        return "waiting"
    return task if task is STOP else task["run_id"]


def fold(trial: str, key: str) -> dict:
    return {"trial": trial, "key": key, "run_id": f"{trial}-{key}"}


def test_a_lane_trains_its_folds_in_order_and_a_restart_resumes_the_unfinished_one() -> None:
    async def scenario() -> None:
        dispatcher = FoldDispatcher()
        a, b = await dispatcher.acquire("t1", 2)
        assert await claimed(dispatcher, a, None) == "waiting"  # nothing assigned yet
        await dispatcher.assign(a, fold("t1", "1"))
        await dispatcher.assign(b, fold("t1", "2"))
        assert await claimed(dispatcher, a, None) == "t1-1" and await claimed(dispatcher, b, None) == "t1-2"
        assert await claimed(dispatcher, a, "t1-1") == "waiting"  # rank 1 done with fold 1, no verdict yet
        assert await claimed(dispatcher, a, None) == "t1-1"  # a restarted worker group: fold 1 is unfinished
        await dispatcher.finish("t1-1", {"ua": 0.5})
        await dispatcher.finish("t1-1", {"ua": 0.6})  # a restarted group finishing it again: handed over once
        assert await dispatcher.next_result("t1") == (a, "1", {"ua": 0.5}, None)
        assert await claimed(dispatcher, a, None) == "waiting"  # restarted after finishing: waits for the next
        await dispatcher.assign(a, fold("t1", "3"))
        assert await claimed(dispatcher, a, "t1-1") == "t1-3" and await claimed(dispatcher, a, None) == "t1-3"
        await dispatcher.close(0)
        assert await claimed(dispatcher, a, "t1-3") is STOP and await claimed(dispatcher, b, None) is STOP

    asyncio.run(scenario())


def test_lanes_pass_from_trial_to_trial_and_a_given_back_fold_is_dropped() -> None:
    async def scenario() -> None:
        dispatcher = FoldDispatcher()
        (lane,) = await dispatcher.acquire("t1", 1)
        await dispatcher.assign(lane, fold("t1", "1"))
        assert await claimed(dispatcher, lane, None) == "t1-1"
        assert await dispatcher.wanted("t1-1")
        waiting = asyncio.create_task(dispatcher.next_result("t1"))
        await dispatcher.release("t1")  # Tune stopped t1 mid-fold
        assert await asyncio.wait_for(waiting, 1) is None  # its driver stops waiting for results
        assert not await dispatcher.wanted("t1-1")  # the worker drops the fold at its next epoch
        await dispatcher.finish("t1-1", {"ua": 0.5})  # or finishes it: nobody gets it
        assert await claimed(dispatcher, lane, "t1-1") == "waiting"  # idle, not stopped
        assert await dispatcher.acquire("t2", 1) == [lane]  # the next trial gets the warm lane
        await dispatcher.assign(lane, fold("t2", "1"))  # the same fold of another trial is another task
        assert await claimed(dispatcher, lane, "t1-1") == "t2-1"
        await dispatcher.finish("t2-1", {"ua": 0.7})
        assert await dispatcher.next_result("t2") == (lane, "1", {"ua": 0.7}, None)
        assert await dispatcher.next_result("t1") is None  # given back: nothing more for t1
        await dispatcher.assign(lane, fold("t1", "2"))  # a lane the trial no longer holds
        assert (await dispatcher.next_result("t1"))[3] == f"lane {lane}: it is not lent to this trial"
        assert len(await dispatcher.acquire("t3", 1)) == 1 and len(await dispatcher.lanes()) == 2  # a new one


def test_trials_get_warm_lanes_in_tunes_order_and_wait_while_every_lane_is_lent() -> None:
    async def scenario() -> None:
        dispatcher = FoldDispatcher(lanes=2)
        a, b = await dispatcher.start()  # no fit_lane here: two lanes whose workers the test plays
        second = asyncio.create_task(dispatcher.acquire("t2", 1, order=2))  # got here first
        first = asyncio.create_task(dispatcher.acquire("t1", 1, order=1))
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()  # the lanes are still starting
        workers = [asyncio.create_task(dispatcher.claim(a, None))]  # lane a's workers are up
        assert await asyncio.wait_for(first, 1) == [a]  # the lower trial number goes first
        await asyncio.sleep(0.05)
        assert not second.done()
        workers.append(asyncio.create_task(dispatcher.claim(b, None)))
        assert await asyncio.wait_for(second, 1) == [b]
        third = asyncio.create_task(dispatcher.acquire("t3", 1, order=3))
        await asyncio.sleep(0.05)
        assert not third.done()  # every lane is lent: a new one would wait for a CPU an old one holds
        await dispatcher.release("t1")
        assert await asyncio.wait_for(third, 1) == [a]
        for worker in workers:
            worker.cancel()

    asyncio.run(scenario())


def test_a_trial_that_asks_before_the_lanes_start_finds_the_limit_in_place() -> None:
    """The driver does not wait for `start`: a trial driver's call may reach the dispatcher first. It starts its
    lane itself, `start` only the rest, and the sweep never holds more lanes than its limit."""
    async def scenario() -> None:
        dispatcher = FoldDispatcher(lanes=2)
        [first] = await asyncio.wait_for(dispatcher.acquire("t1", 1, order=1), 1)
        assert await dispatcher.start() == ["lane1"] and first == "lane0"
        worker = asyncio.create_task(dispatcher.claim("lane1", None))  # lane1's workers are up
        assert await asyncio.wait_for(dispatcher.acquire("t2", 1, order=2), 1) == ["lane1"]
        third = asyncio.create_task(dispatcher.acquire("t3", 1, order=3))
        await asyncio.sleep(0.05)
        assert not third.done() and await dispatcher.start() == []  # both lanes are lent; none more
        third.cancel()
        worker.cancel()

    asyncio.run(scenario())


def test_a_fold_gets_its_retries_then_fails_with_its_error_and_the_lane_moves_on() -> None:
    async def scenario() -> None:
        dispatcher = FoldDispatcher(fold_retries=1)
        (lane,) = await dispatcher.acquire("t1", 1)
        await dispatcher.assign(lane, fold("t1", "1"))
        for _ in range(2):  # the first attempt and its one retry
            assert await claimed(dispatcher, lane, None) == "t1-1" and await dispatcher.begin("t1-1")
            await dispatcher.failed("t1-1", "TrainingError: the training loss is not finite")
        assert await claimed(dispatcher, lane, None) == "t1-1" and not await dispatcher.begin("t1-1")
        lane_, key, outcome, error = await dispatcher.next_result("t1")
        assert (lane_, key, outcome) == (lane, "1", None)
        assert error == "TrainingError: the training loss is not finite (tried 2 times; --fold-retries 1)"
        assert await claimed(dispatcher, lane, "t1-1") == "waiting"

    asyncio.run(scenario())


def test_a_lane_whose_train_run_ended_fails_its_unfinished_fold() -> None:
    async def scenario() -> None:
        dispatcher = FoldDispatcher()
        a, b = await dispatcher.acquire("t1", 2)
        await dispatcher.assign(a, fold("t1", "1"))
        await dispatcher._lane_ended(a, "WorkerGroupError: out of memory")
        assert await dispatcher.next_result("t1") == (a, "1", None, "WorkerGroupError: out of memory")
        await dispatcher.assign(a, fold("t1", "2"))
        assert (await dispatcher.next_result("t1"))[3] == f"lane {a}: WorkerGroupError: out of memory"
        await dispatcher.release("t1")
        assert await dispatcher.lanes() == {b: None}  # the ended lane is gone, the other waits

    asyncio.run(scenario())


def test_an_idle_lane_ends_and_a_busy_one_does_not(monkeypatch) -> None:
    monkeypatch.setattr(fold_lanes, "WATCH_SECONDS", 0.05)

    async def scenario() -> None:
        dispatcher = FoldDispatcher(idle_seconds=0.2)
        a, b = await dispatcher.acquire("t1", 2)
        await dispatcher.assign(a, fold("t1", "1"))
        assert await claimed(dispatcher, a, None) == "t1-1" and await claimed(dispatcher, b, None) == "waiting"
        waiting = asyncio.create_task(dispatcher.claim(a, "t1-1"))
        await dispatcher._stop_idle_lanes()
        await asyncio.sleep(0.5)
        assert not waiting.done()  # lent to t1: kept however long it waits
        await dispatcher.release("t1")
        assert await asyncio.wait_for(waiting, 2) is STOP  # no trial asked for it within 0.2 s
        assert await claimed(dispatcher, b, None) is STOP

    asyncio.run(scenario())


@pytest.mark.slow
def test_lanes_outlive_their_trials_and_a_killed_trials_lane_serves_the_next(monkeypatch) -> None:
    """Real Ray: the dispatcher starts a lane (a stand-in for its Train run, holding a CPU in its own process),
    lends it to a trial's driver actor; the trial is killed (Tune stopping it) mid-fold: the lane drops the fold
    and serves the next trial in the same process; unused, it ends and its CPU comes back."""
    import time

    import ray

    from orchestration.fold_lanes import FoldLanes, close_dispatcher, start_dispatcher
    from orchestration.ray_cluster import start_private_ray

    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the dispatcher runs `stand_in_lane`
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    start_private_ray(2, {}, {})
    try:
        name = start_dispatcher("test", stand_in_lane, lanes=1, idle_seconds=3)

        @ray.remote(num_cpus=0)
        class Trial:  # a trial's driver
            def run(self, trial: str, key: str) -> tuple[str, str, int]:
                lanes = FoldLanes(trial, 1, name)
                lanes.assign(lanes.names[0], {"key": key, "run_id": f"{trial}-{key}"})
                event = lanes.next_event()
                lanes.release()
                return event.lane, event.outcome["pid"], event.outcome["trained"]

            def start(self, trial: str) -> None:
                self.lanes = FoldLanes(trial, 1, name)
                self.lanes.assign(self.lanes.names[0], {"key": "1", "run_id": f"{trial}-slow"})

        stopped = Trial.remote()
        ray.get(stopped.start.remote("t1"))
        deadline = time.monotonic() + 30
        while ray.get(ray.get_actor(name).lanes.remote()) != {"lane0": "t1"} or ray.available_resources().get("CPU", 0) > 1:
            assert time.monotonic() < deadline, "the lane did not start"
            time.sleep(0.2)
        ray.kill(stopped)  # Tune stopping the trial while its fold trains
        lane, pid, trained = ray.get(Trial.remote().run.remote("t2", "1"), timeout=30)
        assert lane == "lane0" and trained == 2  # the same worker: the dropped fold, then t2's
        lane, again, trained = ray.get(Trial.remote().run.remote("t3", "1"), timeout=30)
        assert (lane, again, trained) == ("lane0", pid, 3)
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < 2 or ray.get(ray.get_actor(name).lanes.remote()):
            assert time.monotonic() < deadline, f"the idle lane kept its CPU: {ray.available_resources()}"
            time.sleep(0.5)  # idle for 3 s: the lane ends
        close_dispatcher(5)
    finally:
        ray.shutdown()


def stand_in_lane(lane: str, dispatcher) -> None:
    """A lane's Train run, reduced to one 1-CPU worker process claiming folds: a fold named `*-slow` trains until
    its trial no longer wants it (checked every 0.1 s, as the real worker does after each epoch)."""
    import ray

    @ray.remote(num_cpus=1)
    def worker() -> None:
        import os
        import time

        from orchestration.fold_lanes import claim

        last, trained = None, 0
        while (task := claim(dispatcher, lane, last)) is not None:
            last = task["run_id"]
            while task["run_id"].endswith("-slow") and ray.get(dispatcher.wanted.remote(task["run_id"])):
                time.sleep(0.1)
            trained += 1  # a dropped fold counts: the worker started it
            if ray.get(dispatcher.wanted.remote(task["run_id"])):
                ray.get(dispatcher.finish.remote(task["run_id"], {"pid": os.getpid(), "trained": trained}))

    ray.get(worker.remote())


def test_a_lane_worker_holds_one_feature_cache_at_a_time(tmp_path, request) -> None:
    """A lane trains folds of every row of a grid, and each row of Table II has its own cache: a worker used to
    keep every cache it had opened (all eight on a long grid). `HeldCache` lets the held one go before reading the
    next, and collects the reference cycles that may still hold it (this test failed now and then: a trained fold's
    frames sat in a cycle until the collector ran), so a cache's memory goes with it."""
    import gc
    import weakref

    import torch

    from orchestration.fold_worker import HeldCache
    from tfmamba.training.fold import train_fold
    from test_train import synthetic, tiny_config

    torch.set_num_threads(1)
    gc.disable()  # as when the collector has not run yet: a reference cycle through a fold's frames held its cache
    request.addfinalizer(gc.enable)
    alive: dict[str, weakref.ref] = {}
    folds = {}

    def open_cache(uri: str):
        assert all(ref() is None for ref in alive.values()), "two caches held at once"
        store, manifest, split = synthetic(seed=len(alive))
        alive[uri], folds[uri] = weakref.ref(store), (manifest, split)
        return store

    held = HeldCache(open_cache)
    for row in ("wavlm-large", "hubert-large", "hubert-large", "wavlm-large"):
        store = held.get(row)
        manifest, split = folds[row]
        train_fold(tiny_config(epochs=1), split, store, manifest=manifest, out_dir=tmp_path / row, progress=False)
        del store
    assert list(alive) == ["wavlm-large", "hubert-large"] and held.uri == "wavlm-large"
    assert alive["wavlm-large"]() is held.store  # read again: the first reading was let go
