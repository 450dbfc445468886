"""The labels every runtime puts on a machine's container, and how ids are shown (no imports of ours).

A container is found by these, never by its name (ARCHITECTURE.md, "Conventions").
"""

LABEL_FACTORY = "vac.factory"
LABEL_SLOT = "vac.slot"
LABEL_MACHINE = "vac.machine"
LABEL_MACHINETYPE = "vac.machinetype"
LABEL_GENERATION = "vac.generation"
LABEL_MACHINE_NAME = "vac.machine_name"

# A Singularity machine's container id: this, then its machine's UUID.
SINGULARITY_ID_PREFIX = "singularity-"
DOCKER_SHORT_ID_LENGTH = 12


def shown_id(container_id: str) -> str:
    """A container's id as logs and `vac` show it: Docker's shortened as `docker ps` does, a Singularity machine's whole."""
    if container_id.startswith(SINGULARITY_ID_PREFIX):
        # Its first 12 characters are the prefix every Singularity machine shares.
        return container_id
    return container_id[:DOCKER_SHORT_ID_LENGTH]
