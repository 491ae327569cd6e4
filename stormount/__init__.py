"""stormount: mount cloud object storage as an ordinary directory."""

from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    """pyproject.toml's version: from the installed metadata, else (a source checkout
    never installed) from the pyproject.toml beside the package."""
    try:
        return version("stormount")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path
        try:
            with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


__version__ = _version()
