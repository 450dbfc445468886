"""The frozen, typed configuration the rest of vac reads."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vac.config.problems import ConfigProblem

MACHINE_MODELS = ("docker", "singularity")
SINGULARITY_CGROUPS = ("auto", "systemd", "vac")


def singularity_slot_account(prefix: str, slot: int) -> str:
    """Slot 3's account with prefix vacsing: vacsing03 (two digits at least, like machine names)."""
    return f"{prefix}{slot:02d}"
SCRATCH_BACKENDS = ("directory", "loop", "lvm")
# Where the mjf child listens when mjf_http_listen is unset: this port on the
# address of Docker's default bridge, which containers reach as their gateway.
DEFAULT_MJF_HTTP_BRIDGE = "docker0"
DEFAULT_MJF_HTTP_PORT = 9713
# Vac's volume group name, used when scratch_backend = lvm and volume_group is unset.
DEFAULT_VOLUME_GROUP = "vac_volume_group"

EMPTY: Mapping[str, str] = MappingProxyType({})


def frozen_mapping(items) -> Mapping:
    """A read-only mapping, so frozen objects stay frozen all the way down."""
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class Settings:
    """The [settings] section: Vac's options with Vac's defaults, plus vac's own."""

    vac_space: str
    total_processors: int
    factories: tuple[str, ...] = (".",)
    processors_per_superslot: int = 1
    mb_per_processor: int = 2048
    hs06_per_processor: float | None = None
    disk_gb_per_processor: int | None = None
    volume_group: str | None = None
    shutdown_time: int | None = None
    draining: bool = False
    overload_per_processor: float = 1.25
    gocdb_sitename: str | None = None
    udp_timeout_seconds: float = 10.0
    vacmon_hostport: tuple[str, ...] = ()
    singularity_user: str | None = None
    # Options of vac's own for Singularity machines (docs/singularity.md).
    # One account per slot, <prefix>NN, instead of singularity_user's one for all.
    singularity_user_prefix: str | None = None
    # The Apptainer or Singularity executable; None: apptainer, else singularity, on PATH.
    singularity_command: str | None = None
    # Where machine cgroups go: "systemd" (a transient scope each), "vac" (a /vac
    # subtree of our own) or "auto" (systemd when it is PID 1).
    singularity_cgroups: str = "auto"
    # How often the reaper looks for processes of the accounts outside their machines.
    singularity_sweep_seconds: int = 2
    user_data_options: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    user_data_files: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    machinefeatures_options: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    # Options of vac's own, not in Vac.
    state_dir: str = "/var/lib/vac"
    control_socket: str = "/run/vac/control.sock"
    admin_group: str | None = None
    readonly_group: str | None = None
    slots: int | None = None
    scratch_backend: str = "directory"
    docker_url: str = "unix:///var/run/docker.sock"
    docker_timeout_seconds: int = 30
    pids_limit: int | None = None
    heartbeat_timeout_seconds: int = 30
    # This factory's name in machine names, labels and records. None: this host's FQDN.
    factory_name: str | None = None
    # How often the reaper looks for orphaned containers, and how old one must be.
    reaper_interval_seconds: int = 60
    orphan_grace_seconds: int = 120
    # How often the cvmfs-keeper looks at each repository: well below autofs's usual
    # 300 s timeout, so the repositories machines need are never let expire.
    cvmfs_keepalive_seconds: int = 30
    # Where the metrics exporter serves GET /metrics (a loopback IP:PORT). None: not served.
    metrics_listen: str | None = None
    # A node_exporter textfile the metrics exporter rewrites atomically. None: not written.
    metrics_textfile: str | None = None
    # Where vacquery answers the other factories' VacQuery (IPv4 IP:PORT). None: it answers nobody.
    vacquery_listen: str | None = "0.0.0.0:995"
    # Where the mjf child serves Machine/Job Features over HTTP (IPv4 IP:PORT).
    # None: the address of Docker's docker0 bridge, port DEFAULT_MJF_HTTP_PORT.
    mjf_http_listen: str | None = None

    def __post_init__(self):
        # slots defaults to one per processor, the most machines the processors allow.
        if self.slots is None:
            object.__setattr__(self, "slots", self.total_processors)

    def singularity_account(self, slot: int) -> str | None:
        """The account slot `slot`'s Singularity machines run as, or None if none is set."""
        if self.singularity_user_prefix is not None:
            return singularity_slot_account(self.singularity_user_prefix, slot)
        return self.singularity_user

    @property
    def singularity_accounts(self) -> tuple[str, ...]:
        """Every account the factory's Singularity machines may run as."""
        if self.singularity_user_prefix is not None:
            return tuple(singularity_slot_account(self.singularity_user_prefix, slot) for slot in range(self.slots))
        return (self.singularity_user,) if self.singularity_user is not None else ()

    @property
    def hs06_per_processor_or_default(self) -> float:
        """HS06 per processor used internally: 1.0 when the site has not set it."""
        return 1.0 if self.hs06_per_processor is None else self.hs06_per_processor

    @property
    def effective_volume_group(self) -> str | None:
        """The LVM volume group scratch volumes go in, when the lvm backend is chosen."""
        if self.scratch_backend != "lvm":
            return None
        return self.volume_group or DEFAULT_VOLUME_GROUP

    @property
    def machinetypes_dir(self) -> str:
        """Where each machinetype's files/ directory lives, as in Vac."""
        return os.path.join(self.state_dir, "machinetypes")


