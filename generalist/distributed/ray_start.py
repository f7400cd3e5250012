"""Starting a local Ray: retried with backoff when it fails, and a clear BackendError when it never comes up.

On a loaded machine a local `ray.init()` can time out while its GCS or raylet is still starting ("The current
node timed out during startup"); a second try a little later usually works. A failed try can leave the
processes it had already started (Ray forgets them when its node object was never built), so each one is
stopped before the next try, and again before giving up: nothing of ours keeps running after an error.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import ray

from generalist.errors import BackendError

# Arguments Ray rejects before starting anything: retrying cannot change the answer.
_NOT_TRANSIENT = (TypeError, ValueError)


def start_local_ray(init_kwargs: dict, *, attempts: int = 4, deadline_s: float = 600.0, backoff_s: float = 5.0):
    """`ray.init(**init_kwargs)` for a new local Ray; returns what ray.init returns.

    A failed try is followed by a wait (`backoff_s`, doubled after each try) and another one, up to `attempts`
    tries, and no try starts after `deadline_s` seconds. If none succeeds: BackendError saying what to check.
    TypeError and ValueError (bad arguments) are raised at once, as they are."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    started = time.monotonic()
    wait_s, tried = backoff_s, 0
    while True:
        before = _descendants(os.getpid())
        tried += 1
        try:
            return ray.init(**init_kwargs)
        except _NOT_TRANSIENT:
            _stop_what_this_try_started(before)
            raise
        except Exception as error:  # noqa: BLE001 - Ray raises bare Exception, RuntimeError, ConnectionError, ...
            _stop_what_this_try_started(before)
            last = error
        elapsed = time.monotonic() - started
        if tried >= attempts or elapsed + wait_s > deadline_s:
            break
        time.sleep(wait_s)
        wait_s *= 2
    temp_dir = init_kwargs.get("_temp_dir") or os.environ.get("RAY_TMPDIR") or "/tmp/ray"
    message = " ".join(str(last).split()) or "(no message)"
    raise BackendError(
        f"a local Ray did not start ({tried} tries over {time.monotonic() - started:.0f} s; last: "
        f"{type(last).__name__}: {message[:300]}); check that the machine has free memory and free disk under "
        f"{temp_dir} (Ray's logs: {temp_dir}/session_latest/logs), that it is not overloaded, and that no stale Ray "
        "holds its ports (`ray status`); or run on a started cluster with --address") from last


def _stop_what_this_try_started(before: set[int]) -> None:
    """ray.shutdown(), then stop any process this try started that is still running (GCS, raylet, reaper)."""
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - shutting down a half-started Ray may fail in many ways; we clean up below
        pass
    leftover = _descendants(os.getpid()) - before
    for sig, grace_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in leftover:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap(leftover)
            leftover = {pid for pid in leftover if _alive(pid)}  # by id: one whose parent died is ours all the same
            if not leftover:
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] != "Z"


def _reap(pids: set[int]) -> None:
    """Collect those of `pids` that are our own exited children, so they do not linger as zombies. Only these:
    waiting on any child would take exit statuses that other code (subprocess.Popen) is waiting for."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (the raylet's workers), or already collected
            pass


def _descendants(root: int) -> set[int]:
    """The ids of every living process below `root` (Linux /proc; an empty set where there is none)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
