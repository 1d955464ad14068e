"""dualcall workers: one Litestar core implementing contract v1, with pluggable engines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dualcall")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
