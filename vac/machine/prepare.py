"""From the root's plain machine terms (Place.machine) to a machine ready to start.

MachineTerms reads the plain dict once and checks it; the adapters turn it into
the inputs of mjf, userdata, scratch and the runtime (in the runtime's neutral
terms: the runtime maps them to its own paths and API); and
prepare_machine() does the (blocking) work of the PREPARING state. The terms are
kept in the machine directory (machine.json), so a restarted slot worker knows
every limit of a machine it adopts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from vac.config.model import DEFAULT_VOLUME_GROUP
from vac.machine import mjf, mjf_http, scratch, userdata, x509_proxy
from vac.machine.atomicfile import write_atomic
from vac.machine.layout import PRIVATE_FILE_MODE, MachinePaths, create_machine_directory
from vac.runtimes.base import ContainerRequest, PayloadPaths

log = logging.getLogger(__name__)

TERMS_FILE_NAME = "machine.json"
MAX_TERMS_BYTES = 256 * 1024
MIB = 1048576
# Used when the site sets no pids_limit: room for the threads of many payload jobs.
DEFAULT_PIDS_PER_PROCESSOR = 4096


class BadTerms(ValueError):
    """The machine terms lack a field or hold a value of the wrong kind."""


def _require(mapping: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if key not in mapping:
        raise BadTerms(f"{where}: {key} is missing")
    value = mapping[key]
    # bool is an int to isinstance, and never a valid count or time here.
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise BadTerms(f"{where}: {key} = {value!r} is not of type {kinds}")
    return value


@dataclass(frozen=True)
class MachineTerms:
    """One machine's terms: the Place.machine dict, checked, with named access."""
    raw: Mapping[str, Any]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> MachineTerms:
        """Check the plain dict built by supervisor.machine_spec.machine_spec; BadTerms if it is not one."""
        if not isinstance(spec, Mapping):
            raise BadTerms(f"machine terms are a {type(spec).__name__}, not a map")
        _require(spec, "uuid", str, "machine")
        MachinePaths.for_machine(Path("/"), spec["uuid"])  # canonical UUID or ValueError
        for key, kinds in (("slot", int), ("machine_name", str), ("processors", int), ("shutdown_at", int),
                           ("superslot", int), ("placed_at", (int, float)), ("machinetype", dict),
                           ("factory", dict)):
            _require(spec, key, kinds, "machine")
        for key, kinds in (("name", str), ("machine_model", str), ("root_image", str), ("user_data", str),
                           ("container_command", str), ("fizzle_seconds", int), ("heartbeat_seconds", int)):
            _require(spec["machinetype"], key, kinds, "machinetype")
        for key, kinds in (("vac_space", str), ("factory_name", str), ("mb_per_processor", int),
                           ("state_dir", str), ("machinetypes_dir", str)):
            _require(spec["factory"], key, kinds, "factory")
        if spec["processors"] < 1:
            raise BadTerms(f"machine: processors = {spec['processors']} is less than 1")
        return cls(spec)

    @property
    def uuid(self) -> str:
        return self.raw["uuid"]

    @property
    def slot(self) -> int:
        return self.raw["slot"]

    @property
    def machine_name(self) -> str:
        return self.raw["machine_name"]

    @property
    def processors(self) -> int:
        return self.raw["processors"]

    @property
    def shutdown_at(self) -> int:
        return self.raw["shutdown_at"]

    @property
    def superslot(self) -> int:
        return self.raw["superslot"]

    @property
    def placed_at(self) -> float:
        return float(self.raw["placed_at"])

    @property
    def machinetype(self) -> Mapping[str, Any]:
        return self.raw["machinetype"]

    @property
    def factory(self) -> Mapping[str, Any]:
        return self.raw["factory"]

    @property
    def machinetype_name(self) -> str:
        return self.machinetype["name"]

    @property
    def fizzle_seconds(self) -> int:
        return self.machinetype["fizzle_seconds"]

    @property
    def heartbeat_file(self) -> str | None:
        return self.machinetype.get("heartbeat_file") or None

    @property
    def heartbeat_seconds(self) -> int:
        return self.machinetype["heartbeat_seconds"]

    @property
    def state_dir(self) -> Path:
        return Path(self.factory["state_dir"])

    def with_shutdown_at(self, shutdown_at: int) -> MachineTerms:
        """The same terms with a new shutdown time (a lowered global shutdown_time)."""
        return MachineTerms({**self.raw, "shutdown_at": int(shutdown_at)})


# ---------------------------------------------------------------- the terms on disk


def write_terms(paths: MachinePaths, terms: MachineTerms) -> None:
    """Keep the terms in the machine directory (0600: user_data options may hold secrets)."""
    data = json.dumps(dict(terms.raw), sort_keys=True, indent=1).encode() + b"\n"
    write_atomic(paths.root / TERMS_FILE_NAME, data, PRIVATE_FILE_MODE)