# Vac's machinetype defaults; modules that meet a machinetype the configuration
# no longer (or not yet) has fall back on the same values.
DEFAULT_MAX_WALLCLOCK_SECONDS = 86400
DEFAULT_BACKOFF_SECONDS = 10
DEFAULT_FIZZLE_SECONDS = 600


@dataclass(frozen=True)
class Machinetype:
    """One kind of logical machine, complete and checked, from a file or a pipe."""

    name: str
    machine_model: str
    root_image: str
    user_data: str
    container_command: str = "/user_data"
    cvmfs_repositories: tuple[str, ...] = ()
    tmp_binds: tuple[str, ...] = ()
    target_share: float = 0.0
    min_processors: int = 1
    max_processors: int = 1
    max_wallclock_seconds: int = DEFAULT_MAX_WALLCLOCK_SECONDS
    min_wallclock_seconds: int = DEFAULT_MAX_WALLCLOCK_SECONDS
    backoff_seconds: int = DEFAULT_BACKOFF_SECONDS
    fizzle_seconds: int = DEFAULT_FIZZLE_SECONDS
    heartbeat_file: str | None = None
    heartbeat_seconds: int = 0
    accounting_fqan: str | None = None
    machinegroup: str = ""
    machines_dir_days: float = 3.0
    disk_gb_per_processor: int | None = None
    image_signing_dn: str | None = None
    user_data_proxy: bool = False
    legacy_proxy: bool = False
    # MACHINEFEATURES and JOBFEATURES are http URLs served by the mjf child,
    # not the mounted paths (which stay mounted): what DIRAC's readers need.
    mjf_http: bool = False
    user_data_options: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    user_data_files: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    # The directory under machinetypes/ whose files/ holds this type's files:
    # the machinetype's name, or for pipe machinetypes the pipe's prefix (as Vac).
    files_name: str = ""
    # The pipe prefix this machinetype came from, None for a local one.
    pipe: str | None = None

    @property
    def started(self) -> bool:
        """Whether the scheduler may start it at all: a share of 0 or less never starts."""
        return self.target_share > 0


@dataclass(frozen=True)
class VacuumPipe:
    """A [vacuum_pipe PREFIX] section: where the pipe is and what it adds to its machinetypes."""

    prefix: str
    url: str
    target_share: float = 0.0
    # Checked machinetype options from the section, copied into each generated type.
    options: Mapping[str, object] = field(default_factory=lambda: EMPTY)
    file: str = ""


@dataclass(frozen=True)
class Configuration:
    """Everything read from the files: settings, machinetypes, pipes, and where it came from."""

    settings: Settings
    machinetypes: Mapping[str, Machinetype] = field(default_factory=lambda: EMPTY)
    vacuum_pipes: Mapping[str, VacuumPipe] = field(default_factory=lambda: EMPTY)
    # The checked options of every local [machinetype] section, as written; pipes
    # need them because local options take precedence over the pipe's.
    machinetype_options: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: EMPTY)
    files: tuple[str, ...] = ()
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)


def apply_overrides(config: Configuration, *, state_dir: str | None = None,
                    control_socket: str | None = None) -> Configuration:
    """The configuration with command-line values in place of the files' ones."""
    changes = {}
    if state_dir is not None:
        changes["state_dir"] = os.path.abspath(state_dir)
    if control_socket is not None:
        changes["control_socket"] = os.path.abspath(control_socket)
    if not changes:
        return config
    return dataclasses.replace(config, settings=dataclasses.replace(config.settings, **changes))
