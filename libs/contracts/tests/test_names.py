"""Display names: what other users are shown may not hide, reorder or break text."""

import pytest
from pydantic import TypeAdapter, ValidationError

from slotstream_contracts.entities import DisplayName

NAMES: TypeAdapter[str] = TypeAdapter(DisplayName)


@pytest.mark.parametrize(
    "name",
    ["Ada Lovelace", "José Ñúñez-O'Brien", "李小龙", "محمد", "🎻 Ada", "मनीषा", "a\u200db"],
)
def test_names_in_any_script_are_kept_as_given(name: str) -> None:
    assert NAMES.validate_python(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "Ada\u202eevil",  # right-to-left override
        "\u2066Ada",  # left-to-right isolate
        "Ada\u200e",  # left-to-right mark
        "Ada\nLovelace",
        "Ada\r",
        "Ada\x00",
        "\x1b[31mAda",
        "Ada\u200b",  # zero-width space
        "Ada\u2028",  # line separator
        "Ada\ue000",  # private use
        "Ada\ufeff",  # byte order mark
        " ",
        "",
        "x" * 121,
    ],
)
def test_control_format_and_invisible_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        NAMES.validate_python(name)
