import pytest

from tools.tests import tools as test_tools


@pytest.fixture(autouse=True)
def nothing_made_yet():
    """The test tools' record of calls made starts empty in each test."""
    test_tools.made.clear()
