"""Which machine goes into which free slot, and when to ask the scheduler again (no I/O).

The scheduler (scheduler.py) decides from plain inputs; this module gathers
them from the factory's state, turns each placement into a Place for its
slot, and keeps the times at which a pass is due again.
"""

import dataclasses
import logging
import uuid as uuidlib

from vac.ipc import messages
from vac.machine.layout import machine_name
from vac.supervisor import scheduler, scheduler_inputs
from vac.supervisor.machine_spec import machine_spec
from vac.vocabulary.slot_ids import slot_id

# Logged under the factory's name, as before placement had a module of its own.
log = logging.getLogger("vac.supervisor.factory")

# The load average and the clock move without any report: look again this often.
RECONSIDER_SECONDS = 10.0


class Placer:
    """Fills free slots when something changed, a backoff ended or RECONSIDER_SECONDS passed."""

    def __init__(self, *, factory_name, rng, load_average):
        self.factory_name = factory_name
        self.rng = rng
        self.load_average = load_average
        self.last_refusal = None
        self.changed = True
        self._retry_at = None
        self._reconsider_at = 0.0
        self._waited_for_adoption = False

    def due(self, now):
        if self.changed or now >= self._reconsider_at:
            return True
        return self._retry_at is not None and now >= self._retry_at

    def adoption_over(self, table):
        """True once every slot has said what it holds: until then a placement could promise its processors twice."""
        adopting = table.still_adopting()
        if adopting and not self._waited_for_adoption:
            self._waited_for_adoption = True
            log.info("free slots wait until every slot has reported what it holds (%d still adopting)",
                     len(adopting))
        return not adopting

    def place(self, now, *, config, machinetypes, table, draining, paused, histories, space_hs06,
              unavailable_repositories, counters, mjf_http_url=None, mjf_http_unavailable=None):
        """One scheduling pass over the free slots: (child id, Place) for each placement.

        `mjf_http_url`: where the mjf child serves (None: not served, for
        `mjf_http_unavailable`'s reason), given to machines of mjf_http machinetypes.
        """
        settings = config.settings
        factory = dataclasses.replace(scheduler_inputs.factory_capacity(settings), draining=draining)
        demands = [scheduler_inputs.machinetype_demand(mt, paused=mt.name in paused)
                   for mt in machinetypes.values()]
        placements, refusal = scheduler.fill_free_slots(
            factory, demands, table.running(settings.hs06_per_processor),
            histories, table.free_slots(), now=now,
            load_average=self.load_average(), rng=self.rng, space_hs06=space_hs06,
            unavailable_repositories=unavailable_repositories,
            mjf_http_unavailable=None if mjf_http_url else (mjf_http_unavailable or "not served"))
        self.changed = False
        self._reconsider_at = now + RECONSIDER_SECONDS
        self._retry_at = refusal.retry_at if refusal is not None else None
        if refusal is not None and (self.last_refusal is None
                                    or refusal.reason != self.last_refusal.reason):
            log.info("free slots stay empty: %s", refusal.text)
        self.last_refusal = refusal
        counters.count_pass(placements, refusal)
        return [(slot_id(slot), self._place_one(slot, placement, now, config, machinetypes, table, mjf_http_url))
                for slot, placement in placements]

    def _place_one(self, slot, placement, now, config, machinetypes, table, mjf_http_url):
        machine_uuid = str(uuidlib.uuid4())
        machinetype = machinetypes[placement.machinetype]
        spec = machine_spec(
            uuid=machine_uuid, slot=slot, factory_name=self.factory_name,
            machine_name=machine_name(self.factory_name, slot), settings=config.settings,
            machinetype=machinetype, placement=placement, placed_at=now,
            mjf_http_url=mjf_http_url if machinetype.mjf_http else None)
        table.placed(slot, {
            "uuid": machine_uuid, "machinetype": machinetype.name,
            "processors": placement.processors, "started_at": now,
            "shutdown_at": int(placement.shutdown_at), "superslot": placement.superslot,
            "container_id": None})
        log.info("slot %02d: placing %s machine %s on %d processor(s) until %d", slot,
                 machinetype.name, machine_uuid, placement.processors, placement.shutdown_at)
        return messages.Place(machine=spec)

    def wake_times(self):
        """The times a pass is due again whatever the reports say."""
        return [self._reconsider_at] + ([self._retry_at] if self._retry_at is not None else [])
