"""From the configuration to the plain terms the scheduler and slots use (pure)."""

import dataclasses
from collections.abc import Mapping

from vac.supervisor.scheduler import FactoryTerms, MachinetypeTerms


def factory_terms(settings):
    """The factory-wide scheduling terms of a Settings object."""
    return FactoryTerms(
        total_processors=settings.total_processors,
        processors_per_superslot=settings.processors_per_superslot,
        hs06_per_processor=settings.hs06_per_processor,
        overload_per_processor=settings.overload_per_processor,
        shutdown_time=settings.shutdown_time,
        draining=settings.draining)


def machinetype_terms(machinetype, paused=False):
    """The scheduling terms of one Machinetype."""
    return MachinetypeTerms(
        name=machinetype.name,
        target_share=machinetype.target_share,
        machinegroup=machinetype.machinegroup or None,
        min_processors=machinetype.min_processors,
        max_processors=machinetype.max_processors,
        min_wallclock_seconds=machinetype.min_wallclock_seconds,
        max_wallclock_seconds=machinetype.max_wallclock_seconds,
        backoff_seconds=machinetype.backoff_seconds,
        fizzle_seconds=machinetype.fizzle_seconds,
        cvmfs_repositories=tuple(machinetype.cvmfs_repositories),
        paused=paused)


def needed_repositories(machinetypes):
    """The CernVM-FS repositories any of these Machinetypes ({name: Machinetype}) needs, sorted."""
    return sorted({repository for machinetype in machinetypes.values()
                   for repository in machinetype.cvmfs_repositories})


def plain(value):
    """A frozen config value as msgpack-able plain data (mappings, lists, scalars)."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


FACTORY_KEYS = (
    "vac_space", "mb_per_processor", "hs06_per_processor", "disk_gb_per_processor",
    "gocdb_sitename", "machinefeatures_options", "user_data_options", "user_data_files",
    "state_dir", "scratch_backend", "volume_group", "docker_url", "docker_timeout_seconds",
    "pids_limit", "machinetypes_dir", "singularity_user")


def machine_spec(*, uuid, slot, factory_name, machine_name, settings, machinetype, placement,
                 placed_at):
    """Everything a slot worker needs to run one machine, as plain data (Place.machine)."""
    factory = {key: plain(getattr(settings, key)) for key in FACTORY_KEYS}
    factory["factory_name"] = factory_name
    return {
        "uuid": uuid,
        "slot": slot,
        "machine_name": machine_name,
        "machinetype": plain(machinetype),
        "processors": placement.processors,
        "shutdown_at": int(placement.shutdown_at),
        "superslot": placement.superslot,
        "placed_at": placed_at,
        "factory": factory,
    }
