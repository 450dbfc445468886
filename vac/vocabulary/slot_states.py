"""The states of a slot and of the machine in it, and their allowed transitions (no imports of ours).

A slot worker reports its SlotState to the root (the `state` of StateReport);
the machine's part of it is also stored in the machine's record, so a
restarted worker resumes from the last transition that reached the disk.
"""

import enum


class SlotState(enum.Enum):
    """What a slot worker is doing (the state names of its StateReports)."""
    ADOPTING = "adopting"         # start-up: looking for the machines a predecessor left
    UNAVAILABLE = "unavailable"   # the container engine does not answer; retrying
    IDLE = "idle"                 # no machine: waiting for a Place
    PREPARING = "preparing"       # machine directory, MJF, user_data, scratch
    STARTING = "starting"         # image, create, start
    RUNNING = "running"           # waiting for the container's exit, enforcing limits
    STOPPING = "stopping"         # ending the container (grace, then kill)
    FINISHING = "finishing"       # shutdown_message, exit code, CPU time, accounting
    CLEANING = "cleaning"         # removing the container and the scratch space


# The states in which a live worker knows what its slot holds: the reaper may
# judge that slot's containers by what the root's live set says it holds.
SETTLED_STATES = frozenset(state.value for state in SlotState
                           if state not in (SlotState.ADOPTING, SlotState.UNAVAILABLE))


class MachineState(enum.Enum):
    """Where a machine stands, as written in its record (record.json `state`)."""
    PREPARING = "preparing"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHING = "finishing"       # the outcome is fixed in the record; accounting may be pending
    CLEANING = "cleaning"         # finalised (the `finished` marker exists); cleaning up
    DONE = "done"                 # nothing of the machine is left but its directory


# Every machine ends through FINISHING: a failure to prepare or start ends the
# machine as "700 Failed to start", which the root counts as an abort.
MACHINE_TRANSITIONS = {
    MachineState.PREPARING: {MachineState.STARTING, MachineState.FINISHING},
    MachineState.STARTING: {MachineState.RUNNING, MachineState.STOPPING, MachineState.FINISHING},
    MachineState.RUNNING: {MachineState.STOPPING, MachineState.FINISHING},
    MachineState.STOPPING: {MachineState.FINISHING},
    MachineState.FINISHING: {MachineState.CLEANING},
    MachineState.CLEANING: {MachineState.DONE},
    MachineState.DONE: set(),
}


class InvalidTransition(Exception):
    """A machine was asked to move to a state its current state does not lead to."""


def check_transition(current, new):
    """Raise InvalidTransition unless a machine may go from `current` to `new` (staying is allowed)."""
    if new is not current and new not in MACHINE_TRANSITIONS[current]:
        raise InvalidTransition(f"machine state {current.value} cannot become {new.value}")


def machine_state(text):
    """The MachineState a record's `state` text names; an unknown text counts as PREPARING."""
    try:
        return MachineState(text)
    except ValueError:
        # A damaged or foreign record: the machine is treated as never started.
        return MachineState.PREPARING
