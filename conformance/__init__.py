"""dualcall conformance suite: gate any worker URL against the dual-call streaming contract."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dualcall")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
