"""Engines plug into the worker core through `workers.engines.base.Engine`."""
