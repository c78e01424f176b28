import pytest

from tests.inference.predict_support import threads


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: the machine is shared, and OpenMP threads waiting
    on each other can make tiny tiles many times slower."""
    with threads(1):
        yield
