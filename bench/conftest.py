# The markers mnistlab's tests declare (slow, mnist, ...), declared for bench/'s too.
from mnistlab.conftest import pytest_configure  # noqa: F401
