"""The Docker engine as the benches see it: its event stream, the bench image, cleanup.

Every figure of the Docker slot benches comes from the engine's own event
timestamps (timeNano of start and die), so vac and the plain SDK loop are
timed by the same clock in the same way.
"""

import os
import sys
import threading
import time

import docker
import requests
import urllib3

# contrib/demo/busybox_image.py builds a registry-free busybox image.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "contrib", "demo"))
from busybox_image import ImageBuildError, ensure_image  # noqa: E402

import run_owner  # noqa: E402

IMAGE = "vac-bench-busybox:latest"
# Every container a bench starts itself (the plain loops) carries this label
# with the run's id; vac's carry vac.factory.
BENCH_LABEL = "vac-bench.run"
BENCH_SLOT_LABEL = "vac-bench.slot"
DOCKER_TIMEOUT = 120
# Engine errors a bench turns into "measurement failed" rather than a traceback.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException,
                 urllib3.exceptions.HTTPError)
# The factory names of vacd_factory.unique_factory_name and the plain loops' run ids.
LEFTOVER_FACTORY_PREFIX = "bench-"
LEFTOVER_RUN_PREFIX = "plain-"
CLEANUP_DEADLINE = 60.0


def client():
    """A Docker client with a timeout long enough for 32 parallel calls on a small host."""
    return docker.from_env(timeout=DOCKER_TIMEOUT)


def bench_image(docker_client):
    """The bench's busybox image tag, built if missing."""
    return ensure_image(docker_client, IMAGE)


def prepare():
    """(client, bench image) on an engine cleared of what interrupted bench runs left."""
    docker_client = client()
    image = bench_image(docker_client)
    remove_leftovers(docker_client)
    return docker_client, image


class EventStreamEnded(Exception):
    """The engine ended its event stream (it restarted or went away): the figures would be incomplete."""


# What a bench reports as "measurement failed" (exit 1) rather than as a traceback.
BENCH_ERRORS = (EventStreamEnded, ImageBuildError, *ENGINE_ERRORS)


class Event:
    """One container event: action (start/die), engine time in seconds, container id, labels."""

    __slots__ = ("action", "time", "container", "labels")

    def __init__(self, action, time_s, container, labels):
        self.action = action
        self.time = time_s
        self.container = container
        self.labels = labels

    def __repr__(self):
        return f"Event({self.action} {self.time:.3f} {self.container[:12]})"


class EventRecorder:
    """Records start and die events of containers carrying `label` (k=v) from now on."""

    def __init__(self, docker_client, label):
        self.events = []
        self.ended = False
        self._closing = False
        self._cond = threading.Condition()
        # The request is made here, so nothing that happens after __init__ is missed.
        self._stream = docker_client.api.events(decode=True, filters={
            "type": "container", "label": label, "event": ["start", "die"]})
        self._thread = threading.Thread(target=self._read, name=f"events {label}", daemon=True)
        self._thread.start()

    def _read(self):
        try:
            for raw in self._stream:
                actor = raw.get("Actor") or {}
                attributes = dict(actor.get("Attributes") or {})
                event = Event(raw.get("Action") or raw.get("status"), raw["timeNano"] / 1e9,
                              actor.get("ID") or raw.get("id"), attributes)
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        except (OSError, *ENGINE_ERRORS):
            pass  # close() shuts the socket under the read, or the engine went away
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def count(self, action):
        with self._cond:
            return sum(1 for event in self.events if event.action == action)

    def wait_count(self, action, count, deadline):
        """Wait until `count` events of `action` arrived or time.monotonic() passes `deadline`."""
        with self._cond:
            while sum(1 for event in self.events if event.action == action) < count:
                if self.ended and not self._closing:
                    raise EventStreamEnded(f"the engine's event stream ended after {len(self.events)} events")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    def snapshot(self):
        """The events so far; EventStreamEnded if the engine ended the stream before close()."""
        with self._cond:
            if self.ended and not self._closing:
                raise EventStreamEnded(f"the engine's event stream ended after {len(self.events)} events")
            return list(self.events)

    def close(self):
        with self._cond:
            self._closing = True
            ended = self.ended
        if not ended:
            try:
                self._stream.close()
            except OSError:
                pass  # the engine closed the connection first
        self._thread.join(5)


def remove_containers(docker_client, label):
    """Force-remove every container carrying `label` (k=v); return how many there were."""
    containers = docker_client.api.containers(all=True, filters={"label": label})
    for container in containers:
        try:
            docker_client.api.remove_container(container["Id"], force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            # 409: removal already in progress.
            if error.status_code != 409:
                raise
    return len(containers)


def by_slot(events, slot_label):
    """{slot: [events in time order]} for events that carry `slot_label`."""
    slots = {}
    for event in sorted(events, key=lambda e: e.time):
        slot = event.labels.get(slot_label)
        if slot is not None:
            slots.setdefault(int(slot), []).append(event)
    return slots


def idle_gaps(events, slot_label):
    """Seconds from each die in a slot to the next start in that slot."""
    gaps = []
    for slot_events in by_slot(events, slot_label).values():
        died_at = None
        for event in slot_events:
            if event.action == "die":
                died_at = event.time
            elif event.action == "start" and died_at is not None:
                gaps.append(event.time - died_at)
                died_at = None
    return gaps


def cleanup(docker_client, label):
    """remove_containers, retried while the engine does not answer; False if it never did."""
    deadline = time.monotonic() + CLEANUP_DEADLINE
    while True:
        try:
            remove_containers(docker_client, label)
            return True
        except ENGINE_ERRORS as error:
            if time.monotonic() > deadline:
                print(f"cleanup: containers labelled {label} may be left: {error}", file=sys.stderr)
                return False
            time.sleep(1.0)


def remove_leftovers(docker_client):
    """Remove containers an interrupted bench run left: bench factories and plain runs.

    A run whose process still lives (a bench running beside this one) is left alone (run_owner.py).
    """
    removed = 0
    for label, prefix in (("vac.factory", LEFTOVER_FACTORY_PREFIX), (BENCH_LABEL, LEFTOVER_RUN_PREFIX)):
        runs = {(container.get("Labels") or {}).get(label, "")
                for container in docker_client.api.containers(all=True, filters={"label": [label]})}
        for run in sorted(runs):
            if run.startswith(prefix) and not run_owner.alive(run):
                removed += remove_containers(docker_client, f"{label}={run}")
    return removed