def read_terms(paths: MachinePaths) -> MachineTerms | None:
    """The terms kept in the machine directory, or None if missing or damaged (logged)."""
    path = paths.root / TERMS_FILE_NAME
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_TERMS_BYTES + 1)
        if len(raw) > MAX_TERMS_BYTES:
            raise BadTerms(f"larger than {MAX_TERMS_BYTES} bytes")
        return MachineTerms.from_spec(json.loads(raw))
    except FileNotFoundError:
        log.warning("machine %s: %s is missing", paths.machine_uuid, path)
    except (OSError, ValueError) as error:
        log.warning("machine %s: cannot use %s: %s", paths.machine_uuid, path, error)
    return None


# ---------------------------------------------------------------- adapters


def files_directory(terms: MachineTerms) -> Path:
    """The machinetype's files/ directory: <machinetypes_dir>/<files_name>/files (Vac's layout)."""
    name = terms.machinetype.get("files_name") or terms.machinetype_name
    return Path(terms.factory["machinetypes_dir"]) / name / "files"


def container_owner(terms: MachineTerms) -> tuple[int, int] | None:
    """(uid, gid) of the account a Singularity machine runs as; None for Docker (root in the container).

    BadTerms if a Singularity machine has no account, or the account is gone or is root.
    """
    if terms.machinetype["machine_model"] != "singularity":
        return None
    account = terms.factory.get("singularity_account")
    if not isinstance(account, str) or not account:
        raise BadTerms("a singularity machine needs singularity_user or singularity_user_prefix")
    try:
        entry = pwd.getpwnam(account)
    except KeyError:
        raise BadTerms(f"the Singularity account {account} does not exist on this host") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise BadTerms(f"the Singularity account {account} is root's: refused")
    return entry.pw_uid, entry.pw_gid


def root_image_path(terms: MachineTerms) -> str:
    """The image as the runtime takes it: a Singularity file name is resolved under the machinetype's files/."""
    image = terms.machinetype["root_image"]
    if terms.machinetype["machine_model"] != "singularity" or image.startswith("/") or userdata.is_http_url(image):
        return image
    return str(files_directory(terms) / image)


def scratch_bytes(terms: MachineTerms) -> int | None:
    """The machine's scratch size: the machinetype's disk_gb_per_processor, else the factory's."""
    per_processor = terms.machinetype.get("disk_gb_per_processor")
    if per_processor is None:
        per_processor = terms.factory.get("disk_gb_per_processor")
    return scratch.scratch_size_bytes(per_processor, terms.processors)


def memory_bytes(terms: MachineTerms) -> int:
    """The machine's hard memory limit: mb_per_processor x processors MiB."""
    return terms.factory["mb_per_processor"] * terms.processors * MIB


def mjf_inputs(terms: MachineTerms, start_time: float) -> mjf.MjfInputs:
    """What the machine's Machine/Job Features are computed from."""
    return mjf.MjfInputs(
        machine_uuid=terms.uuid, processors=terms.processors, start_time=int(start_time),
        shutdown_time=terms.shutdown_at, mb_per_processor=terms.factory["mb_per_processor"],
        hs06_per_processor=terms.factory.get("hs06_per_processor"), scratch_bytes=scratch_bytes(terms),
        # No swap: the container's memory+swap limit equals its memory limit.
        max_swap_bytes=0, notice_seconds=mjf.SHUTDOWN_NOTICE_SECONDS,
        machinefeatures_options=dict(terms.factory.get("machinefeatures_options") or {}))


def features_urls(terms: MachineTerms, paths: MachinePaths) -> mjf_http.FeaturesUrls | None:
    """The machine's Machine/Job Features URLs if its machinetype sets mjf_http, else None.

    Makes the machine's token the first time. BadTerms if the root gave no server address.
    """
    if not terms.machinetype.get("mjf_http"):
        return None
    base_url = terms.factory.get("mjf_http_url")
    if not isinstance(base_url, str) or not base_url.startswith("http://"):
        raise BadTerms("mjf_http: the terms name no server for Machine/Job Features over HTTP")
    return mjf_http.features_urls(base_url, terms.uuid, mjf_http.ensure_token(paths))


def template_values(terms: MachineTerms, payload_paths: PayloadPaths,
                    urls: mjf_http.FeaturesUrls | None = None) -> userdata.TemplateValues:
    """The values that fill the user_data template (option files are read here)."""
    root_image = terms.machinetype["root_image"]
    files = dict(terms.machinetype.get("user_data_files") or {})
    return userdata.TemplateValues(
        space=terms.factory["vac_space"], machinetype=terms.machinetype_name,
        machine_hostname=terms.machine_name, manager_hostname=terms.factory["factory_name"],
        machine_uuid=terms.uuid,
        # Vac gave Docker containers the paths they see; mjf_http machinetypes get the URLs.
        machinefeatures_url=urls.machinefeatures if urls else payload_paths.machinefeatures,
        jobfeatures_url=urls.jobfeatures if urls else payload_paths.jobfeatures,
        joboutputs_url=payload_paths.joboutputs,
        root_image_url=root_image if userdata.is_http_url(root_image) else None,
        site=terms.factory.get("gocdb_sitename"),
        options=dict(terms.machinetype.get("user_data_options") or {}),
        file_contents=userdata.read_option_files(files, files_directory(terms)))


