"""The [settings] section: each option read, checked and defaulted into Settings."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import re
from collections.abc import Mapping

from vac.config import values
from vac.config.files import RawValue
from vac.config.machinetypes import check_user_data_file
from vac.config.model import SCRATCH_BACKENDS, SINGULARITY_CGROUPS, Settings, frozen_mapping, singularity_slot_account
from vac.config.problems import ConfigProblem
from vac.config.values import BadValue
from vac.vocabulary.live_set import LIVE_SET_MAX_AGE_SECONDS, ORPHAN_GRACE_FLOOR_SECONDS

SECTION = "settings"
_DNS_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_HOSTPORT_RE = re.compile(r"[a-z0-9.-]+:[0-9]+")
_ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_.-]*\$?")
_VOLUME_GROUP_RE = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
_DOCKER_URL_SCHEMES = ("unix://", "tcp://", "http://", "https://", "ssh://")
# Old Vac spellings still found in sites' files, read as their current names.
DEPRECATED = {"hs06_per_cpu": "hs06_per_processor", "mb_per_cpu": "mb_per_processor",
              "overload_per_cpu": "overload_per_processor",
              "disk_gb_per_cpu": "disk_gb_per_processor", "scratch_gb": "disk_gb_per_processor",
              "cpu_per_machine": "processors_per_superslot",
              "vcpu_per_machine": "processors_per_superslot"}
PREFIXES = {"user_data_option_": "user_data_options", "user_data_file_": "user_data_files",
            "machinefeatures_option_": "machinefeatures_options"}


def _int(minimum):
    def convert(text):
        number = values.ini_int(text)
        values.check_minimum(number, minimum)
        return number
    return convert


def _positive_number(text):
    number = values.ini_number(text)
    if number <= 0:
        raise BadValue("must be greater than 0")
    return number


def _dns_name(text):
    if not _DNS_NAME_RE.fullmatch(text.lower()) or len(text) > 253:
        raise BadValue("not a DNS-like name (letters, digits, - and .)")
    return text.lower()


def _factories(text):
    """Factory names, '.' for this host; NAME:PORT where one answers VacQuery on another port than 995."""
    names = tuple(text.lower().split())
    for name in names:
        if name == ".":
            continue
        host, colon, port = name.rpartition(":")
        if colon:
            _port(port)
            _dns_name(host)
        else:
            _dns_name(name)
    return names


def _port(text):
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadValue(f"{text!r} is not a port between 1 and 65535")
    return int(text)


def _vacquery_listen(text):
    """IPv4 'IP:PORT' where vacquery answers the space, or 'no' to answer nobody."""
    if text.lower() == "no":
        return None
    host, colon, port = text.rpartition(":")
    if not colon:
        raise BadValue("must be IP:PORT (e.g. 0.0.0.0:995) or no")
    _port(port)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise BadValue(f"{host!r} is not an IPv4 address") from None
    return f"{host}:{int(port)}"


def _mjf_http_listen(text):
    """IPv4 'IP:PORT' of the mjf child: machines get URLs naming it, so it must be one address."""
    host, colon, port = text.rpartition(":")
    if not colon:
        raise BadValue("must be IP:PORT, e.g. 172.17.0.1:9713")
    _port(port)
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise BadValue(f"{host!r} is not an IPv4 address") from None
    if address.is_unspecified or address.is_multicast:
        # The URLs given to machines name this address: it must be one they can reach.
        raise BadValue(f"{host} is not one address of this host (machines' URLs name it)")
    return f"{address}:{int(port)}"


def _hostports(text):
    pairs = tuple(text.lower().split())
    for pair in pairs:
        if not _HOSTPORT_RE.fullmatch(pair):
            raise BadValue(f"{pair!r} is not host.domain:port")
    return pairs


def _account(text):
    if not _ACCOUNT_RE.fullmatch(text) or len(text) > 32:
        raise BadValue("not a valid user or group name")
    return text


def _singularity_user(text):
    _account(text)
    check_singularity_account(text)
    return text


def check_singularity_account(name):
    """BadValue unless `name` is an account of this host other than root (uid or gid 0)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise BadValue("no such user on this host") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise BadValue("Singularity machines must not run as root")


def _singularity_user_prefix(text):
    # The slot's two digits follow: the account names stay within useradd's 32 characters.
    if not _ACCOUNT_RE.fullmatch(text) or text.endswith("$") or len(text) > 29:
        raise BadValue("not a valid start of a user name")
    return text


def _singularity_command(text):
    _one_word(text)
    if "/" in text:
        values.check_absolute_path(text)
    return text


def _singularity_cgroups(text):
    if text not in SINGULARITY_CGROUPS:
        raise BadValue("must be one of " + ", ".join(SINGULARITY_CGROUPS))
    return text


