"""Compliance evidence: live checks, the red-team gate, the vendor register."""
