"""The idle and control benches at 256 slots: a worker node of 256 logical processors.

Runs bench_idle (USS per slot and in total, the tree's CPU over 60 s, beside
supervisord with 256 children) and bench_control (`status` round trips over
the socket, `vac status` and `vac slots` end to end) with 256 slots instead
of 128; their results go to bench/results/idle_256.json and control_256.json.
"""

import os
import sys

SLOTS = "256"
# Both modules read their slot count when imported.
os.environ["BENCH_IDLE_SLOTS"] = SLOTS
os.environ["BENCH_CONTROL_SLOTS"] = SLOTS

import bench_control  # noqa: E402
import bench_idle  # noqa: E402


def main():
    idle = bench_idle.main()
    print()
    control = bench_control.main()
    return idle or control


if __name__ == "__main__":
    sys.exit(main())
