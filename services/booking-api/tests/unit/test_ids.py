"""Ids order records made within one second: lists such as a user's notifications sort
by (createdAt, id), and two records of one request share their millisecond."""

from datetime import UTC, datetime

from booking_api.ids import derived_id, derived_id_at, new_id
from slotstream_contracts.ids import is_valid_id


def test_ids_made_in_one_process_sort_in_creation_order() -> None:
    ids = [new_id() for _ in range(2_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_keep_their_shape_and_stay_unguessable() -> None:
    first, second = new_id(), new_id()
    assert len(first) == 24
    int(first, 16)
    # the last ten digits are fresh randomness, not a counter a client could step through
    assert first[-10:] != second[-10:]


def test_derived_ids_are_the_same_for_the_same_parts_only() -> None:
    made = derived_id("booking", "s1", "student", "key", "slot")
    assert made == derived_id("booking", "s1", "student", "key", "slot")
    assert len(made) == 24
    assert is_valid_id(made)
    others = {
        derived_id("booking", "s1", "admin", "key", "slot"),
        derived_id("booking", "s1", "student", "key2", "slot"),
        derived_id("booking", "s1", "student", "key", "slot2"),
        derived_id("booking", "s1", "student", "ke", "yslot"),
    }
    assert made not in others
    assert len(others) == 4


def test_a_derived_id_at_a_second_sorts_before_the_new_ids_made_in_it() -> None:
    now = datetime.now(UTC)
    derived = derived_id_at(now, "notification", "b1")
    assert derived == derived_id_at(now, "notification", "b1")
    assert is_valid_id(derived)
    assert len(derived) == 24
    assert derived < new_id()
