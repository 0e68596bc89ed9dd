#!/usr/bin/env python3
"""Which paths does the CUDA driver need under serve's start-up Landlock domain?

`serve --harden strict` failed on an H200 (driver 580) with CUDA_ERROR_OPERATING_SYSTEM while
`--harden basic` (no Landlock) opened the device, and strict and basic refuse a tracer. This
probe rebuilds the start-up domain of `FsAllow::cuda` (src/harden/filesystem.rs) with ctypes,
then opens the device through libcuda (cuInit, cuDevicePrimaryCtxRetain, cuCtxSetCurrent,
cuMemAlloc), once as is and once with each candidate path added, each in a fresh process.

  python3 scripts/gpu_probe_landlock.py [--all]
"""

import ctypes
import os
import subprocess
import sys

LIBCUDA = "/usr/local/nvidia/lib64/libcuda.so.1"
# FsAllow::cuda: default_readable_paths + fixed paths (+ the library folders found).
BASE_READ = ["/proc/self", "/sys/fs/cgroup", "/sys/devices/system/cpu", "/dev/urandom",
             "/dev/random", "/etc/ld.so.cache", "/lib", "/lib64", "/usr/lib", "/usr/lib64",
             "/usr/local/lib", "/proc/driver/nvidia", "/proc/sys/vm/mmap_min_addr",
             "/proc/cpuinfo", "/proc/meminfo", "/sys/bus/pci", "/sys/devices", "/sys/module/nvidia",
             "/usr/local/nvidia/lib64", "/usr/local/cuda/lib64"]
CANDIDATES = ["/proc/devices", "/proc/modules", "/sys/module/nvidia_uvm", "/proc/sys",
              "/sys/kernel", "/dev/shm", "/tmp", "/run", "/var/run", "/etc", "/proc/self/fd",
              "/sys", "/proc", "/dev/char", "/usr/share", "/dev/null", "/dev/zero", "/dev/full",
              "/root", os.path.expanduser("~")]

SYS_CREATE, SYS_ADD, SYS_RESTRICT = 444, 445, 446
READ_FILE, READ_DIR, WRITE_FILE, IOCTL_DEV = 1 << 2, 1 << 3, 1 << 1, 1 << 15


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def restrict(read, devices, writable=()):
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(SYS_CREATE, None, 0, 1)
    handled = (1 << 16) - 1 if abi >= 5 else (1 << 15) - 1 if abi >= 3 else (1 << 13) - 1
    attr = ctypes.c_uint64(handled)
    fd = libc.syscall(SYS_CREATE, ctypes.byref(attr), 8, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")

    def add(path, access):
        if not os.path.exists(path):
            return
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if not os.path.isdir(path):
            # Directory-only rights cannot be granted on a file.
            access &= ~READ_DIR
        rule = PathBeneath(access & handled, pfd)
        if libc.syscall(SYS_ADD, fd, 1, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
        os.close(pfd)
    for p in read:
        add(p, READ_FILE | READ_DIR)
    for p in writable:
        # `x:PATH` adds the execute right too; `i:PATH` only ioctls + read-write.
        if p.startswith("m"):
            mask, path = p[1:].split(":", 1)
            add(path, READ_FILE | READ_DIR | WRITE_FILE | IOCTL_DEV | int(mask, 16))
        elif p.startswith("x:"):
            add(p[2:], 0xFFFF)
        elif p.startswith("i:"):
            add(p[2:], READ_FILE | READ_DIR | WRITE_FILE | IOCTL_DEV)
        else:
            add(p, READ_FILE | READ_DIR | WRITE_FILE | IOCTL_DEV | 0x7FF0)
    for p in devices:
        add(p, READ_FILE | WRITE_FILE | IOCTL_DEV | READ_DIR)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.syscall(SYS_RESTRICT, fd, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    return abi


def open_device(libcuda):
    cuda = ctypes.CDLL(libcuda)
    steps = []
    r = cuda.cuInit(0)
    steps.append(("cuInit", r))
    if r:
        return steps
    dev = ctypes.c_int()
    steps.append(("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), 0)))
    ctx = ctypes.c_void_p()
    steps.append(("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)))
    steps.append(("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx)))
    ptr = ctypes.c_uint64()
    steps.append(("cuMemAlloc", cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(1 << 20))))
    return steps


def child(extra, libcuda, writable):
    devices = [os.path.join("/dev", n) for n in os.listdir("/dev")
               if n.startswith("nvidia")]
    read = BASE_READ + [os.path.dirname(libcuda)] + [e for e in extra if e]
    abi = restrict(read, devices, [w for w in writable if w])
    steps = open_device(libcuda)
    ok = all(code == 0 for _, code in steps)
    print(f"abi {abi} {'OK  ' if ok else 'FAIL'} +{extra or '-'} {steps}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        extra = sys.argv[2].split(",") if sys.argv[2] else []
        writable = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else []
        child(extra, LIBCUDA if len(sys.argv) <= 4 else sys.argv[4], writable)
        return
    # bits: 4 remove dir, 5 remove file, 6 make char, 7 make dir, 8 make reg, 9 make sock,
    # 10 make fifo, 11 make block, 12 make sym, 13 refer, 14 truncate
    runs = [("", "m4000:/proc/self"), ("", "m4000:/proc/driver/nvidia"), ("", "m4000:/proc/sys"),
            ("", "m0:/proc"), ("", "m4000:/proc/self/task"), ("", "m0:/proc/self"),
            ("", "m4000:/proc/driver")]
    if len(sys.argv) > 1 and sys.argv[1] == "--all":
        runs += [("", "")] + [(c, "") for c in CANDIDATES]
    for extra, writable in runs:
        r = subprocess.run([sys.executable, __file__, "--child", extra, writable],
                           capture_output=True, text=True, timeout=60)
        line = (r.stdout.strip() or r.stderr.strip()[-300:]).replace("\n", " | ")
        print(f"[read +{extra or '-'}; write +{writable or '-'}] {line}", flush=True)


if __name__ == "__main__":
    main()
