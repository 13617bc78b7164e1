"""An exclusive lock on a run folder, so that two trainings can never write into one folder.

The lock is an OS file lock (`fcntl.flock`) on `<run folder>/.lock`: the operating system releases it when
the process exits, crashes or is killed, so a stale lock never blocks a later run. While held, the file
names its holder (pid, host, start time) for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderBusyError(RuntimeError):
    """Another process is training into this run folder."""


def lock_holder(folder: Path) -> str | None:
    """Who holds `folder`'s lock ("pid ... on host, started ..."), or None when nobody does. Only looks: it
    takes a shared lock for an instant, which no trainer holds."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return file.read().strip() or "another process"
        fcntl.flock(file, fcntl.LOCK_UN)
    return None


class RunLock:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOCK_NAME
        self.file = open(self.path, "a+", encoding="utf-8")  # held open: the lock lives as long as the file
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunFolderBusyError(
                f"run folder {folder} is in use by {holder}. Wait for that training to finish (or stop it), "
                f"or choose another run_name."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.truncate(0)  # no holder any more
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
