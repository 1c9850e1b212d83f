"""The security suites use the session ``stack`` (tests/conftest.py) and, for the tests
that drive pages, the browser fixtures of the e2e suite."""

from tests.e2e.conftest import browser, context  # noqa: F401
