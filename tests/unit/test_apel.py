"""APEL records: the exact text, exactly-once writing across crashes, and sync messages."""

import calendar
import dataclasses

import pytest

import vac.accounting.apel as apel
from vac.accounting.apel import (
    FinishedMachine,
    archived_job_counts,
    element_name,
    global_user_name,
    job_record,
    outgoing_problems,
    parse_records,
    sync_message,
    write_job_record,
    write_sync_message,
)

MACHINE_UUID = "8e2f4a6c-1b3d-4e5f-9a7b-c8d9e0f1a2b3"
START = calendar.timegm((2024, 3, 14, 10, 0, 0))
END = START + 7200
ELEMENT = "01bb1f572e990d"  # sha256 of MACHINE_UUID, first 14 hex digits

MACHINE = FinishedMachine(
    machine_uuid=MACHINE_UUID,
    machinetype="lhcb-prod",
    space="vac01.example.com",
    factory="f1.example.com",
    processors=4,
    start_time=START,
    end_time=END,
    cpu_seconds=25000,
    mb_per_processor=2048,
    hs06_per_processor=10.5,
    gocdb_sitename="UKI-EXAMPLE",
    accounting_fqan="/lhcb/Role=NULL/Capability=NULL",
)

EXPECTED_RECORD = f"""\
APEL-individual-job-message: v0.3
Site: UKI-EXAMPLE
SubmitHost: vac01.example.com/vac-f1.example.com
LocalJobId: {MACHINE_UUID}
LocalUserId: f1.example.com
Queue: lhcb-prod
GlobalUserName: /DC=com/DC=example/DC=vac01
FQAN: /lhcb/Role=NULL/Capability=NULL
WallDuration: 7200
CpuDuration: 25000
Processors: 4
NodeCount: 1
InfrastructureDescription: APEL-VAC
InfrastructureType: grid
StartTime: {START}
EndTime: {END}
MemoryReal: 8388608
MemoryVirtual: 8388608
ServiceLevelType: HEPSPEC
ServiceLevel: 10.5
%%
"""


def test_record_text_is_exactly_as_documented():
    assert job_record(MACHINE) == EXPECTED_RECORD


def test_record_without_fqan_hs06_or_site_uses_vacs_defaults():
    machine = dataclasses.replace(MACHINE, accounting_fqan=None, hs06_per_processor=None, gocdb_sitename=None)

    text = job_record(machine)

    assert "FQAN:" not in text
    assert "\nServiceLevel: 1.0\n" in text
    assert "\nSite: example.com\n" in text


@pytest.mark.parametrize("space, dn", [
    ("vac01.example.com", "/DC=com/DC=example/DC=vac01"),
    ("vac.grid.site.ac.uk", "/DC=uk/DC=ac/DC=site/DC=grid/DC=vac"),
    ("single", "/DC=single"),
])
def test_global_user_name_is_the_space_in_vacs_order(space, dn):
    assert global_user_name(space) == dn


def test_element_name_is_a_dirq_name_from_the_uuid():
    assert element_name(MACHINE_UUID) == ELEMENT
    assert element_name(MACHINE_UUID, attempt=1) != ELEMENT
    assert all(len(element_name(text)) == 14 and int(element_name(text), 16) >= 0
               for text in ("not-a-uuid", "00000000-0000-4000-8000-000000000001"))


def test_a_name_held_by_another_machine_is_never_overwritten(tmp_path):
    state = tmp_path / "state"
    foreign = state / f"apel-archive/20240314/{ELEMENT}"
    foreign.parent.mkdir(parents=True)
    foreign.write_text(EXPECTED_RECORD.replace(MACHINE_UUID, "someone-else"))

    first = write_job_record(state, tmp_path, MACHINE, fizzle_seconds=600)
    second = write_job_record(state, tmp_path, MACHINE, fizzle_seconds=600)

    alternative = element_name(MACHINE_UUID, attempt=1)
    assert sorted(path.name for path in first) == [alternative, alternative]
    assert second == []
    assert "someone-else" in foreign.read_text()
    assert (state / f"apel-archive/20240314/{alternative}").read_text() == EXPECTED_RECORD


def _files(base):
    return sorted(str(path.relative_to(base)) for path in base.rglob("*") if path.is_file())


def test_record_goes_to_archive_and_outgoing_in_the_end_days_directory(tmp_path):
    machine_dir = tmp_path / "machine"
    machine_dir.mkdir()

    written = write_job_record(tmp_path / "state", machine_dir, MACHINE, fizzle_seconds=600)

    assert _files(tmp_path / "state") == [f"apel-archive/20240314/{ELEMENT}",
                                          f"apel-outgoing/20240314/{ELEMENT}"]
    assert sorted(written) == sorted(tmp_path / "state" / name for name in _files(tmp_path / "state"))
    assert all(path.read_text() == EXPECTED_RECORD for path in written)


