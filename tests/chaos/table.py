"""Print the figures of the last chaos run (test-output/chaos/*.json) as one table:
``python -m tests.chaos.table`` (``make chaos`` does it at the end)."""

import json

from .harness import HEADER, OUTPUT, Result


def main() -> None:
    rows = []
    for path in sorted(OUTPUT.glob("*.json")):
        rows.append(Result(**json.loads(path.read_text())))
    print(HEADER)  # noqa: T201
    for result in rows:
        print(f"{result.row()}   {result.size}")  # noqa: T201


if __name__ == "__main__":
    main()
