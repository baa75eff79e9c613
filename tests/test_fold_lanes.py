"""The sweep's fold dispatcher: what a lane's workers claim, also after Train restarted them."""

from __future__ import annotations

import asyncio

from orchestration.fold_lanes import STOP, FoldDispatcher, lane_name


async def claimed(dispatcher: FoldDispatcher, lane: str, last: str | None, wait: float = 0.2):
    """What `claim` returns within `wait` seconds, or "waiting"."""
    try:
        task = await asyncio.wait_for(dispatcher.claim(lane, last), wait)
    except TimeoutError:
        return "waiting"
    return task if task is STOP else task["key"]


def test_a_lane_trains_its_folds_in_order_and_a_restart_resumes_the_unfinished_one() -> None:
    a, b = lane_name("t1", 0), lane_name("t1", 1)

    async def scenario() -> None:
        dispatcher = FoldDispatcher()
        assert await claimed(dispatcher, a, None) == "waiting"  # nothing assigned yet
        await dispatcher.assign(a, {"key": "1"})
        await dispatcher.assign(b, {"key": "2"})
        assert await claimed(dispatcher, a, None) == "1" and await claimed(dispatcher, b, None) == "2"
        assert await claimed(dispatcher, a, "1") == "waiting"  # rank 1 done with fold 1, no verdict yet
        assert await claimed(dispatcher, a, None) == "1"  # a restarted worker group: fold 1 is unfinished
        await dispatcher.finish(a, "1", {"ua": 0.5})
        await dispatcher.finish(a, "1", {"ua": 0.6})  # a restarted group finishing it again: handed over once
        assert await dispatcher.next_result("t1") == (a, "1", {"ua": 0.5})
        assert await claimed(dispatcher, a, None) == "waiting"  # restarted after finishing: waits for the next
        await dispatcher.assign(a, {"key": "3"})
        assert await claimed(dispatcher, a, "1") == "3" and await claimed(dispatcher, a, None) == "3"
        await dispatcher.finish(a, "3", {})
        await dispatcher.stop(a)
        assert await claimed(dispatcher, a, "3") is STOP and await claimed(dispatcher, a, None) is STOP
        assert await claimed(dispatcher, b, "2") == "waiting"  # the other lane is not stopped

    asyncio.run(scenario())


def test_trials_are_kept_apart_and_forgotten() -> None:
    async def scenario() -> None:
        dispatcher = FoldDispatcher()
        await dispatcher.assign(lane_name("t1", 0), {"key": "1"})
        await dispatcher.assign(lane_name("t2", 0), {"key": "1"})
        await dispatcher.finish(lane_name("t2", 0), "1", {"trial": 2})
        assert await claimed(dispatcher, lane_name("t1", 0), None) == "1"  # the same fold of another trial is not it
        waiting = asyncio.create_task(dispatcher.next_result("t1"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and await dispatcher.next_result("t2") == (lane_name("t2", 0), "1", {"trial": 2})
        waiting.cancel()
        await dispatcher.forget("t1")
        assert await claimed(dispatcher, lane_name("t1", 0), None) == "waiting"

    asyncio.run(scenario())


def test_a_waiting_worker_wakes_on_its_next_fold() -> None:
    lane = lane_name("t1", 0)

    async def scenario() -> None:
        dispatcher = FoldDispatcher()
        await dispatcher.assign(lane, {"key": "1"})
        await dispatcher.finish(lane, "1", {})
        waiting = asyncio.create_task(dispatcher.claim(lane, "1"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await dispatcher.assign(lane, {"key": "2"})
        assert (await asyncio.wait_for(waiting, 1))["key"] == "2"

    asyncio.run(scenario())


def test_a_stopped_trials_placement_groups_are_released(monkeypatch) -> None:
    """A trial's driver ends with its lanes' Train controllers, whose placement groups belong to the sweep's
    job: the dispatcher removes them once the driver is gone, so the CPUs go to the next trial."""
    import time

    import ray

    from orchestration.fold_lanes import register_placement_group, start_dispatcher
    from orchestration.ray_cluster import start_private_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    start_private_ray(2, {}, {})
    try:
        name = start_dispatcher("test")

        @ray.remote(num_cpus=1)
        class Worker:  # a Train worker: runs in its lane's placement group and says which one
            def register(self, lane: str) -> None:
                register_placement_group(ray.get_actor(name), lane)

        @ray.remote(num_cpus=0)
        class Controller:  # a Train controller: makes the placement group, owned by the trial's driver
            def start(self, lane: str) -> None:
                from ray.util.placement_group import placement_group
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                group = placement_group([{"CPU": 1}])
                ray.get(group.ready())
                self.worker = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote()
                ray.get(self.worker.register.remote(lane))

        @ray.remote(num_cpus=0)
        class Trial:  # the trial's driver
            def start(self) -> None:
                ray.get(ray.get_actor(name).watch.remote("t1", ray.get_runtime_context().get_actor_id()))
                self.controller = Controller.remote()
                ray.get(self.controller.start.remote(lane_name("t1", 0)))

        trial = Trial.remote()
        ray.get(trial.start.remote())
        assert ray.available_resources().get("CPU", 0) <= 1  # the lane's placement group holds a CPU
        ray.kill(trial)  # Tune stopping the trial
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < 2:
            assert time.monotonic() < deadline, f"the CPU was not released: {ray.available_resources()}"
            time.sleep(0.5)
    finally:
        ray.shutdown()