def proxy_text(terms: MachineTerms, now: float) -> str | None:
    """The machine's X.509 proxy PEM if its machinetype sets user_data_proxy, else None.

    The certificate and key are read from the machinetype's files/ directory,
    which for a pipe's machinetype is the site's directory of that pipe: a
    pipe cannot point vac at any other credential.
    """
    if not terms.machinetype.get("user_data_proxy"):
        return None
    files_dir = files_directory(terms)
    credentials = x509_proxy.read_credentials(files_dir)
    where = str(credentials.cert_path)
    if credentials.key_path != credentials.cert_path:
        where += f" (key {credentials.key_path})"
    return x509_proxy.make_proxy(credentials.cert_pem, credentials.key_pem, proxy_cn=terms.machinetype_name,
                                 legacy=bool(terms.machinetype.get("legacy_proxy")), now=now,
                                 not_after=terms.shutdown_at, where=where)


def container_request(terms: MachineTerms, paths: MachinePaths, tmp_binds: list[tuple[Path, str]],
                      generation: int, urls: mjf_http.FeaturesUrls | None = None) -> ContainerRequest:
    """The runtime request of the machine's container; `urls` go in MACHINEFEATURES and JOBFEATURES."""
    pids_limit = terms.factory.get("pids_limit") or DEFAULT_PIDS_PER_PROCESSOR * terms.processors
    return ContainerRequest(
        factory=terms.factory["factory_name"], slot=terms.slot, machine_uuid=terms.uuid,
        machinetype=terms.machinetype_name, generation=generation, machine_name=terms.machine_name,
        image=root_image_path(terms), command=terms.machinetype["container_command"],
        model=terms.machinetype["machine_model"], account=terms.factory.get("singularity_account"),
        scratch=paths.scratch,
        processors=terms.processors, memory_bytes=memory_bytes(terms), pids_limit=pids_limit,
        user_data=paths.user_data, machinefeatures=paths.machinefeatures, jobfeatures=paths.jobfeatures,
        joboutputs=paths.joboutputs,
        cvmfs_repositories=tuple(terms.machinetype.get("cvmfs_repositories") or ()),
        tmp_binds=tuple(tmp_binds),
        machinefeatures_url=urls.machinefeatures if urls else None,
        jobfeatures_url=urls.jobfeatures if urls else None)


def scratch_backend(factory: Mapping[str, Any]) -> scratch.ScratchBackend:
    """The scratch backend the factory's scratch_backend setting names."""
    backend = factory.get("scratch_backend") or "directory"
    if backend == "directory":
        return scratch.DirectoryScratch()
    if backend == "loop":
        return scratch.LoopScratch()
    if backend == "lvm":
        return scratch.LvmScratch(factory.get("volume_group") or DEFAULT_VOLUME_GROUP)
    raise BadTerms(f"factory: scratch_backend = {backend!r} is not directory, loop or lvm")


# ---------------------------------------------------------------- PREPARING


@dataclass(frozen=True, slots=True)
class PreparedMachine:
    """A machine whose directory, MJF, user_data and scratch exist."""
    paths: MachinePaths
    tmp_binds: tuple[tuple[Path, str], ...]
    # Its Machine/Job Features URLs (mjf_http), None for paths.
    urls: mjf_http.FeaturesUrls | None = None


def create_directory(terms: MachineTerms) -> MachinePaths:
    """Create the machine directory and keep the terms in it (first step, before the record)."""
    owner = container_owner(terms)
    paths = create_machine_directory(terms.state_dir, terms.uuid, container_gid=owner[1] if owner else None,
                                     container_owner=owner)
    write_terms(paths, terms)
    return paths


def prepare_machine(terms: MachineTerms, paths: MachinePaths, start_time: float, payload_paths: PayloadPaths,
                    backend: scratch.ScratchBackend | None = None) -> PreparedMachine:
    """Write MJF and user_data and make the scratch space; may block (HTTP fetch, mkfs).

    Raises userdata.UserDataError, scratch.ScratchError or OSError when the
    machine cannot be prepared; every step may be repeated after a restart.
    """
    mjf.write_mjf(paths, mjf_inputs(terms, start_time))
    urls = features_urls(terms, paths)
    # The values (and their option files) first: a bad option file fails before any fetch.
    values = template_values(terms, payload_paths, urls)
    # The proxy before any fetch too: an expired certificate fails the machine at once.
    proxy = proxy_text(terms, start_time)
    values = dataclasses.replace(values, x509_proxy=proxy)
    template = userdata.obtain_template(terms.machinetype["user_data"], files_directory(terms))
    owner = container_owner(terms)
    userdata.write_user_data(paths, userdata.render(template, values), holds_key=proxy is not None, owner=owner)
    if backend is None:
        backend = scratch_backend(terms.factory)
    scratch_dir = backend.create(paths, scratch_bytes(terms), owner)
    binds = scratch.make_tmp_binds(scratch_dir, list(terms.machinetype.get("tmp_binds") or ()), owner)
    return PreparedMachine(paths, tuple(binds), urls)
