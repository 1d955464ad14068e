"""dualcall workers: one Litestar core implementing contract v1, with pluggable engines."""

__version__ = "0.1.0"
