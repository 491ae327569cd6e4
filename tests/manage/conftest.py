from tests.fuse.conftest import data, make_mount, mnt  # noqa: F401 - the same fixtures
