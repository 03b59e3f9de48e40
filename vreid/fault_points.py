"""Named pause points for fault tests, in the manner of Ray's own ``RAY_testing_*`` hooks.

A stage calls ``pause_point("train.epoch_end", model=..., epoch=...)`` at a place where a fault
test wants to act (kill a worker, a node, the driver). It costs one ``os.path.exists`` and does
nothing unless the environment variable ``VREID_PAUSE_POINTS`` names a directory in which a test
listens on a unix socket named after the point. Then the process sends the point's name and
details as one JSON line and waits for the test's answer: the test decides, at a moment it
controls, to let the stage go on (any reply) or to kill it while it waits. Interruption tests
therefore never race the work they interrupt. A reply ``m<bytes>\n`` (:data:`ALLOCATE`) makes the
process allocate and write that many bytes, kept until it exits, before it goes on: a workload
that outgrows its node's memory (the out-of-memory test).

The variable must be in the environment of the processes that reach the point: set it before
``ray.init`` / ``ray start`` (Ray workers inherit the raylet's environment).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

ENV_VAR = "VREID_PAUSE_POINTS"
ALLOCATE = "m"  # the reply that asks for an allocation: "m<bytes>\n"
_held: list[bytearray] = []  # what a test made this process allocate


def read_line(sock: socket.socket) -> bytes:
    """Bytes from ``sock`` up to and including a newline (less if the peer closes first)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        line += chunk
    return line


def pause_point(name: str, **details: Any) -> None:
    """Wait at the point ``name`` while a test listens there; a no-op otherwise."""
    root = os.environ.get(ENV_VAR)
    if not root:
        return
    path = os.path.join(root, name)
    if not os.path.exists(path):
        return
    message = (json.dumps({"point": name, "pid": os.getpid(), **details}, default=str) + "\n").encode()
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
            sock.sendall(message)
            reply = sock.recv(1)  # the reply, or the test closing the connection, lets the stage go on
            if reply == ALLOCATE.encode():
                _held.append(bytearray(b"\x01") * int(read_line(sock)))  # written: resident, not just reserved
        except OSError:
            return  # the test stopped listening meanwhile
