"""Retention: a pure policy (rows, now -> what to purge) and the purge job."""
