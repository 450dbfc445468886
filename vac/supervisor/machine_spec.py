"""The plain machine spec the root sends a slot worker in Place (pure)."""

from vac.config.plain import to_plain

FACTORY_KEYS = (
    "vac_space", "mb_per_processor", "hs06_per_processor", "disk_gb_per_processor",
    "gocdb_sitename", "machinefeatures_options", "user_data_options", "user_data_files",
    "state_dir", "scratch_backend", "volume_group", "docker_url", "docker_timeout_seconds",
    "pids_limit", "machinetypes_dir")


def machine_spec(*, uuid, slot, factory_name, machine_name, settings, machinetype, placement,
                 placed_at, mjf_http_url=None):
    """Everything a slot worker needs to run one machine, as plain data (Place.machine).

    `mjf_http_url`: where the mjf child serves Machine/Job Features (http://IP:PORT),
    for a machine of an mjf_http machinetype.
    """
    factory = {key: to_plain(getattr(settings, key)) for key in FACTORY_KEYS}
    factory["factory_name"] = factory_name
    # The account this slot's Singularity machines run as (None when none is set).
    factory["singularity_account"] = settings.singularity_account(slot)
    if mjf_http_url is not None:
        factory["mjf_http_url"] = mjf_http_url
    return {
        "uuid": uuid,
        "slot": slot,
        "machine_name": machine_name,
        "machinetype": to_plain(machinetype),
        "processors": placement.processors,
        "shutdown_at": int(placement.shutdown_at),
        "superslot": placement.superslot,
        "placed_at": placed_at,
        "factory": factory,
    }
