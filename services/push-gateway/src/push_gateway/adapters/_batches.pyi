from typing import Any

class BatchReader:
    done: bool
    legacy: bool
    next_offset: int
    scan_next: int
    scan_records: int
    hole_end: int
    def __init__(
        self,
        data: bytes,
        fetch_offset: int,
        check_crcs: bool,
        record_type: Any,
        start: int = 0,
        end: int = -1,
        contiguous: bool = False,
    ) -> None: ...
    def take(self, max_records: int) -> list[Any]: ...

def decode_batches(
    data: bytes, fetch_offset: int, check_crcs: bool, record_type: Any
) -> tuple[list[Any], int] | None: ...
def crc32c(data: bytes, table_only: bool = False) -> int: ...
def parse_fetch_response(
    data: bytes, start: int, version: int
) -> tuple[int, list[tuple[str, int, int, int, int, int, int]]]: ...
