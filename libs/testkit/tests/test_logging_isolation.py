"""The plugin puts logging back after each test: a test that configures it as a service's
``main()`` does must not change what the next test's ``capture_logs`` sees."""

import pytest

pytest_plugins = ["pytester"]


def test_a_test_that_configures_logging_leaves_the_next_its_capture(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import structlog
        from structlog.testing import capture_logs

        from slotstream_contracts.logs import configure_logging
        from slotstream_contracts.settings import LogSettings

        early = structlog.get_logger("early")


        def test_a_service_main_configures_logging():
            configure_logging("svc", LogSettings(level="INFO"))


        def test_a_logger_first_used_afterwards():
            early.info("first use")


        def test_another_test_configures_logging_again():
            configure_logging("svc", LogSettings(level="INFO"))


        def test_the_next_test_captures_every_logger():
            fresh = structlog.get_logger("fresh")
            with capture_logs() as captured:
                early.info("early")
                fresh.info("fresh")
            assert [line["event"] for line in captured] == ["early", "fresh"]
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
