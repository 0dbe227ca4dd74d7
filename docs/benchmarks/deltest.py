#!/usr/bin/env python3
"""What removing a large file does to a small fdatasync beside it (docs/BENCHMARKS.md,
pruned checkpoints deleted in steps). Usage: deltest.py unlink | deltest.py trunc <step MiB> <sleep s>.
Writes a 1,300 MiB file and a 64 MiB log under /tmp/deltest, appends 4 KiB + fdatasync to the log
every millisecond on a thread, then removes the big file, and prints the worst sync before and after."""
import os, time, threading, sys
mode = sys.argv[1]  # unlink | trunc
d = '/tmp/deltest'; os.makedirs(d, exist_ok=True)
big = d + '/big'
with open(big, 'wb') as f:
    chunk = os.urandom(1 << 20)
    for _ in range(1300): f.write(chunk)
    f.flush(); os.fsync(f.fileno())
log = os.open(d + '/log', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(log, b'\0' * (64 << 20)); os.fsync(log)
lat = []; stop = False
def syncer():
    off = 0
    while not stop:
        os.pwrite(log, b'x' * 4096, off); off = (off + 4096) % (64 << 20)
        t = time.perf_counter(); os.fdatasync(log); lat.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.001)
th = threading.Thread(target=syncer); th.start()
time.sleep(1.0)
base = max(lat); n0 = len(lat)
t = time.perf_counter()
if mode == 'unlink':
    os.unlink(big)
else:
    fd = os.open(big, os.O_WRONLY); size = os.fstat(fd).st_size
    step = int(sys.argv[2]) << 20
    while size > 0:
        size = max(0, size - step); os.ftruncate(fd, size); os.fsync(fd); time.sleep(float(sys.argv[3]))
    os.close(fd); os.unlink(big)
el = (time.perf_counter() - t) * 1e3
time.sleep(1.5); stop = True; th.join()
print(f'{mode}: delete took {el:.1f} ms; worst fdatasync before {base:.1f} ms, after {max(lat[n0:]):.1f} ms; p99 after {sorted(lat[n0:])[int(len(lat[n0:])*0.99)]:.1f}')
