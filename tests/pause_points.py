"""The test side of ``vreid.fault_points``: listen at a named pause point, see who arrives,
and let each one go on (or kill it while it waits) at a moment the test chooses."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable

from vreid.fault_points import ALLOCATE, ENV_VAR, read_line

GUARD_S = 600  # a failure guard only: the work always reaches the point the test waits at


@dataclass
class Arrival:
    conn: socket.socket
    info: dict = field(default_factory=dict)

    def release(self) -> None:
        if self.conn.fileno() < 0:
            return  # already let go
        try:
            self.conn.sendall(b"g")
        except OSError:
            pass  # the process was killed while it waited
        self.conn.close()

    def allocate(self, nbytes: int) -> None:
        """Let the process go on after it has allocated (and written) ``nbytes`` that it keeps
        until it exits: a workload that outgrows its node's memory, at a moment the test chooses."""
        if self.conn.fileno() < 0:
            return
        try:
            self.conn.sendall(f"{ALLOCATE}{int(nbytes)}\n".encode())
        except OSError:
            pass
        self.conn.close()


class PausePoint:
    """A unix socket at ``$VREID_PAUSE_POINTS/<name>`` while the ``with`` block runs; work that
    reaches the point waits for ``Arrival.release``. Leaving the block lets everything go on."""

    def __init__(self, name: str, root: str | None = None):
        self.path = os.path.join(root or os.environ[ENV_VAR], name)
        self.server = socket.socket(socket.AF_UNIX)
        self.arrivals: list[Arrival] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PausePoint":
        self.server.bind(self.path)
        self.server.listen(64)
        self.server.settimeout(GUARD_S)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        os.unlink(self.path)  # first, so that no one else connects
        self.server.close()  # connections not yet accepted are reset: those stages go on
        for arrival in self.arrivals:  # and the held ones are let go
            arrival.release()

    def next(self) -> Arrival:
        try:
            conn, _ = self.server.accept()
        except socket.timeout:
            raise AssertionError(f"nothing reached the pause point {self.path} in {GUARD_S} s") from None
        conn.settimeout(GUARD_S)
        self.arrivals.append(Arrival(conn, json.loads(read_line(conn))))
        return self.arrivals[-1]

    def wait_for(self, **match) -> Arrival:
        """The first arrival whose details include ``match``; every other one is let go."""
        return self.wait_for_all(match)[0]

    def wait_for_all(self, *matches: dict) -> list[Arrival]:
        """For each of ``matches``, the first arrival that includes it, all held at once (so the
        processes they come from are waiting at the same time); every other arrival is let go."""
        held: list[Arrival | None] = [None] * len(matches)
        while None in held:
            arrival = self.next()
            slot = next((i for i, m in enumerate(matches) if held[i] is None
                         and all(arrival.info.get(k) == v for k, v in m.items())), None)
            if slot is None:
                arrival.release()
            else:
                held[slot] = arrival
        return held

    def release_all_in_background(self, on_arrival: Callable[[dict], None] | None = None) -> list[dict]:
        """From now on let every arrival go on at once, in a thread, until the ``with`` block ends;
        returns the list of their details, appended as they arrive (``on_arrival`` may add to
        them, e.g. the node of the process, while that process still waits)."""
        seen: list[dict] = []

        def loop() -> None:
            while not self._stop.is_set():
                if not select.select([self.server], [], [], 0.2)[0]:
                    continue
                arrival = self.next()
                if on_arrival is not None:
                    on_arrival(arrival.info)
                seen.append(arrival.info)
                arrival.release()

        self._thread = threading.Thread(target=loop, name=f"release {self.path}", daemon=True)
        self._thread.start()
        return seen
