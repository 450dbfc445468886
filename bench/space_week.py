"""A week of the simulated space, event by event: vac's factories on a simulated clock and network.

Machines start when vac's Factory places them and end when their job does:
each job's length is drawn when it starts, from its machinetype's range.
During the abort window, the aborting machinetype's new machines end within
minutes with "300 Nothing to do". At the software update, every running
machine of the updated machinetype ends at once (a normal end) and its
slots are refilled; the experiment's queue stays closed for a while, so
the pilots restarted meanwhile end with a 300 as well. Nothing is simulated
between events.

A factory's view of the space is what its vacquery's last poll before the
moment it places reported; a poll after which its factory placed nothing
changes nothing, so only those before a placement are made. Each is made
of every other factory's answer at the poll's time (what its root had told
its vacquery by then), encoded by vac's responder and decoded by vac's
poller, once per version of that answer: the bytes differ only in the
asker's cookie and the time sent. Every VERIFY_EVERY-th poll is also run
whole, datagram by datagram on the simulated network between vac's own
vacquery nodes, and its report compared with the assembled one. Every
machine's start also brings its factory's answers up to date once it is
past fizzle_seconds, so they stop counting it as young when vacd's would.
"""

import dataclasses
import heapq
import math
import random
import time
import types

from space_factories import SimFactory
from space_network import SimClock, SimNetwork, SimVacquery, run
from vac import __version__
from vac.history import MachineSpan
from vac.space import protocol, report
from vac.supervisor.aborts import FIRST_ABORT_CODE
from vac.workers.space_poller import read_answer
from vac.workers.space_responder import Responder

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
END, TICK, SAY, UPDATE = "end", "tick", "say", "update"
NORMAL_END = (200, "Intended work completed ok")
NOTHING_TO_DO = (300, "Nothing to do")
UPDATE_END = (200, "Intended work completed ok: pilot stopped for a software update")
# One poll in this many is also run datagram by datagram and its report compared with the assembled one.
VERIFY_EVERY = 100
# When an assembled poll ends: a whole one on the simulated network takes a few milliseconds.
ASSEMBLED_POLL_SECONDS = 0.005
VACD_VERSION = f"vac {__version__}"
ASKER = "10.255.255.1"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A machinetype of the space: its target share and how long its jobs run."""
    name: str
    share: float
    job_hours: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The space, its machinetypes and the week's incidents."""
    start: float
    days: float
    factories: int
    processors: int
    experiments: tuple[Experiment, ...]
    machinetype_options: dict          # what every factory configures for each machinetype
    lacking: dict                      # machinetype -> every how many factories one does not offer it
    abort: tuple[str, float, float, tuple[float, float]]  # machinetype, from, until, minutes a machine lives
    update: tuple[str, float, float]   # machinetype, when its pilots all end, minutes its new ones find no work
    space: str = "space.example.com"
    poll_interval: float = 60.0        # vacd's vacquery_interval_seconds
    udp_timeout: float = 10.0          # Vac's default udp_timeout_seconds

    @property
    def end(self):
        return self.start + self.days * DAY

    def name(self, index):
        width = max(2, len(str(self.factories)))
        return f"vac{index + 1:0{width}d}.example.com"

    def host(self, index):
        return f"10.{index // 250}.{index % 250 + 1}.1"

    def offers(self, index):
        """The machinetypes factory `index` is configured with."""
        return [e.name for e in self.experiments
                if not (e.name in self.lacking and index % self.lacking[e.name] == self.lacking[e.name] - 1)]

    def vacquery_spec(self, index, peers):
        """What vacd gives its vacquery child (vac/supervisor/build.py)."""
        return {"space": self.space, "factory_name": self.name(index), "factories": list(peers),
                "listen": f"{self.host(index)}:{protocol.PORT}", "udp_timeout_seconds": self.udp_timeout,
                "interval_seconds": self.poll_interval, "state_dir": "/var/lib/vac"}


@dataclasses.dataclass
class WeekResult:
    """Every machine of the week (vac's MachineSpan), and what the simulation did to get them."""
    spans: list
    aborts: dict = dataclasses.field(default_factory=dict)   # machinetype -> machines ended with a 300 or above
    placements: int = 0
    polls: int = 0                   # polls whose report a root scheduled with
    answers_decoded: int = 0         # datagrams encoded by a responder and decoded for them
    polls_run_whole: int = 0         # ... of which also run datagram by datagram
    polls_differing: int = 0         # ... whose report differed from the assembled one
    whole_poll_datagrams: list = dataclasses.field(default_factory=list)   # the asker's, in and out
    whole_poll_bytes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0             # the simulation's own CPU time


