"""factory_status: one datagram about a whole factory, the answer to a factory_query (pure).

What the factory runs and could run (processors, machines, HS06) comes from
the root; the host's figures (disks, memory, load, kernel) from the vacquery
child, which reads them (host_figures.py). Decoding checks every field
present, typed and bounded, and accepts every spelling Vac has used:
running_cpus, max_cpus and the deprecated total_* for the maxima, vac_disk_*
for daemon_disk_*.
"""

from __future__ import annotations

import dataclasses

from vac.space import protocol
from vac.space.protocol import MAX_COUNT, MAX_HS06, as_count, as_number, clip, optional_text

# A load average beyond any machine's (and a bound on what a peer may claim).
MAX_LOAD = 1e6
# Each figure with the spellings Vac has used for it, newest first.
_COUNTS = {
    "running_processors": ("running_processors", "running_cpus"),
    "running_machines": ("running_machines",),
    "max_processors": ("max_processors", "max_cpus", "total_cpus"),
    "max_machines": ("max_machines", "total_machines"),
    "root_disk_avail_kb": ("root_disk_avail_kb",),
    "root_disk_avail_inodes": ("root_disk_avail_inodes",),
    "daemon_disk_avail_kb": ("daemon_disk_avail_kb", "vac_disk_avail_kb"),
    "daemon_disk_avail_inodes": ("daemon_disk_avail_inodes", "vac_disk_avail_inodes"),
    "boot_time": ("boot_time",),
    "factory_heartbeat_time": ("factory_heartbeat_time",),
    "responder_heartbeat_time": ("responder_heartbeat_time",),
    "swap_used_kb": ("swap_used_kb",),
    "swap_free_kb": ("swap_free_kb",),
    "mem_used_kb": ("mem_used_kb",),
    "mem_total_kb": ("mem_total_kb",),
}
_NUMBERS = {"running_hs06": (("running_hs06",), MAX_HS06), "max_hs06": (("max_hs06", "total_hs06"), MAX_HS06),
            "load_average": (("load_average",), MAX_LOAD)}
_TEXTS = ("kernel_version", "os_issue")
# Vac's older names of the same figures, sent beside the newer ones.
_ALSO_SENT_AS = {"running_cpus": "running_processors", "max_cpus": "max_processors",
                 "total_cpus": "max_processors", "total_machines": "max_machines", "total_hs06": "max_hs06",
                 "vac_disk_avail_kb": "daemon_disk_avail_kb", "vac_disk_avail_inodes": "daemon_disk_avail_inodes"}


@dataclasses.dataclass(frozen=True)
class FactoryStatus:
    """One factory: what it runs, what it could run, and its host."""
    factory: str
    running_processors: int = 0
    running_machines: int = 0
    running_hs06: float = 0.0
    max_processors: int | None = None
    max_machines: int | None = None
    max_hs06: float | None = None
    root_disk_avail_kb: int | None = None
    root_disk_avail_inodes: int | None = None
    daemon_disk_avail_kb: int | None = None
    daemon_disk_avail_inodes: int | None = None
    load_average: float | None = None
    kernel_version: str | None = None
    os_issue: str | None = None
    boot_time: int | None = None
    factory_heartbeat_time: int | None = None
    responder_heartbeat_time: int | None = None
    swap_used_kb: int | None = None
    swap_free_kb: int | None = None
    mem_used_kb: int | None = None
    mem_total_kb: int | None = None


def factory_status(status: FactoryStatus, *, space: str, site: str, query_cookie: str, daemon_version: str,
                   now: int) -> bytes:
    """The answer to a factory_query: one datagram with every field Vac sends.

    A figure this factory could not read goes as 0 (or empty text), as Vac sends it.
    """
    message = dataclasses.asdict(status)
    for key, value in message.items():
        if value is None:
            message[key] = "" if key in _TEXTS else 0
    message.update({key: clip(message[key]) for key in _TEXTS})
    message.update({old: message[new] for old, new in _ALSO_SENT_AS.items()})
    message.update(protocol.reply_fields(protocol.FACTORY_STATUS, space=space, site=site,
                                         query_cookie=query_cookie, daemon_version=daemon_version, now=now))
    return protocol.dumps(message)


def read_factory_status(data: bytes, space: str) -> tuple[str, FactoryStatus] | str:
    """(cookie, status) of a factory_status of `space`, or why it is not one.

    The reason starts with NOT_AN_ANSWER for datagrams of another type or space.
    """
    header = protocol.read_header(data, protocol.FACTORY_STATUS, space)
    if isinstance(header, str):
        return header
    m, factory, answer_cookie = header
    fields = {}
    # Every spelling present is checked; the newest one present counts.
    for key, spellings in _COUNTS.items():
        for spelling in reversed(spellings):
            if m.get(spelling) is not None:
                fields[key] = as_count(m[spelling])
                if fields[key] is None:
                    return f"{spelling} is not a whole number from 0 to {MAX_COUNT}"
    for key, (spellings, maximum) in _NUMBERS.items():
        for spelling in reversed(spellings):
            if m.get(spelling) is not None:
                fields[key] = as_number(m[spelling], maximum)
                if fields[key] is None:
                    return f"{spelling} is not a number from 0 to {maximum:g}"
    for key in _TEXTS:
        if not optional_text(m.get(key)):
            return f"{key} is not text"
        fields[key] = m.get(key)
    return answer_cookie, FactoryStatus(factory=factory, **fields)
