"""From the configuration to the scheduler's plain inputs (pure)."""

from vac.supervisor.scheduler import FactoryCapacity, MachinetypeDemand


def factory_capacity(settings):
    """What the factory as a whole offers the scheduler, from a Settings object."""
    return FactoryCapacity(
        total_processors=settings.total_processors,
        processors_per_superslot=settings.processors_per_superslot,
        hs06_per_processor=settings.hs06_per_processor,
        overload_per_processor=settings.overload_per_processor,
        shutdown_time=settings.shutdown_time,
        draining=settings.draining)


def machinetype_demand(machinetype, paused=False):
    """What one Machinetype asks of the scheduler."""
    return MachinetypeDemand(
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
        paused=paused,
        mjf_http=machinetype.mjf_http)


def needed_repositories(machinetypes):
    """The CernVM-FS repositories any of these Machinetypes ({name: Machinetype}) needs, sorted."""
    return sorted({repository for machinetype in machinetypes.values()
                   for repository in machinetype.cvmfs_repositories})
