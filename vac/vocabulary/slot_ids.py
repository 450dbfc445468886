"""A slot's child id in the supervisor tree: slot 3 is "slot-03" (no imports of ours)."""

SLOT_ID_PREFIX = "slot-"


def slot_id(slot):
    """3 -> "slot-03": the child id of a slot's worker."""
    return f"{SLOT_ID_PREFIX}{slot:02d}"


def slot_number(child_id):
    """"slot-03" -> 3; None for helpers."""
    if child_id.startswith(SLOT_ID_PREFIX):
        return int(child_id[len(SLOT_ID_PREFIX):])
    return None