def _volume_group(text):
    if not _VOLUME_GROUP_RE.fullmatch(text) or len(text) > 127:
        raise BadValue("not a valid LVM volume group name")
    return text


def _path(text):
    values.check_absolute_path(text)
    return text


def _one_word(text):
    values.check_text(text, limit=256)
    if not text or any(character.isspace() for character in text):
        raise BadValue("must be one word")
    return text


def _site_name(text):
    # The Site of every APEL record: printable ASCII within APEL's column.
    _one_word(text)
    values.check_apel_field(text)
    return text


def _scratch_backend(text):
    if text not in SCRATCH_BACKENDS:
        raise BadValue("must be one of " + ", ".join(SCRATCH_BACKENDS))
    return text


def _docker_url(text):
    _one_word(text)
    if not text.startswith(_DOCKER_URL_SCHEMES):
        raise BadValue("must start with one of " + ", ".join(_DOCKER_URL_SCHEMES))
    return text


def parse_metrics_listen(text):
    """(host, port) of a loopback 'IP:PORT' ('[::1]:PORT' for IPv6); BadValue otherwise.

    Metrics say what runs where: they are served on this host only, and a
    reverse proxy or node_exporter takes them further if a site wants that.
    """
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise BadValue("must be IP:PORT, e.g. 127.0.0.1:9712 or [::1]:9712")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BadValue(f"{host!r} is not an IP address (names are not accepted)") from None
    if not address.is_loopback:
        raise BadValue(f"{host} is not a loopback address: metrics are served on this host only")
    return str(address), int(port)


def _metrics_listen(text):
    host, port = parse_metrics_listen(text)
    if port == 0:
        raise BadValue("the port must be between 1 and 65535")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _metrics_textfile(text):
    values.check_absolute_path(text)
    # node_exporter's textfile collector reads only *.prom files.
    if not text.endswith(".prom"):
        raise BadValue("must end in .prom, the files node_exporter reads")
    return text


def _orphan_grace(text):
    # Below the floor a container might be younger than the live set the reaper
    # judges it on, were the engine's clock behind this host's.
    number = values.ini_int(text)
    if number < ORPHAN_GRACE_FLOOR_SECONDS:
        raise BadValue(f"must be at least {ORPHAN_GRACE_FLOOR_SECONDS}: the reaper acts on the "
                       f"root's record of the slots for up to {LIVE_SET_MAX_AGE_SECONDS} s, and a "
                       "younger container may be one that record does not show yet")
    return number


def _draining(text):
    # Vac drains only on "yes"; any other value means not draining.
    return text.lower() == "yes"


# The keeper's check is a stat of each repository: more often than this costs
# the automounter more than it keeps mounted.
MIN_CVMFS_KEEPALIVE_SECONDS = 5


CONVERTERS = {
    "vac_space": _dns_name, "factories": _factories, "total_processors": _int(1),
    "processors_per_superslot": _int(1), "mb_per_processor": _int(1),
    "hs06_per_processor": _positive_number, "disk_gb_per_processor": _int(1),
    "volume_group": _volume_group, "shutdown_time": _int(0), "draining": _draining,
    "overload_per_processor": _positive_number, "gocdb_sitename": _site_name,
    "udp_timeout_seconds": _positive_number, "vacmon_hostport": _hostports,
    "singularity_user": _singularity_user, "singularity_user_prefix": _singularity_user_prefix,
    "singularity_command": _singularity_command, "singularity_cgroups": _singularity_cgroups,
    "singularity_sweep_seconds": _int(1),
    "state_dir": _path, "control_socket": _path, "admin_group": _account,
    "readonly_group": _account, "slots": _int(1), "scratch_backend": _scratch_backend,
    "docker_url": _docker_url, "docker_timeout_seconds": _int(1), "pids_limit": _int(1),
    "heartbeat_timeout_seconds": _int(1), "factory_name": _dns_name,
    "reaper_interval_seconds": _int(1), "orphan_grace_seconds": _orphan_grace,
    "cvmfs_keepalive_seconds": _int(MIN_CVMFS_KEEPALIVE_SECONDS),
    "metrics_listen": _metrics_listen, "metrics_textfile": _metrics_textfile,
    "vacquery_listen": _vacquery_listen, "mjf_http_listen": _mjf_http_listen,
}


