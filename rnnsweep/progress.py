"""Progress bars: tqdm, with a thread lock instead of its default multiprocessing one.

tqdm's default lock holds a multiprocessing semaphore. A launcher=parallel sweep stops its
worker processes with SIGKILL once it is done (waiting for them costs every sweep its exit
time), and a killed process cannot release a semaphore, so Python's resource tracker warned of
"leaked semaphore objects" at the end of such sweeps. A bar never crosses processes here.
"""

from __future__ import annotations

import threading

from tqdm.auto import tqdm

tqdm.set_lock(threading.RLock())

__all__ = ["tqdm"]
