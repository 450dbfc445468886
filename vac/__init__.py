"""vac: a container factory for WLCG worker nodes."""

__version__ = "0.1.0"
