"""The labels every runtime puts on a machine's container (no imports of ours).

A container is found by these, never by its name (ARCHITECTURE.md, "Conventions").
"""

LABEL_FACTORY = "vac.factory"
LABEL_SLOT = "vac.slot"
LABEL_MACHINE = "vac.machine"
LABEL_MACHINETYPE = "vac.machinetype"
LABEL_GENERATION = "vac.generation"
LABEL_MACHINE_NAME = "vac.machine_name"
