"""`python3 -m bench.cpuprofile OUT.prof ARGS...`: run `mailgate ARGS...` under cProfile, timed by
the thread's CPU clock rather than the wall clock, and write the profile to OUT.prof on exit.

With the wall clock (plain `python -m cProfile`) every wait shows up as cost: epoll, a send
that wakes another process, a preempted moment on a busy machine. With thread CPU time the
numbers are what the event loop's thread itself spent; worker threads are not profiled
(use `--profiler py-spy` for those).
"""

from __future__ import annotations

import cProfile
import sys
import time

from gateway.cli import main

if __name__ == "__main__":
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        status = main(sys.argv[2:])
    finally:
        profile.disable()
        profile.dump_stats(sys.argv[1])
    sys.exit(status)
