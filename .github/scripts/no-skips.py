"""Fail a CI job when pytest skipped a test it was meant to run.

    python .github/scripts/no-skips.py <junit.xml> <regex> [--at-least N] [--ran REGEX]

Exits 1 if any test in the JUnit report was skipped whose id or skip message matches
<regex> (case-insensitive), or if fewer than N tests ran whose id matches --ran (default:
<regex>): a narrower --ran counts only the tests the job exists for, so other tests that
merely mention the word cannot make up for ones that were never collected.
"""

import argparse
import re
import sys
import xml.etree.ElementTree as ElementTree


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("pattern")
    parser.add_argument("--at-least", type=int, default=0)
    parser.add_argument("--ran", default=None)
    args = parser.parse_args()
    pattern = re.compile(args.pattern, re.IGNORECASE)
    counted = re.compile(args.ran, re.IGNORECASE) if args.ran else pattern
    skipped: list[str] = []
    ran = 0
    for case in ElementTree.parse(args.report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        skip = case.find("skipped")
        if skip is not None:
            if pattern.search(skip.get("message", "") + (skip.text or "") + name):
                skipped.append(f"{name}: {skip.get('message', '')}")
        elif counted.search(name):
            ran += 1
    for line in skipped:
        sys.stderr.write(f"skipped: {line}\n")
    if skipped:
        sys.stderr.write(f"{len(skipped)} test(s) skipped that this job must run\n")
        return 1
    if ran < args.at_least:
        sys.stderr.write(f"only {ran} matching test(s) ran, expected at least {args.at_least}\n")
        return 1
    sys.stdout.write(f"{ran} matching test(s) ran, none skipped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
