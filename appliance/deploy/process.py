"""What a process of the appliance does to itself before it reads a key or a word: nothing it
holds may land on disk behind its back.

A crashed process's core file would hold the caller's words, their number and the master key;
so core dumps are off (RLIMIT_CORE 0, and the process marked not dumpable, which also keeps
other processes of the same user from reading its memory through /proc or ptrace). Everything
it writes is its owner's alone (umask 077). The systemd units say the same (``LimitCORE=0``,
``UMask=0077``) for what runs before Python does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def harden() -> None:
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)


def dumpable() -> bool:
    """Whether this process could dump core (``appliance doctor`` reports it)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_CORE)
    return soft != 0 and _prctl(PR_GET_DUMPABLE, 0) == 1


def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    result: int = libc.prctl(option, value, 0, 0, 0)
    return result
