"""Fixtures shared by the integration test modules, made once per session for all of them."""

from systemd_host import systemd_host  # noqa: F401 (a fixture: one booted systemd for every systemd test module)
