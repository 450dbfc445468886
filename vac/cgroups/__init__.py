"""Cgroups of Singularity machines: the host's layout (layout.py) and one machine's cgroups (machine.py).

docs/singularity.md says which hierarchies are used for what on v2, hybrid
and v1 hosts.
"""
