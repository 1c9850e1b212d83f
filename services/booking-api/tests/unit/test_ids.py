"""Ids order records made within one second: lists such as a user's notifications sort
by (createdAt, id), and two records of one request share their millisecond."""

from booking_api.ids import new_id


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
