#!/usr/bin/env python3
"""How to make many partitions durable at once: one round of small appends
to N files, then parallel fdatasync, sequential fdatasync, or one syncfs.
Prints wall time and busy CPU (all cores, from /proc/stat) per round.

    python3 bench/scripts/sync-strategies.py [DIR] [FILES] [KIB_PER_FILE] [ROUNDS]
"""
import ctypes
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def busy_and_total():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v) - v[3] - v[4], sum(v)


def run(directory, mode, files, chunk, rounds):
    data = os.urandom(chunk)
    fds = []
    for i in range(files):
        fd = os.open(os.path.join(directory, f"seg-{i}"), os.O_CREAT | os.O_RDWR | os.O_TRUNC)
        os.ftruncate(fd, 1 << 30)  # preallocated like a segment
        fds.append(fd)
    pool = ThreadPoolExecutor(files)
    busy0, _ = busy_and_total()
    start = time.time()
    for r in range(rounds):
        for fd in fds:
            os.pwrite(fd, data, r * chunk)
        if mode == "parallel fdatasync":
            list(pool.map(os.fdatasync, fds))
        elif mode == "sequential fdatasync":
            for fd in fds:
                os.fdatasync(fd)
        elif libc.syncfs(fds[0]) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
    wall = time.time() - start
    busy1, _ = busy_and_total()
    ticks = os.sysconf("SC_CLK_TCK")
    print(f"{mode:22} {wall / rounds * 1000:6.2f} ms/round  "
          f"{(busy1 - busy0) / ticks / rounds * 1000:6.2f} ms CPU/round  "
          f"{files * chunk * rounds / wall / 1e6:7.1f} MB/s")
    for fd in fds:
        os.close(fd)


def main():
    parent = sys.argv[1] if len(sys.argv) > 1 else "."
    files = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    chunk = (int(sys.argv[3]) if len(sys.argv) > 3 else 4) * 1024
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    with tempfile.TemporaryDirectory(dir=parent) as d:
        for mode in ["parallel fdatasync", "sequential fdatasync", "syncfs"]:
            run(d, mode, files, chunk, rounds)


if __name__ == "__main__":
    main()
