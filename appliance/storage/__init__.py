"""Encrypted storage: SQLAlchemy models, envelope encryption, repositories, migrations, audit chain.

Two layers of encryption at rest: the SQLite file as a whole (SQLCipher, raw 256-bit key), and
inside it every transcript, reply, recording and personal field sealed with AES-256-GCM under a
per-call data key that the master key wraps. Destroying a data key erases its call
(crypto-shredding).
"""