def read_settings(raw: Mapping[str, RawValue] | None, where: str, *,
                  cpu_count: int | None = None):
    """Settings from the [settings] options, or None; with (problems, warnings).

    `where` names the file(s) for problems of the section as a whole."""
    problems, warnings = [], []
    if raw is None:
        return None, [ConfigProblem(where, None, None, None, "no [settings] section")], warnings
    cpu_count = cpu_count or os.cpu_count() or 1
    fields = {key: {} for key in PREFIXES.values()}

    def problem(name, raw_value, reason, into=problems):
        into.append(ConfigProblem(raw_value.file, SECTION, name, raw_value.text, reason))

    for name, raw_value in raw.items():
        target = DEPRECATED.get(name, name)
        if target != name:
            if target in raw:
                problem(name, raw_value, f"deprecated Vac option ignored: {target} is also set",
                        warnings)
                continue
            problem(name, raw_value, f"deprecated Vac option, read as {target}", warnings)
        prefix = next((prefix for prefix in PREFIXES if name.startswith(prefix)), None)
        try:
            if prefix is not None:
                key = name[len(prefix):]
                fields[PREFIXES[prefix]][key] = _prefixed(prefix, name, raw_value.text)
            elif target in CONVERTERS:
                fields[target] = CONVERTERS[target](raw_value.text)
            else:
                problem(name, raw_value, "unknown option, ignored", warnings)
        except BadValue as error:
            problem(name, raw_value, str(error))
    if "draining" in raw and raw["draining"].text.lower() not in ("yes", "no"):
        problem("draining", raw["draining"], "only 'yes' drains; read as not draining", warnings)
    if "vac_space" not in raw:
        problems.append(ConfigProblem(where, SECTION, "vac_space", None,
                                      "required option is missing"))
    fields.setdefault("total_processors", cpu_count)
    if fields["total_processors"] > cpu_count:
        problem("total_processors", raw["total_processors"],
                f"more than the {cpu_count} logical processors of this host", warnings)
    if "volume_group" in fields and fields.get("scratch_backend", "directory") != "lvm":
        problem("volume_group", raw["volume_group"],
                "not used: set scratch_backend = lvm to put scratch space in it", warnings)
    if "singularity_user" in fields and "singularity_user_prefix" in fields:
        problem("singularity_user_prefix", raw["singularity_user_prefix"],
                "set singularity_user (one account) or singularity_user_prefix (one per slot), not both")
    elif "singularity_user_prefix" in fields:
        _check_slot_accounts(fields, raw["singularity_user_prefix"], problem)
    if problems:
        return None, problems, warnings
    for key in PREFIXES.values():
        fields[key] = frozen_mapping(sorted(fields[key].items()))
    return Settings(**fields), problems, warnings


def _check_slot_accounts(fields, raw_value, problem):
    """Every slot's account must exist and not be root (the first few failures are named)."""
    slots = fields.get("slots") or fields["total_processors"]
    bad = []
    for slot in range(slots):
        account = singularity_slot_account(fields["singularity_user_prefix"], slot)
        try:
            check_singularity_account(account)
        except BadValue as error:
            bad.append(f"{account}: {error}")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        problem("singularity_user_prefix", raw_value,
                f"each of the {slots} slots needs its account: " + "; ".join(bad[:3]) + more)


def _prefixed(prefix: str, name: str, text: str) -> str:
    values.check_option_suffix(name[len(prefix):])
    if prefix == "user_data_file_":
        check_user_data_file(text, False)
    elif prefix == "machinefeatures_option_":
        values.check_text(text)
    else:
        values.check_text(text, multiline=True)
    return text


# Settings read once, when vacd starts: the supervision tree and its children's
# specs (slots, the engine, the helpers' timings, what vacquery answers as),
# the state directory's lock and the control socket. A reload keeps their
# running values, so everything agrees until a restart, and names them.
# The rest take effect at reload: the scheduler reads them at each pass, and
# each new machine's terms carry them (scratch_backend and volume_group too:
# every machine's scratch is removed with the backend its terms name).
RESTART_ONLY = (
    "state_dir", "control_socket", "admin_group", "readonly_group", "slots", "factory_name",
    "docker_url", "docker_timeout_seconds", "heartbeat_timeout_seconds",
    "reaper_interval_seconds", "orphan_grace_seconds", "cvmfs_keepalive_seconds",
    "metrics_listen", "metrics_textfile", "vacquery_listen", "vac_space", "factories",
    "udp_timeout_seconds", "gocdb_sitename", "singularity_user", "singularity_user_prefix",
    "singularity_command", "singularity_cgroups", "singularity_sweep_seconds", "mjf_http_listen")


def changed_restart_only(running: Settings, loaded: Settings) -> tuple[str, ...]:
    """The restart-only settings `loaded` gives another value than `running` has."""
    return tuple(name for name in RESTART_ONLY if getattr(loaded, name) != getattr(running, name))


def keep_restart_only(running: Settings, loaded: Settings) -> Settings:
    """`loaded`, with every restart-only setting at its `running` value."""
    return dataclasses.replace(loaded, **{name: getattr(running, name) for name in RESTART_ONLY})