@pytest.mark.parametrize("changes", [{"gocdb_sitename": None}, {"hs06_per_processor": None}])
def test_without_gocdb_sitename_and_hs06_only_the_archive_gets_the_record(tmp_path, changes):
    write_job_record(tmp_path / "state", tmp_path, dataclasses.replace(MACHINE, **changes), fizzle_seconds=600)

    assert _files(tmp_path / "state") == [f"apel-archive/20240314/{ELEMENT}"]


def test_machine_that_fizzled_is_not_accounted(tmp_path):
    short = dataclasses.replace(MACHINE, end_time=START + 599)

    assert write_job_record(tmp_path / "state", tmp_path, short, fizzle_seconds=600) == []
    assert not (tmp_path / "state").exists()
    exactly_fizzle = dataclasses.replace(MACHINE, end_time=START + 600)
    assert write_job_record(tmp_path / "state", tmp_path, exactly_fizzle, fizzle_seconds=600) != []


def test_writing_twice_writes_once(tmp_path):
    state = tmp_path / "state"
    write_job_record(state, tmp_path, MACHINE, fizzle_seconds=600)
    # ssmsend sends the outgoing copy and deletes it.
    (state / f"apel-outgoing/20240314/{ELEMENT}").unlink()

    assert write_job_record(state, tmp_path, MACHINE, fizzle_seconds=600) == []
    assert _files(state) == [f"apel-archive/20240314/{ELEMENT}"]


def test_repeat_after_a_crash_before_the_archive_copy_completes_it_once(tmp_path, monkeypatch):
    state = tmp_path / "state"
    real_create = apel.create_atomic

    def crash_on_archive(path, data, mode=0o644):
        if "apel-archive" in str(path):
            raise SystemExit("power cut")
        return real_create(path, data, mode)

    monkeypatch.setattr(apel, "create_atomic", crash_on_archive)
    with pytest.raises(SystemExit):
        write_job_record(state, tmp_path, MACHINE, fizzle_seconds=600)
    monkeypatch.setattr(apel, "create_atomic", real_create)

    write_job_record(state, tmp_path, MACHINE, fizzle_seconds=600)
    write_job_record(state, tmp_path, MACHINE, fizzle_seconds=600)

    assert _files(state) == [f"apel-archive/20240314/{ELEMENT}", f"apel-outgoing/20240314/{ELEMENT}"]


def test_repeat_with_different_figures_keeps_the_first_record(tmp_path):
    # A worker restarted after midnight measures a later end and more CPU: the
    # record first made for this machine is the one, in its original day.
    state = tmp_path / "state"
    machine_dir = tmp_path / "machine"
    machine_dir.mkdir()
    write_job_record(state, machine_dir, MACHINE, fizzle_seconds=600)
    (state / f"apel-archive/20240314/{ELEMENT}").unlink()
    (state / f"apel-outgoing/20240314/{ELEMENT}").unlink()
    later = dataclasses.replace(MACHINE, end_time=END + 86400, cpu_seconds=99999)

    write_job_record(state, machine_dir, later, fizzle_seconds=600)

    assert _files(state) == [f"apel-archive/20240314/{ELEMENT}", f"apel-outgoing/20240314/{ELEMENT}"]
    assert (state / f"apel-archive/20240314/{ELEMENT}").read_text() == EXPECTED_RECORD


def test_parse_records_reads_back_what_was_written():
    (record,) = parse_records(EXPECTED_RECORD)

    assert record["LocalJobId"] == MACHINE_UUID
    assert record["EndTime"] == str(END)
    assert "APEL-individual-job-message" not in record


def test_sync_message_counts_archived_jobs_per_site_host_and_month(tmp_path):
    state = tmp_path / "state"
    march = [dataclasses.replace(MACHINE, machine_uuid=f"00000000-0000-4000-8000-00000000000{i}",
                                 end_time=END + i) for i in range(3)]
    april = dataclasses.replace(MACHINE, machine_uuid="00000000-0000-4000-8000-000000000010",
                                start_time=calendar.timegm((2024, 4, 1, 0, 0, 0)),
                                end_time=calendar.timegm((2024, 4, 1, 2, 0, 0)))
    other_factory = dataclasses.replace(MACHINE, machine_uuid="00000000-0000-4000-8000-000000000011",
                                        factory="f2.example.com")
    other_site = dataclasses.replace(MACHINE, machine_uuid="00000000-0000-4000-8000-000000000012",
                                     gocdb_sitename=None, hs06_per_processor=None)
    for index, machine in enumerate(march + [april, other_factory, other_site]):
        machine_dir = tmp_path / f"m{index}"
        machine_dir.mkdir()
        write_job_record(state, machine_dir, machine, fizzle_seconds=600)
    (state / "apel-archive/20240314/.half-written.tmp").write_text("Site: X\n%%\n")

    text = sync_message(archived_job_counts(state), site="UKI-EXAMPLE")

    assert text == """\
APEL-sync-message: v0.1
Site: UKI-EXAMPLE
SubmitHost: vac01.example.com/vac-f1.example.com
NumberOfJobs: 3
Month: 3
Year: 2024
%%
Site: UKI-EXAMPLE
SubmitHost: vac01.example.com/vac-f1.example.com
NumberOfJobs: 1
Month: 4
Year: 2024
%%
Site: UKI-EXAMPLE
SubmitHost: vac01.example.com/vac-f2.example.com
NumberOfJobs: 1
Month: 3
Year: 2024
%%
"""
    assert "Site: example.com" in sync_message(archived_job_counts(state))


