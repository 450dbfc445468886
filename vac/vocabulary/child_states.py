"""The states of supervised children and of the factory (no imports of ours)."""

import enum


class Restart(enum.Enum):
    """When a child that exited is started again (Erlang's restart types)."""
    PERMANENT = "permanent"   # always
    TRANSIENT = "transient"   # only after an abnormal exit
    TEMPORARY = "temporary"   # never


class Strategy(enum.Enum):
    """Which siblings restart together with a failed child."""
    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"
    ONE_FOR_ALL = "one_for_all"


class ChildState(enum.Enum):
    """Where one supervised OS process stands."""
    STOPPED = "stopped"       # not started yet, or stopped on purpose
    STARTING = "starting"     # forked, no Ready message yet
    RUNNING = "running"       # Ready received, heartbeating
    STOPPING = "stopping"     # asked to stop (TERM sent), waiting for its exit
    BACKOFF = "backoff"       # exited; waiting for its restart time
    FATAL = "fatal"           # too many failed starts; only an operator reset clears it
    EXITED = "exited"         # ended and not to be restarted (transient/temporary)


class FactoryState(enum.Enum):
    """The root's own condition as operators see it."""
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"     # a helper group gave up: no new machines, running ones stay
    STOPPING = "stopping"


# Exit status a worker uses to say "my spec is wrong: do not restart me".
EXIT_BAD_SPEC = 78   # EX_CONFIG from sysexits.h
