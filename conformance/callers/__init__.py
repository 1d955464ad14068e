"""Caller conformance: an adversarial worker that checks orchestrators against the DC-C rules.

``dualcall-conformance serve-callers --caller "python my_orchestrator.py {submit_url} {prompt}"``
runs the caller once per scenario (:mod:`conformance.callers.scenarios`) against a worker that
behaves legally but inconveniently, records what the caller did and grades it against the caller
rules (:mod:`conformance.callers.rules`) into the suite's usual report. This package never
imports ``workers/``: the adversarial worker is a raw ASGI app, so it controls every byte.
"""
