"""Keep this run's node leases fresh while a long step runs (a download, a conversion).

A lease whose heartbeat is older than `lease_stale_minutes` may be broken by another run once
its Ray job is not running (include/node/lease.py), and before `train` defers no Ray job runs:
so a download or a conversion longer than `lease_stale_minutes` would leave a breakable lease.
The trigger refreshes the leases on every poll once training runs; before that, the operator
running a long step wraps it in a LeaseKeeper, which refreshes the heartbeat of every node the
run holds on a thread, every min(60 s, lease_stale / 3): at least three beats fall inside one
stale window, so one or two failed beats (a dropped SSH connection) do not let it go stale.
"""
from __future__ import annotations

import threading

MAX_INTERVAL_S = 60.0
MIN_INTERVAL_S = 1.0


def heartbeat_interval(stale_s: float) -> float:
    """Seconds between two beats for leases that go stale after `stale_s`."""
    return max(MIN_INTERVAL_S, min(MAX_INTERVAL_S, float(stale_s) / 3.0))


class LeaseKeeper:
    """`with LeaseKeeper(beat, interval, log): <long step>`: beat() once at the start, then
    every `interval` seconds until the block ends. beat() returns {node: lease.heartbeat answer};
    a failed beat is logged and the next one tries again (the step itself is not disturbed); a
    lease found held by another run is reported once, loudly (it was broken: the run no longer
    owns that node)."""

    def __init__(self, beat, interval: float, log=None, stop=None):
        self.beat = beat
        self.interval = float(interval)
        self.log = log
        # an Event-like object (wait(timeout) -> bool, set()); tests pass one that does not
        # really wait
        self._stop = stop if stop is not None else threading.Event()
        self._thread = None
        self.beats = 0
        self.failures = 0
        self.lost = {}

    def _warn(self, msg, *args):
        if self.log is not None:
            self.log.warning(msg, *args)

    def once(self):
        try:
            out = self.beat() or {}
        except Exception as e:  # the next beat tries again
            self.failures += 1
            self._warn("lease heartbeat failed (%s: %s); retrying in %.0f s", type(e).__name__,
                       e, self.interval)
            return
        self.beats += 1
        for node, ans in out.items():
            ans = ans if isinstance(ans, dict) else {}
            if ans.get("error"):
                self._warn("[%s] lease heartbeat failed: %s", node, ans["error"])
            elif ans.get("held") is False and node not in self.lost:
                self.lost[node] = ans.get("held_by")
                self._warn("[%s] this run no longer holds the node lease (held by %s): another "
                           "run may use the node now", node, ans.get("held_by"))

    def _loop(self):
        self.once()
        while not self._stop.wait(self.interval):
            self.once()

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name="slimeflow-lease-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        return False
