"""One exception hierarchy for the whole daemon; every class carries the errno a
filesystem caller should see, so the FUSE layer translates with a single rule."""

from __future__ import annotations

import errno as _errno


class StormountError(Exception):
    """Base of every error stormount raises on purpose."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


def first_error(exc: BaseException) -> BaseException:
    """The error worth reporting inside an exception group (trio nurseries wrap them):
    our own errors and OS errors first."""
    while isinstance(exc, BaseExceptionGroup):
        known: list[BaseException] = [
            e for e in exc.exceptions if isinstance(e, StormountError | OSError)]
        exc = (known or list(exc.exceptions))[0]
    return exc


class ConfigError(StormountError):
    """Bad configuration, URL or command-line input: reported as one line, exit non-zero."""

    errno = _errno.EINVAL


class FsError(StormountError):
    """A filesystem-level refusal with an explicit errno (ENOTEMPTY, EISDIR, ...)."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or _errno.errorcode.get(errno, str(errno)), errno=errno)


# --- backend errors: every backend maps its SDK's errors onto these -------------------


class BackendError(StormountError):
    """A storage backend failed. `transient` says whether a retry may succeed."""

    transient = False

    def __init__(self, message: str = "", *, backend: str = "", key: str = "") -> None:
        super().__init__(message)
        self.backend = backend
        self.key = key


class NotFound(BackendError):
    errno = _errno.ENOENT


class PermissionDenied(BackendError):
    errno = _errno.EACCES


class Conflict(BackendError):
    """The object changed or exists where it must not (precondition failed, name clash)."""

    errno = _errno.EEXIST


class Changed(BackendError):
    """The object is no longer the version the caller asked for (a conditional read
    failed): what the caller knows of it is stale."""

    errno = _errno.ESTALE


class Permanent(BackendError):
    """A request the store refuses and will keep refusing (4xx other than 408/429)."""

    errno = _errno.EIO


class ContainerMissing(Permanent):
    """The bucket or container itself does not exist."""

    errno = _errno.ENODEV


class Transient(BackendError):
    """Timeouts, 5xx, connection errors: worth retrying; EIO once retries are exhausted."""

    transient = True
    errno = _errno.EIO


class Throttled(Transient):
    """The store asked us to slow down (S3 SlowDown/503, Azure ServerBusy, 429)."""

    errno = _errno.EAGAIN


class StartupError(StormountError):
    """The mount cannot start (mountpoint busy, FUSE missing, store unreachable, ...)."""
