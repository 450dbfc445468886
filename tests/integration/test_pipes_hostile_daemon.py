"""Hostile Vacuum Pipe documents against a whole running vacd.

A publisher can send anything: wrong types, any Unicode (lone surrogates
included), control characters, huge values, counts and nesting, bytes that
are not JSON at all. Batches of such documents, generated, are served by a
real HTTP server to a running vacd on the real engine. After each batch the
root is alive, `vac status` answers, machines still start, and the valid
entries of a document that holds any become machinetypes. At the end a vacd
started again on the cached copy, with the server failing, starts too.
"""

import json
import os
import time

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from daemon_client import daemon_factory  # noqa: F401 (a fixture)
from test_pipes_daemon import pipe_server, vac  # noqa: F401 (a fixture)

from vac.config.pipes import MAX_DOCUMENT_BYTES

BATCHES = 25
# Each machine says it is done and ends: the slots keep turning over.
USER_DATA = "#!/bin/sh\necho '200 Done' > /var/spool/joboutputs/shutdown_message\n"
PIPE_KEYS = ("accounting_fqan", "backoff_seconds", "container_command", "cvmfs_repositories",
             "fizzle_seconds", "disk_gb_per_processor", "heartbeat_file", "heartbeat_seconds",
             "image_signing_dn", "legacy_proxy", "machine_model", "max_processors",
             "max_wallclock_seconds", "min_processors", "min_wallclock_seconds", "root_image",
             "target_share", "tmp_binds", "user_data", "user_data_proxy", "user_data_option_x",
             "user_data_file_x", "machinegroup")

CONFIG = """[settings]
vac_space = hostile.vac.example
factory_name = {factory}
total_processors = 2
mb_per_processor = 128
overload_per_processor = 1000
docker_timeout_seconds = 10

[machinetype local-good]
machine_model = docker
root_image = docker://{image}
user_data = good.user_data
target_share = 1
max_wallclock_seconds = 300
fizzle_seconds = 0
backoff_seconds = 1

[vacuum_pipe exp]
vacuum_pipe_url = {url}
target_share = 1
"""


def good_entry(image):
    return {"suffix": "good", "machine_model": "docker", "root_image": f"docker://{image}",
            "user_data": "good.user_data", "target_share": 1, "max_wallclock_seconds": 300,
            "fizzle_seconds": 0, "backoff_seconds": 1}


# Any text a JSON document can carry: every code point, lone surrogates too.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
HOSTILE_TEXT = st.one_of(
    ANY_TEXT,
    st.sampled_from(["\ud800", "\udfff", "a\x00b", "\x1b[2J", "\u202eevil", "é" * 300, "../../etc/shadow",
                     "/cvmfs/../etc", "docker://x;rm -rf /", "$(reboot)", "##user_data_option_x##" * 50]),
    st.builds(lambda n: "A" * n, st.sampled_from([256, 70_000, 2_000_000])),
)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                        st.floats(allow_nan=False), HOSTILE_TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(ANY_TEXT, inner, max_size=4)), max_leaves=12)
HOSTILE_ENTRY = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(PIPE_KEYS + ("suffix",)), ANY_TEXT), JSON_VALUE, max_size=8),
    st.fixed_dictionaries({"suffix": st.one_of(HOSTILE_TEXT, st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))},
                          optional={key: JSON_VALUE for key in PIPE_KEYS}),
    st.builds(lambda n: {"suffix": "many", "cvmfs_repositories": " ".join(f"r{i}.cern.ch" for i in range(n))},
              st.sampled_from([100, 16_000])),
    JSON_VALUE,
)


@st.composite
def nearly_good_entries(draw, image):
    """A complete entry with one or two options hostile: what gets furthest towards a placement."""
    entry = dict(good_entry(image), suffix=draw(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)))
    for key in draw(st.lists(st.sampled_from(PIPE_KEYS), min_size=1, max_size=2, unique=True)):
        entry[key] = draw(HOSTILE_TEXT | JSON_VALUE)
    return entry


def with_one_bad_value(image, key, value):
    """A document of the good entry and a complete one that differs in one value; the bad one
    must be placed if it is taken at all, so that it reaches everything a machine's terms reach."""
    bad = dict(good_entry(image), suffix="bad", **{key: value})
    return json.dumps({"machinetypes": [good_entry(image), bad]}).encode(), True, ("exp-bad",)


@st.composite
def documents(draw, image):
    """(the bytes served, whether the good entry must become a machinetype, machinetypes that
    must be placed once if they become machinetypes)."""
    shape = draw(st.sampled_from(["entries", "entries", "entries", "garbage", "huge", "deep", "many", "not-object"]))
    if shape == "garbage":
        return draw(st.binary(max_size=2000)), False, ()
    if shape == "deep":
        depth = draw(st.sampled_from([100, 5000, 200_000]))
        return b'{"machinetypes": ' + b"[" * depth + b"]" * depth + b"}", False, ()
    if shape == "huge":
        return json.dumps({"machinetypes": [good_entry(image)], "pad": "x" * 3_000_000}).encode(), False, ()
    if shape == "many":
        return json.dumps({"machinetypes": [good_entry(image)] + [{"suffix": f"e{i}"} for i in range(20_000)]}
                          ).encode(), False, ()
    if shape == "not-object":
        return json.dumps(draw(JSON_VALUE)).encode(), False, ()
    hostile = draw(st.lists(HOSTILE_ENTRY | nearly_good_entries(image), max_size=6))
    position = draw(st.integers(min_value=0, max_value=len(hostile)))
    entries = hostile[:position] + [good_entry(image)] + hostile[position:]
    document = {"cache_seconds": draw(st.one_of(st.sampled_from([0, -1, 10**12]), JSON_VALUE)),
                "machinetypes": entries}
    # A second entry for "good" skips that one, and only the first counts.
    first_good = next(i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("suffix") == "good")
    body = json.dumps(document).encode()
    return body, first_good == position and len(body) <= MAX_DOCUMENT_BYTES and is_strict_json(body), ()


