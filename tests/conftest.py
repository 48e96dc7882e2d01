import os

import pytest
from hypothesis import HealthCheck, settings

from tests.cluster import ClusterCache

settings.register_profile(
    "default", max_examples=20, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def clusters():
    cache = ClusterCache()
    yield cache
    cache.close()
