"""Fixtures of the integration tests: the store and the settings of one test come from
tests/conftest.py, shared with the real tier (a module's own fixture of the same name wins)."""
