"""Pause points: a no-op unless a test listens; when one does, the stage waits for its answer."""

from __future__ import annotations

import threading

from pause_points import PausePoint

from vreid.fault_points import ENV_VAR, pause_point


def test_no_listener_is_a_no_op(monkeypatch, tmp_path):
    pause_point("nobody.listens", x=1)  # the point's socket does not exist
    monkeypatch.delenv(ENV_VAR)
    pause_point("nobody.listens", x=1)


def test_stage_waits_until_released():
    passed = threading.Event()

    def stage():
        pause_point("unit.point", model="m", epoch=3)
        passed.set()

    with PausePoint("unit.point") as point:
        th = threading.Thread(target=stage)
        th.start()
        arrival = point.wait_for(model="m")
        assert arrival.info["epoch"] == 3 and arrival.info["point"] == "unit.point"
        assert not passed.is_set(), "the stage waits for the answer"
        arrival.release()
        th.join()
    assert passed.is_set()


def test_leaving_the_block_lets_waiting_stages_go():
    done = []
    with PausePoint("unit.exit") as point:
        threads = [threading.Thread(target=lambda: (pause_point("unit.exit"), done.append(1))) for _ in range(2)]
        for th in threads:
            th.start()
        held = point.next()  # one accepted and held, one waiting to be accepted: both go on at the exit
    for th in threads:
        th.join()
    assert len(done) == 2 and held.conn.fileno() < 0


def test_a_test_can_make_the_stage_allocate():
    from vreid import fault_points

    def stage():
        pause_point("unit.alloc")

    fault_points._held.clear()
    with PausePoint("unit.alloc") as point:
        th = threading.Thread(target=stage)
        th.start()
        point.next().allocate(3 << 20)
        th.join()
    assert [len(b) for b in fault_points._held] == [3 << 20] and fault_points._held[0][-1] == 1
    fault_points._held.clear()
