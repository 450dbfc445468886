"""A slot's child id in the supervisor tree (vac.vocabulary.slot_ids)."""

from vac.vocabulary.slot_ids import slot_id, slot_number


def test_slot_ids_sort_in_slot_order():
    ids = [slot_id(n) for n in range(12)]
    assert sorted(ids) == ids
    assert slot_id(3) == "slot-03"


def test_a_slot_id_reads_back_as_its_number_and_a_helper_as_none():
    assert [slot_number(slot_id(n)) for n in (0, 7, 123)] == [0, 7, 123]
    assert slot_number("reaper") is None
