"""Deliberately broken workers: the real mock worker with one defect injected each.

A conformance check is only trusted once a broken worker proves that it fails.
`defects.DEFECTS` is the catalogue; `serve.py` runs one of them; the proof is
`tests/integration/test_broken_workers.py`.
"""
