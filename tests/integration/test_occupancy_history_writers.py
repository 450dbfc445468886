"""Several slot processes writing the machine history at once, as a busy factory does."""

import multiprocessing
import uuid

from vac import history

WRITERS = 8
MACHINES_PER_WRITER = 40
T0 = 1_700_000_000.0


def machine_uuid(writer, index):
    return str(uuid.UUID(int=writer * 1_000_000 + index + 1, version=4))


def write_machines(state_dir, writer, start_gate, failures):
    """One slot worker's life: start and finalise machines; finalise each twice, as after a crash."""
    start_gate.wait(30)
    for index in range(MACHINES_PER_WRITER):
        fields = dict(uuid=machine_uuid(writer, index), factory="f1.example.com", slot=writer,
                      machinetype=f"type-{index % 3}", processors=1 + index % 4, started_at=T0 + index * 60,
                      shutdown_at=T0 + 86400)
        ending = dict(ended_at=T0 + index * 60 + 30, shutdown_code=200, shutdown_text="Done", cpu_seconds=25.0)
        ok = history.record_started(state_dir, **fields)
        ok &= history.record_finished(state_dir, **fields, **ending)
        ok &= history.record_finished(state_dir, **fields, **ending)
        # Every process also touches one shared machine, so the upserts of one row contend.
        shared = dict(fields, uuid=machine_uuid(99, 0), slot=99)
        ok &= history.record_finished(state_dir, **shared, **dict(ending, ended_at=T0 + 86000))
        if not ok:
            failures.put((writer, index))


def test_concurrent_writers_in_separate_processes_lose_nothing(tmp_path):
    context = multiprocessing.get_context("fork")
    start_gate = context.Barrier(WRITERS + 1)
    failures = context.Queue()
    # No history file yet: the writers race to create it and its schema.
    processes = [context.Process(target=write_machines, args=(tmp_path, n, start_gate, failures))
                 for n in range(WRITERS)]
    for process in processes:
        process.start()
    start_gate.wait(30)
    reads = 0
    while any(process.is_alive() for process in processes):
        # A reader beside the writers (vac occupancy while the factory runs) always sees a whole table.
        if history.history_path(tmp_path).exists():
            spans = history.machines_between(tmp_path, 0, 2 * T0)
            assert all(span.processors >= 1 for span in spans)
            reads += 1
        for process in processes:
            process.join(0.05)
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert failures.empty()
    spans = history.machines_between(tmp_path, 0, 2 * T0)
    assert len(spans) == WRITERS * MACHINES_PER_WRITER + 1
    assert {span.uuid for span in spans} == {machine_uuid(w, i) for w in range(WRITERS)
                                             for i in range(MACHINES_PER_WRITER)} | {machine_uuid(99, 0)}
    assert all(span.ended_at is not None and span.shutdown_code == 200 for span in spans)
    # (How many reads overlapped the writers depends on the machine's speed: none is fine.)