def is_strict_json(body):
    """False for JSON with Infinity or NaN, which Python writes and a pipe may not hold."""
    def refuse(name):
        raise ValueError(name)
    try:
        json.loads(body, parse_constant=refuse)
    except ValueError:
        return False
    return True


def machines_created_since(state_dir, since):
    root = state_dir / "machines"
    found = []
    for directory in root.iterdir() if root.exists() else ():
        try:
            record = json.loads((directory / "record.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if record["created"] >= since:
            found.append(record["machinetype"])
    return found


def wait_for(predicate, what, daemon, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        assert daemon.proc.poll() is None, f"vacd ended while waiting for {what}:\n{daemon.text()[-6000:]}"
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}\n{daemon.text()[-6000:]}"
        time.sleep(0.2)


@pytest.mark.docker
def test_hostile_pipe_documents_never_take_the_factory_down(
        tmp_path, factory_label, daemon_factory, pipe_server, busybox_image):  # noqa: F811
    state_dir, config = tmp_path / "state", tmp_path / "vac.conf"
    for files in ("local-good", "exp"):
        (state_dir / "machinetypes" / files / "files").mkdir(parents=True)
        (state_dir / "machinetypes" / files / "files" / "good.user_data").write_text(USER_DATA)

    def write_config(path):
        tmp = config.with_suffix(".tmp")
        tmp.write_text(CONFIG.format(factory=factory_label, image=busybox_image, url=pipe_server.base + path))
        os.rename(tmp, config)

    def wait_for_document(path):
        """The status once it shows what the document at `path` gave."""
        wait_for(lambda: pipe_server.paths.get(path), f"the fetch of {path}", daemon)

        def settled():
            status = vac(tmp_path, "status")
            pipe = status["pipes"].get("exp", {})
            return pipe.get("url") == pipe_server.base + path and (
                pipe.get("fetched_at") is not None or pipe.get("error") not in (None, "not fetched yet")) and status
        return wait_for(settled, f"status showing the document of {path}", daemon)

    write_config("/pipe-0.json")
    pipe_server.body = json.dumps({"machinetypes": [good_entry(busybox_image)]}).encode()
    daemon = daemon_factory(config)
    wait_for(lambda: "exp-good" in machines_created_since(state_dir, 0), "a first pipe machine", daemon)
    batch = [0]

    @settings(max_examples=BATCHES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(documents(busybox_image))
    @example(with_one_bad_value(busybox_image, "accounting_fqan", "\ud800"))
    @example(with_one_bad_value(busybox_image, "image_signing_dn", "/DC=ch/CN=\udfff"))
    @example(with_one_bad_value(busybox_image, "user_data_option_x", "a\ud800b"))
    @example(with_one_bad_value(busybox_image, "accounting_fqan", "/vo.example/Rôle=pilot"))
    @example(with_one_bad_value(busybox_image, "accounting_fqan", "/vo" + "x" * 300))
    def serve_one(document):
        body, good_expected, must_place = document
        batch[0] += 1
        path = f"/pipe-{batch[0]}.json"
        started = time.time()
        pipe_server.body = body
        # A new URL is a new pipe to the fetcher: it is fetched at once, whatever cache_seconds said before.
        write_config(path)
        status = wait_for_document(path)
        assert status["state"] == "running" and not status["degraded"], status
        if good_expected:
            wait_for(lambda: "exp-good" in vac(tmp_path, "machinetypes"),
                     "the valid entry as a machinetype", daemon)
        wait_for(lambda: machines_created_since(state_dir, started), "a machine started after the batch", daemon)
        for name in set(must_place) & set(status["pipes"]["exp"]["machinetypes"]):
            wait_for(lambda: name in machines_created_since(state_dir, started), f"a machine of {name}", daemon)

    serve_one()

    # The last good copy is what a restarted vacd starts on while the server fails.
    pipe_server.body = json.dumps({"machinetypes": [good_entry(busybox_image)]}).encode()
    write_config("/pipe-last.json")
    assert "exp-good" in wait_for_document("/pipe-last.json")["pipes"]["exp"]["machinetypes"]
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.text()[-6000:]
    pipe_server.status = 500
    restarted = daemon_factory(config, log_name="vacd-2.log")
    since = time.time()
    wait_for(lambda: "exp-good" in machines_created_since(state_dir, since), "a pipe machine from the cached copy",
             restarted, timeout=60)
