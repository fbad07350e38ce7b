#!/usr/bin/env python3
"""small-files.py — fsbench's small_files workload with each phase timed on its own.

usage: bench/small-files.py DIR [COUNT]      (DIR on the mount under test; COUNT default 10000)

Creates COUNT files of 4 KiB in DIR/small from one process (open, write, close each), deletes
them, then fsyncs the directory, and prints the seconds of each phase: "create S", "unlink S",
"fsync S". fsbench.sh's small_files times the three together.
"""
import os
import sys
import time

d = os.path.join(sys.argv[1], "small")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
os.makedirs(d, exist_ok=True)
data = os.urandom(4096)

t = time.monotonic()
for i in range(count):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(data)
print(f"create {time.monotonic() - t:.3f}")

t = time.monotonic()
for i in range(count):
    os.unlink(f"{d}/f{i}")
print(f"unlink {time.monotonic() - t:.3f}")

t = time.monotonic()
fd = os.open(d, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
print(f"fsync {time.monotonic() - t:.3f}")
