"""Adapters to the heavy libraries: the only room that imports them.

Each engine loads its model once (after checking its SHA-256 pins), serves many calls, and
serializes its own inferences with a lock. Library exceptions are translated here.
"""
