"""The factory's supervision tree, built from plain settings."""

import dataclasses

from vac.supervisor import policy
from vac.supervisor.tree import ChildSpec, PoolPolicy, SupervisorSpec
from vac.vocabulary.child_states import Restart, Strategy
from vac.vocabulary.slot_ids import slot_id
from vac.workers import cvmfs_keeper, metrics, mjf, pipe_fetcher, reaper, slot_worker, vacquery


@dataclasses.dataclass(frozen=True)
class TreeSettings:
    """What shapes the tree: slot count and the supervision timings."""
    slots: int
    cvmfs_repositories: tuple = ()
    state_dir: str = "/var/lib/vac"
    factory_name: str = "localhost"
    docker_url: str = "unix:///var/run/docker.sock"
    docker_timeout_seconds: float = 30.0
    reaper_interval_seconds: float = 60.0
    orphan_grace_seconds: float = 120.0
    cvmfs_keepalive_seconds: float = 30.0
    metrics_listen: str | None = None
    metrics_textfile: str | None = None
    # VacQuery: with a space, a vacquery child answers and asks these factories.
    space: str | None = None
    factories: tuple = ()
    vacquery_listen: str | None = None
    udp_timeout_seconds: float = 10.0
    vacquery_interval_seconds: float = 60.0
    gocdb_sitename: str | None = None
    # The site whose APEL records are sent (gocdb_sitename with hs06_per_processor):
    # the reaper then queues the daily sync message. None: records are not sent.
    apel_sync_site: str | None = None
    # Singularity machines (plain data, vac.runtimes.singularity.SingularitySettings.from_plain):
    # the executable, where cgroups go, the accounts and the reaper's sweep interval.
    singularity: dict | None = None
    # The machine models the configuration runs: their engines must answer a slot's adoption.
    machine_models: tuple = ("docker",)
    # Machine/Job Features over HTTP: an mjf child when set, serving on
    # mjf["listen"] (IP:PORT), or on docker0's address when that is None.
    mjf: dict | None = None
    # vacd's defaults (heartbeat_timeout_seconds = 30): a heartbeat every 10 s.
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 30.0
    slot_shutdown: float = 10.0
    helper_shutdown: float = 5.0
    helper_intensity: policy.Intensity = policy.Intensity(max_restarts=5, period=30.0)
    top_intensity: policy.Intensity = policy.Intensity(max_restarts=3, period=300.0)
    degraded_retry: float = 60.0
    slot_restart: policy.SlotRestartPolicy = policy.SlotRestartPolicy()
    breaker: policy.BreakerPolicy = policy.BreakerPolicy()


def metrics_child(settings, timings):
    """The metrics exporter, when metrics_listen or metrics_textfile asks for one."""
    if not (settings.metrics_listen or settings.metrics_textfile):
        return ()
    return (ChildSpec(id="metrics", target=metrics.run,
                      args={"listen": settings.metrics_listen,
                            "textfile": settings.metrics_textfile},
                      restart=Restart.PERMANENT, shutdown=settings.helper_shutdown, **timings),)


def mjf_child(settings, timings):
    """The Machine/Job Features server, when machinetypes may ask for mjf_http."""
    if settings.mjf is None:
        return ()
    return (ChildSpec(id="mjf", target=mjf.run,
                      args={"state_dir": settings.state_dir, "listen": settings.mjf.get("listen")},
                      restart=Restart.PERMANENT, shutdown=settings.helper_shutdown, **timings),)


def vacquery_child(settings, timings):
    """The VacQuery responder and poller, for a factory that belongs to a space."""
    if not settings.space:
        return ()
    return (ChildSpec(id="vacquery", target=vacquery.run,
                      args={"space": settings.space, "factory_name": settings.factory_name,
                            "factories": list(settings.factories), "listen": settings.vacquery_listen,
                            "udp_timeout_seconds": settings.udp_timeout_seconds,
                            "interval_seconds": settings.vacquery_interval_seconds,
                            "gocdb_sitename": settings.gocdb_sitename, "state_dir": settings.state_dir},
                      restart=Restart.PERMANENT, shutdown=settings.helper_shutdown, **timings),)


def build_tree(settings):
    """services (keeper, reaper, pipe fetcher) first and stopped last; then the slot pool."""
    timings = {"heartbeat_interval": settings.heartbeat_interval,
               "heartbeat_timeout": settings.heartbeat_timeout}
    services = SupervisorSpec(
        id="services",
        strategy=Strategy.ONE_FOR_ONE,
        intensity=settings.helper_intensity,
        children=(
            ChildSpec(id="cvmfs-keeper", target=cvmfs_keeper.run,
                      args={"repositories": list(settings.cvmfs_repositories),
                            "interval_seconds": settings.cvmfs_keepalive_seconds},
                      restart=Restart.PERMANENT, shutdown=settings.helper_shutdown, **timings),
            ChildSpec(id="reaper", target=reaper.run,
                      args={"state_dir": settings.state_dir, "slots": settings.slots,
                            "factory_name": settings.factory_name,
                            "docker_url": settings.docker_url,
                            "docker_timeout_seconds": settings.docker_timeout_seconds,
                            "interval_seconds": settings.reaper_interval_seconds,
                            "grace_seconds": settings.orphan_grace_seconds,
                            "apel_sync_site": settings.apel_sync_site,
                            "singularity": settings.singularity,
                            "machine_models": list(settings.machine_models)},
                      restart=Restart.PERMANENT, shutdown=settings.helper_shutdown, **timings),
            ChildSpec(id="pipe-fetcher", target=pipe_fetcher.run,
                      args={"state_dir": settings.state_dir},
                      restart=Restart.PERMANENT, shutdown=settings.helper_shutdown, **timings),
            *vacquery_child(settings, timings),
            *metrics_child(settings, timings),
            *mjf_child(settings, timings),
        ))
    slots = SupervisorSpec(
        id="slots",
        strategy=Strategy.ONE_FOR_ONE,
        pool=PoolPolicy(slot_restart=settings.slot_restart, breaker=settings.breaker),
        children=tuple(
            ChildSpec(id=slot_id(n), target=slot_worker.run,
                      args={"slot": n, "state_dir": settings.state_dir,
                            "factory_name": settings.factory_name,
                            "docker_url": settings.docker_url,
                            "docker_timeout_seconds": settings.docker_timeout_seconds,
                            "singularity": settings.singularity,
                            "machine_models": list(settings.machine_models)},
                      restart=Restart.TRANSIENT, shutdown=settings.slot_shutdown,
                      role="slot", **timings)
            for n in range(settings.slots)))
    return SupervisorSpec(id="vacd", strategy=Strategy.ONE_FOR_ONE,
                          intensity=settings.top_intensity,
                          degraded_retry=settings.degraded_retry,
                          children=(services, slots))
