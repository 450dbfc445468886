"""Factories of the simulated space: vac's root Factory, fed what its slot workers would report.

Each SimFactory is the root's Factory (vac/supervisor/factory.py) with the
scheduler, placement, outcomes and backoff as vacd runs them. A simulated
slot worker takes each Place at once and reports the machine running; its
end comes back as MachineFinished and idle, as a real worker reports it.
What the root gives its vacquery child to answer with (as Factory.local_report
makes it) is kept with its time whenever it changes, so a poll at any moment
is answered with what the factory said then.
"""

import bisect
import os

from vac.config.load import load_configuration
from vac.ipc import messages
from vac.space.status import local_factory
from vac.supervisor.factory import Factory
from vac.supervisor.helper_handshakes import VACQUERY
from vac.vocabulary.slot_ids import slot_id, slot_number
from vac.workers.space_responder import LocalAnswers

# What a simulated payload burns of its processor.
CPU_FRACTION = 0.9


def configuration(directory, *, space, processors, machinetypes):
    """vac's checked configuration of a factory offering `machinetypes` ({name: {option: value}})."""
    lines = ["[settings]", f"vac_space = {space}", f"total_processors = {processors}", ""]
    for name, options in machinetypes.items():
        lines += [f"[machinetype {name}]", "machine_model = docker", f"root_image = docker://{name}:latest",
                  f"user_data = {name}.user_data"]
        lines += [f"{option} = {value}" for option, value in options.items()] + [""]
    path = os.path.join(directory, "vac-" + "-".join(sorted(machinetypes)) + ".conf")
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(lines))
    return load_configuration([path])


class SimFactory:
    """One factory: vac's Factory, its slots' reports simulated, its answers to the space remembered."""

    def __init__(self, name, config, *, clock, rng, in_space):
        self.name = name
        self.clock = clock
        self.in_space = in_space
        self.factory = Factory(config, factory_name=name, rng=rng, clock=clock, load_average=lambda: 0.0)
        self.slots = config.settings.slots
        self.held = {}            # slot -> the machine it runs, as its worker reports it
        self._said = []           # (from when, version, LocalAnswers): what vacquery answered polls with
        self._versions = 0
        for slot in range(self.slots):
            self._report(slot, "idle", None)

    def tick(self):
        """One pass of the root's factory: the machines it placed now, as [(slot, machine)]."""
        placed = []
        for child_id, msg in self.factory.tick(True):
            if isinstance(msg, messages.Place):
                slot, spec = slot_number(child_id), msg.machine
                machine = {"uuid": spec["uuid"], "machinetype": spec["machinetype"]["name"],
                           "processors": spec["processors"], "started_at": spec["placed_at"],
                           "shutdown_at": spec["shutdown_at"], "superslot": spec["superslot"],
                           "container_id": "c" + spec["uuid"][:11]}
                self._report(slot, "running", machine)
                placed.append((slot, machine))
        self.say()
        return placed

    def finish(self, slot, code, text):
        """The machine in `slot` ends now with shutdown_message `code text`; its worker goes idle.

        What vacquery answers with changes at the factory's next pass (tick or say).
        """
        machine, now = self.held[slot], self.clock()
        self.factory.on_message(slot_id(slot), messages.MachineFinished(
            uuid=machine["uuid"], machinetype=machine["machinetype"], started_at=machine["started_at"],
            ended_at=now, code=code, text=text, processors=machine["processors"],
            cpu_seconds=CPU_FRACTION * (now - machine["started_at"])))
        self._report(slot, "idle", None)
        return machine

    def say(self):
        """What vacquery answers polls with from now on, if it changed: the root's local report.

        vacd sends it as LocalStatus whenever it changes (a machine started or
        ended, one grew past fizzle_seconds); the message itself, checked
        field by field between two processes of one host, is not simulated,
        nor are the machines, which no poll of the week asks for.
        """
        if not self.in_space:
            return
        settings = self.factory.config.settings
        statuses = tuple(self.factory.local_statuses())
        factory = local_factory(factory_name=self.name, machines=self.factory.table.machines(),
                                total_processors=settings.total_processors,
                                hs06_per_processor=settings.hs06_per_processor_or_default)
        if self._said and (self._said[-1][2].machinetypes, self._said[-1][2].factory) == (statuses, factory):
            return
        self._versions += 1
        self._said.append((self.clock(), self._versions, LocalAnswers(machinetypes=statuses, machines=(),
                                                                      factory=factory, made_at=self.clock())))

    def hear(self, space_status):
        """A poll's report from its vacquery child: a SpaceStatus, or one assembled as its fields.

        An assembled report goes where the root's Factory puts a SpaceStatus
        it has decoded and checked (Factory.on_message).
        """
        if isinstance(space_status, messages.SpaceStatus):
            self.factory.on_message(VACQUERY, space_status)
        else:
            self.factory.vacquery.on_space_status(space_status)
            self.factory.placer.changed = True

    def said_at(self, moment):
        """(version, answers): what its vacquery answered polls with at `moment`; None before the first."""
        index = bisect.bisect_right(self._said, moment, key=lambda said: said[0]) - 1
        return self._said[index][1:] if index >= 0 else None

    def forget_before(self, moment):
        """Drop what it said before `moment`, but the last of it (still what it said then)."""
        keep_from = max(bisect.bisect_right(self._said, moment, key=lambda said: said[0]) - 1, 0)
        del self._said[:keep_from]

    def free_slots(self):
        return self.factory.table.free_slots()

    def next_deadline(self):
        return self.factory.next_deadline()

    def _report(self, slot, state, machine):
        if machine is None:
            self.held.pop(slot, None)
        else:
            self.held[slot] = machine
        self.factory.on_message(slot_id(slot), messages.StateReport(
            child_id=slot_id(slot), state=state, detail={"slot": slot, "machine": machine}))
