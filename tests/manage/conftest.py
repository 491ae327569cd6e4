from tests.fuse.conftest import data, mnt  # noqa: F401 - the same fixtures
