"""The factory's totals since this root started, for the metrics exporter (no I/O)."""

import collections

from vac.machine.joboutputs import EXCEEDED_WALLCLOCK


class FactoryCounters:
    """Machines started, finished and killed at their wall limit; placements and refusals."""

    def __init__(self, since):
        self.counting_since = since
        self.started_total = collections.Counter()     # machinetype -> machines started
        self.finished_total = collections.Counter()    # (machinetype, code) -> machines finished
        self.wall_limit_kills = collections.Counter()  # machinetype -> ended at their wall limit
        self.placements_total = collections.Counter()  # machinetype -> placements sent
        # NoPlacementReason value -> scheduling passes that left free slots empty.
        self.refusals_total = collections.Counter()
        self._counted_start = {}  # slot -> the machine last counted as started there

    def count_start(self, slot, state, machine):
        """Count a machine once, when its slot first reports it running."""
        if state != "running" or not machine or self._counted_start.get(slot) == machine.get("uuid"):
            return
        self._counted_start[slot] = machine.get("uuid")
        # A machine that started before this root did is one a new root adopts:
        # the root that started it counted it.
        if machine.get("started_at", 0) >= self.counting_since:
            self.started_total[machine.get("machinetype")] += 1

    def count_finished(self, msg):
        """Count a MachineFinished (each machine once: the caller drops repeats)."""
        self.finished_total[(msg.machinetype, msg.code)] += 1
        if (msg.code, msg.text) == (EXCEEDED_WALLCLOCK.code, EXCEEDED_WALLCLOCK.text):
            self.wall_limit_kills[msg.machinetype] += 1

    def count_pass(self, placements, refusal):
        """Count one scheduling pass: the placements it made, and its refusal if free slots stayed empty."""
        for _, placement in placements:
            self.placements_total[placement.machinetype] += 1
        if refusal is not None:
            self.refusals_total[refusal.reason.value] += 1
