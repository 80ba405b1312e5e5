"""Caller identity: authentication factors, assurance levels, step-up, and abuse limits.

A caller ID or a voice proves little. What the agent may do depends on the assurance level
the caller reached in this call (NIST SP 800-63B): 0 anonymous; 1 one factor; 2 two factors,
one of which is something the caller has (a TOTP authenticator or an out-of-band code).
"""