class Week:
    """One simulated week of `scenario`; with in_space False every factory schedules alone."""

    def __init__(self, scenario, configs, *, in_space, seed, host_figures):
        self.scenario = scenario
        self.in_space = in_space
        self.host_figures = host_figures
        self.clock = SimClock(scenario.start)
        self.jobs = random.Random(seed)
        self.network_rng = random.Random(seed + 1)
        phases = random.Random(seed + 2)
        self.factories = [SimFactory(scenario.name(i), configs[tuple(scenario.offers(i))], clock=self.clock,
                                     rng=random.Random(seed * 1000 + i), in_space=in_space)
                          for i in range(scenario.factories)]
        self.phase = [phases.uniform(0.0, scenario.poll_interval) for _ in self.factories]
        self.heard = [-1] * len(self.factories)       # the last poll each factory's root heard
        self.decoded = {}                             # (factory, version) -> its answers, decoded
        self.tick_at = [math.inf] * len(self.factories)
        self.planned = {}                             # uuid -> (code, text) it will end with
        self.events = []
        self.sequence = 0
        self.result = WeekResult(spans=[])

    def run(self):
        """Simulate the week, event by event; its WeekResult."""
        began = time.process_time()
        scenario = self.scenario
        self._push(scenario.update[1], UPDATE, -1, None)
        for index in range(len(self.factories)):
            self._tick(index)
        forgotten_at = scenario.start
        while self.events:
            moment, _, kind, index, data = heapq.heappop(self.events)
            if moment >= scenario.end:
                break
            self.clock.now = moment
            if kind == END:
                slot, uuid = data
                machine = self.factories[index].held.get(slot)
                if machine is not None and machine["uuid"] == uuid:
                    self._end(index, slot, *self.planned.pop(uuid))
                    self._tick(index)
            elif kind == TICK:
                if self.tick_at[index] == moment:
                    self.tick_at[index] = math.inf
                self._tick(index)
            elif kind == SAY:
                self.factories[index].say()
            elif kind == UPDATE:
                self._update()
            if self.in_space and moment - forgotten_at > HOUR:
                for factory in self.factories:
                    factory.forget_before(moment - 3 * scenario.poll_interval)
                self.decoded = {}
                forgotten_at = moment
        for index, factory in enumerate(self.factories):
            for slot, machine in factory.held.items():
                self.result.spans.append(self._span(index, slot, machine, None, None))
        self.result.seconds = time.process_time() - began
        return self.result

    # Machines.

    def _tick(self, index):
        factory, now = self.factories[index], self.clock.now
        if self.in_space and factory.free_slots():
            self._hear_last_poll(index)
        for slot, machine in factory.tick():
            self.result.placements += 1
            lives, outcome = self._job(machine["machinetype"], now)
            self.planned[machine["uuid"]] = outcome
            self._push(now + lives, END, index, (slot, machine["uuid"]))
            if self.in_space:
                fizzle = self.scenario.machinetype_options[machine["machinetype"]]["fizzle_seconds"]
                self._push(now + fizzle + 1.0, SAY, index, None)
        if factory.free_slots():
            # As vacd's loop: the factory looks again when its placer asks to.
            again = max(factory.next_deadline(), now + 1.0)
            if again < self.tick_at[index]:
                self.tick_at[index] = again
                self._push(again, TICK, index, None)

    def _job(self, machinetype, now):
        """How long a machine started now lives, and the shutdown_message it ends with."""
        aborting, since, until, minutes = self.scenario.abort
        updated, update_at, closed_minutes = self.scenario.update
        if (machinetype == aborting and since <= now < until) or (
                machinetype == updated and update_at <= now < update_at + closed_minutes * MINUTE):
            return self.jobs.uniform(*minutes) * MINUTE, NOTHING_TO_DO
        hours = next(e.job_hours for e in self.scenario.experiments if e.name == machinetype)
        return self.jobs.uniform(*hours) * HOUR, NORMAL_END

    def _end(self, index, slot, code, text):
        machine = self.factories[index].finish(slot, code, text)
        if code >= FIRST_ABORT_CODE:
            self.result.aborts[machine["machinetype"]] = self.result.aborts.get(machine["machinetype"], 0) + 1
        self.result.spans.append(self._span(index, slot, machine, self.clock.now, code))

    def _update(self):
        updated = self.scenario.update[0]
        for index, factory in enumerate(self.factories):
            for slot, machine in sorted(factory.held.items()):
                if machine["machinetype"] == updated:
                    self.planned.pop(machine["uuid"], None)
                    self._end(index, slot, *UPDATE_END)
        for index in range(len(self.factories)):
            self._tick(index)

    def _span(self, index, slot, machine, ended_at, code):
        return MachineSpan(uuid=machine["uuid"], factory=self.scenario.name(index), slot=slot,
                           machinetype=machine["machinetype"], processors=machine["processors"],
                           started_at=machine["started_at"], shutdown_at=machine["shutdown_at"],
                           ended_at=ended_at, shutdown_code=code)

    def _push(self, moment, kind, index, data):
        self.sequence += 1
        heapq.heappush(self.events, (moment, self.sequence, kind, index, data))

    # The space.

    def _hear_last_poll(self, index):
        """Give the factory's root the report of its vacquery's last poll that ended by now."""
        scenario, now = self.scenario, self.clock.now
        number = math.floor((now - scenario.start - self.phase[index]) / scenario.poll_interval)
        while number >= 0 and number > self.heard[index]:
            status = self._poll(index, number)
            if status.ended_at <= now:
                self.factories[index].hear(status)
                self.heard[index] = number
                return
            number -= 1

    def _poll(self, index, number):
        """The report of poll `number` of factory `index`: assembled, and every VERIFY_EVERY-th also run whole."""
        began = self.scenario.start + self.phase[index] + number * self.scenario.poll_interval
        assembled = self._assembled_poll(index, began)
        self.result.polls += 1
        if self.result.polls % VERIFY_EVERY:
            return assembled
        whole = self._whole_poll(index, began)
        self.result.polls_run_whole += 1
        if _figures(whole) != _figures(assembled):
            self.result.polls_differing += 1
        return whole

    def _assembled_poll(self, index, began):
        """What the poll reports when every answer arrives: each other factory's answer at `began`, decoded.

        The root takes it as it takes vacquery's SpaceStatus once checked.
        """
        scenario = self.scenario
        answered_at = began + ASSEMBLED_POLL_SECONDS
        factories, silent, names = {}, {}, []
        for j in range(len(self.factories)):
            if j == index:
                continue
            name = scenario.name(j)
            names.append(name)
            decoded = self._decoded_answer(j, began)
            if decoded is None:
                silent[name] = "no answer"
                continue
            factories[name] = dict(decoded, answered_at=answered_at)
        return types.SimpleNamespace(factories=factories, polled=names, silent=silent, machines={},
                                     machines_left_out=0, request=None, started_at=began, ended_at=answered_at)

    def _decoded_answer(self, index, moment):
        """Factory `index`'s answers to a machinetypes and a factory query at `moment`, encoded by vac's
        responder, decoded by vac's poller and made into its entry of a report (its time of answer
        to be set); once per version of what it says, as the bytes differ only in the asker's
        cookie and the time sent."""
        said = self.factories[index].said_at(moment)
        if said is None:
            return None
        version, answers = said
        key = (index, version)
        if key not in self.decoded:
            scenario = self.scenario
            responder = Responder(space=scenario.space, site=protocol.site_of(scenario.space, None),
                                  version=VACD_VERSION, host_figures=lambda: self.host_figures)
            responder.local = answers
            machinetypes, factory = {}, None
            for kind in (protocol.MACHINETYPES_QUERY, protocol.FACTORY_QUERY):
                query = protocol.Query(kind, scenario.space, protocol.cookie(b"week", scenario.name(index)))
                for datagram in responder.answer(query, ASKER, moment, moment):
                    self.result.answers_decoded += 1
                    answer = read_answer(datagram, scenario.space)
                    if isinstance(answer, str):
                        raise AssertionError(f"vac could not read its own answer: {answer}")
                    status = answer[-1]
                    if kind == protocol.MACHINETYPES_QUERY:
                        machinetypes[status.machinetype] = status
                    else:
                        factory = status
            self.decoded[key] = report.answer(machinetypes, factory, [], moment)
        return self.decoded[key]

    def _whole_poll(self, index, began):
        """Run the poll on a network of its own: factory `index`'s vacquery asks every other one's,
        each answering as its root had told it by `began`."""
        scenario = self.scenario
        network = SimNetwork(SimClock(began), self.network_rng)
        others = [j for j in range(len(self.factories)) if j != index]
        asker = SimVacquery(scenario.vacquery_spec(index, [scenario.name(j) for j in others]), network,
                            scenario.host(index), first_poll_at=began, host_figures=self.host_figures)
        asker.addresses = {scenario.name(j): (scenario.host(j), protocol.PORT) for j in others}
        nodes = [asker]
        for j in others:
            peer = SimVacquery(scenario.vacquery_spec(j, []), network, scenario.host(j), first_poll_at=math.inf,
                               host_figures=self.host_figures)
            said = self.factories[j].said_at(began)
            peer.responder.local = said[1] if said is not None else None
            nodes.append(peer)
        reports = []
        run(network, nodes, until=began + 3 * scenario.udp_timeout,
            on_status=lambda node, status: reports.append(status) if node is asker else None)
        traffic = network.traffic[scenario.host(index)]
        self.result.whole_poll_datagrams.append(traffic.datagrams_out + traffic.datagrams_in)
        self.result.whole_poll_bytes.append(traffic.bytes_out + traffic.bytes_in)
        return reports[0]


def _figures(space_status):
    """What the root schedules with from a poll's report: each factory's figures per machinetype."""
    return {name: answer["machinetypes"] for name, answer in space_status.factories.items()}
