"""Who may use the control socket, and whether a new connection gets a place.

Pure decisions over what SO_PEERCRED and the peer's groups say: root and
members of the admin group may change things, members of the read-only
group may read, everyone else is refused; and the places are bounded in
all, per uid, with some kept for root and admins.
"""

import grp
import logging
import socket
import struct

log = logging.getLogger(__name__)

ADMIN = "admin"
READ = "read"
# Linux >= 4.13; the socket module does not name it. Python reads at most
# 1024 bytes of an option: 256 groups, else /proc is asked instead.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_PEERGROUPS_BYTES = 1024
# Connections: root and admins always find a place, and no uid but root holds
# more than a few, so readers (a runaway monitoring script, a hostile account)
# cannot lock out root, the admins or NRPE.
MAX_CLIENTS = 64
MAX_CLIENTS_PER_UID = 8
RESERVED_FOR_ADMIN = 8          # of MAX_CLIENTS, places readers never take


def access_level(uid, groups, admin_gid, readonly_gid):
    """ADMIN, READ or None for a peer with `uid` in `groups` (pure)."""
    if uid == 0 or (admin_gid is not None and admin_gid in groups):
        return ADMIN
    if readonly_gid is not None and readonly_gid in groups:
        return READ
    return None


def peer_groups(sock, pid, uid, gid):
    """The peer's primary and supplementary groups as they were when it connected."""
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BYTES)
    except OSError:
        # More than 256 groups, or an old kernel.
        return {gid} | proc_groups(pid, uid)
    return {gid, *struct.unpack(f"{len(data) // 4}I", data)}


def proc_groups(pid, uid):
    """The supplementary groups of process `pid` from /proc, if it still runs as `uid`.

    The uid check matters: the peer may have exited and its pid gone to
    another user's process, whose groups must not be granted."""
    groups, uids = set(), None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Uid:"):
                    uids = {int(u) for u in line.split()[1:]}
                elif line.startswith("Groups:"):
                    groups = {int(g) for g in line.split()[1:]}
    except OSError:
        return set()  # the peer exited already: its primary group is all we know
    return groups if uids == {uid} else set()


def group_id(name):
    """The gid of a configured group, or None (a missing group grants nothing)."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        log.warning("control socket: group %r does not exist; it grants nothing", name)
        return None


def refusal(access, uid, connections, uid_connections, limits):
    """Why a new connection is refused, or None to serve it (pure).

    `connections` are open now, `uid_connections` of them from `uid`;
    `limits` is (max_clients, max_per_uid, reserved_for_admin).
    """
    max_clients, max_per_uid, reserved_for_admin = limits
    if access is None:
        return (f"permission denied: uid {uid} is not root and not in the admin or "
                "read-only group of this factory")
    if connections >= max_clients:
        return "too many control connections; try again"
    # Readers stop short of the cap: root and admins always find a place.
    if access != ADMIN and connections >= max_clients - reserved_for_admin:
        return "too many control connections from readers; try again"
    if uid != 0 and uid_connections >= max_per_uid:
        return (f"too many control connections from uid {uid} (at most {max_per_uid}); "
                "close some and try again")
    return None
