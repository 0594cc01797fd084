import pytest

from tests.defenses.helpers import digits_target as _digits_target


@pytest.fixture(scope="session")
def digits_target():
    """A trained digits split model shared by the defenses' behavioural tests."""
    return _digits_target()
