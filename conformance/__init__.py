"""dualcall conformance suite: gate any worker URL against the dual-call streaming contract."""

__version__ = "0.1.0"
