"""How often the root sends the reaper its live set, and how long the reaper trusts one (no imports of ours).

The root (vac/supervisor/) sends the live set; the reaper (vac/workers/) acts
on it; the settings (vac/config/) keep orphan_grace_seconds above the floor.
"""

# The root sends what every slot holds this often, whatever the slots do.
LIVE_SET_SECONDS = 10.0
# A live set older than this means the root's messages are not arriving:
# remove nothing on it.
LIVE_SET_MAX_AGE_SECONDS = 30
# orphan_grace_seconds may not be lower: a container is never younger than
# the oldest live set the reaper acts on, whatever the engine's clock says.
ORPHAN_GRACE_FLOOR_SECONDS = LIVE_SET_MAX_AGE_SECONDS + 10
