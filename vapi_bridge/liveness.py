"""Is a recorded pid still the process we recorded? Pids are reused, so a pid alone is not.

:func:`identity` gives a string that names one process *instance* (its start time, taken
from the kernel), so a state file can tell "the bridge that wrote me still runs" from "some
later process got its pid", and a stale ngrok agent is stopped only while its pid still
belongs to that agent. Linux reads ``/proc``, macOS and the BSDs ask ``ps``, Windows asks
the kernel through ``ctypes``. Where none of this works the identity is ``None``: the process
counts as gone, and nothing is ever signalled on that basis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def identity(pid: int) -> str | None:
    """A string naming the running process ``pid``, or ``None`` if none runs (or is visible)."""
    if pid <= 0:
        return None
    if sys.platform == "win32":
        return _windows_identity(pid)
    if Path("/proc/self/stat").exists():
        return _proc_identity(pid)
    return _ps_identity(pid)


def terminate(pid: int, recorded: str, timeout: float = 5.0) -> bool:
    """Stop ``pid`` if it is still the process ``recorded`` names; True if it was stopped.

    A polite stop first (SIGTERM: the ngrok agent closes its session with ngrok), then a
    kill if it is still there after ``timeout`` seconds.
    """
    if identity(pid) != recorded:
        return False
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)  # TerminateProcess on Windows
    if _gone(pid, recorded, timeout):
        return True
    with contextlib.suppress(OSError):
        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    return _gone(pid, recorded, timeout)


def _gone(pid: int, recorded: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while identity(pid) == recorded:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _proc_identity(pid: int) -> str | None:
    """Linux: boot id and start time in clock ticks since boot; a zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except OSError:
        boot = ""
    return f"{boot}:{fields[19]}"


def _ps_identity(pid: int) -> str | None:
    """macOS and the BSDs: start time (to the second) and command name, from ``ps``."""
    try:
        done = subprocess.run(
            ["ps", "-p", str(pid), "-o", "stat=", "-o", "lstart=", "-o", "comm="],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) < 2 or words[0].startswith("Z"):
        return None
    return " ".join(words[1:])


def _windows_identity(pid: int) -> str | None:
    """Windows: the process's creation time, while it has not exited."""
    if sys.platform != "win32":
        return None
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    query_limited_information, still_active = 0x1000, 259
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return None
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return None
        if code.value != still_active:
            return None
        created, exited, kernel, user = (wintypes.FILETIME() for _ in range(4))
        if not kernel32.GetProcessTimes(
            handle,
            ctypes.byref(created),
            ctypes.byref(exited),
            ctypes.byref(kernel),
            ctypes.byref(user),
        ):
            return None
        return str((created.dwHighDateTime << 32) | created.dwLowDateTime)
    finally:
        kernel32.CloseHandle(handle)
