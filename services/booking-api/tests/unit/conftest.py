"""Fixtures of the partial-failure tests (``test_partial_failure``, ``test_booking_resume``,
``test_slot_repair``): a memory store that fails on demand, and no pauses between a failed
write's read-backs (they only make a test wait)."""

from collections.abc import Iterator

import pytest

from booking_api import service as service_module

from .test_partial_failure import FlakyStorage


@pytest.fixture
def flaky() -> FlakyStorage:
    return FlakyStorage()


@pytest.fixture
def no_read_back_pauses() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service_module, "BOOKING_READ_BACK_PAUSES", (0.0, 0.0, 0.0))
        yield
