"""Caller conformance tests: the reference client passes, the naive caller and the broken callers fail."""