def test_sync_message_of_an_empty_archive_is_just_the_header(tmp_path):
    assert sync_message(archived_job_counts(tmp_path)) == "APEL-sync-message: v0.1\n"


def test_sync_message_is_queued_under_a_dirq_name(tmp_path):
    now = calendar.timegm((2024, 5, 1, 3, 0, 0)) + 0.25

    path = write_sync_message(tmp_path, "APEL-sync-message: v0.1\n", now)

    assert path.parent == tmp_path / "apel-outgoing" / "20240501"
    assert len(path.name) == 14 and int(path.name, 16) >= 0
    assert path.read_text() == "APEL-sync-message: v0.1\n"


@pytest.mark.parametrize("changes, why", [
    ({"accounting_fqan": "/lhcb/Rôle=pilot"}, "FQAN holds characters other than printable ASCII"),
    ({"accounting_fqan": "/lhcb/\ud800"}, "FQAN holds characters other than printable ASCII"),
    ({"accounting_fqan": "/" + "x" * 255}, "FQAN is 256 characters, more than APEL's 255"),
    ({"machinetype": "prod\nSite: elsewhere"}, "Queue holds characters other than printable ASCII"),
    ({"machinetype": "q" * 101}, "Queue is 101 characters, more than APEL's 100"),
    ({"gocdb_sitename": "UKI-ÉXAMPLE"}, "Site holds characters other than printable ASCII"),
])
def test_a_record_apel_would_refuse_stays_in_the_archive_and_the_queue_goes_on(tmp_path, caplog, changes, why):
    state = tmp_path / "state"
    bad_dir, good_dir = tmp_path / "bad", tmp_path / "good"
    bad_dir.mkdir()
    good_dir.mkdir()
    bad = dataclasses.replace(MACHINE, machine_uuid="00000000-0000-4000-8000-0000000000bb", **changes)

    written = write_job_record(state, bad_dir, bad, fizzle_seconds=600)
    write_job_record(state, good_dir, MACHINE, fizzle_seconds=600)

    assert written == [state / "apel-archive/20240314" / element_name(bad.machine_uuid)]
    assert _files(state / "apel-outgoing") == [f"20240314/{ELEMENT}"]
    assert why in caplog.text and "not queued for sending" in caplog.text
    # What is archived can be read back whole, whatever the values were.
    (record,) = parse_records(written[0].read_bytes().decode())
    assert record["LocalJobId"] == bad.machine_uuid


def test_every_outgoing_file_is_printable_ascii_within_apels_columns(tmp_path):
    write_job_record(tmp_path / "state", tmp_path, MACHINE, fizzle_seconds=600)

    (outgoing,) = (tmp_path / "state" / "apel-outgoing").glob("*/*")
    assert outgoing_problems(outgoing.read_text()) == []
    assert outgoing_problems(EXPECTED_RECORD.replace("grid", "grïd")) == [
        "InfrastructureType holds characters other than printable ASCII ('grïd')"]
    assert outgoing_problems(EXPECTED_RECORD.replace("NodeCount: 1", "NodeCount: 1\n%%\nSite: x")) != []


def test_sync_message_leaves_out_a_host_apel_would_refuse(tmp_path, caplog):
    state = tmp_path / "state"
    odd = dataclasses.replace(MACHINE, machine_uuid="00000000-0000-4000-8000-0000000000cc",
                              factory="f\u00e9.example.com")
    for index, machine in enumerate([MACHINE, odd]):
        (tmp_path / f"m{index}").mkdir()
        write_job_record(state, tmp_path / f"m{index}", machine, fizzle_seconds=600)

    text = sync_message(archived_job_counts(state), site="UKI-EXAMPLE")

    assert outgoing_problems(text, header="APEL-sync-message: v0.1") == []
    assert "SubmitHost: vac01.example.com/vac-f1.example.com" in text
    assert text.count("%%") == 1
    assert "left out" in caplog.text
