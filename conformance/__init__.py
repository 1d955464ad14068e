"""dualcall conformance suite."""
