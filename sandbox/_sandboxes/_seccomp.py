"""The seccomp filter of bwrap sandboxes (Docker applies its own default profile).

bwrap has no filter of its own: without one, a process in the sandbox could take
another's file descriptors (``pidfd_getfd``; Claude Code's stdout, to forge events),
trace it, create user namespaces, load BPF programs, and so on. ``bwrap --seccomp FD``
loads a compiled classic-BPF program just before it starts the sandbox's first
process; every process inside inherits it and nothing can remove it.

The program is compiled by libseccomp (``libseccomp.so.2``, called through ctypes; it
is on every host that runs Docker or systemd), which checks the architecture, answers
calls of a foreign ABI (x32 on x86-64, i386 through ``int 0x80``) with EPERM, and maps
syscall names to the host's numbers (x86-64 and aarch64 alike). The filter is a deny
list, like Docker's default profile for a container without capabilities:

- ``DENIED``: EPERM always (other processes' memory and descriptors, kernel keyrings,
  mounts, namespaces, BPF, perf, modules, kexec, userfaultfd, io_uring, clock and
  system administration);
- ``clone`` with any namespace flag: EPERM; ``clone3``: ENOSYS (its flags are in
  memory a filter cannot read; the C library then falls back to ``clone``);
- ``personality`` with flags that switch off address randomisation or make data
  executable: EPERM (the query ``personality(0xffffffff)`` is refused too).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import tempfile

from bus import SandboxUnavailable

DENIED: tuple[str, ...] = (
    # other processes: memory, descriptors, tracing
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "process_madvise",
    # kernel keyrings
    "keyctl",
    "add_key",
    "request_key",
    # mounts and filesystems
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "quotactl_fd",
    "swapon",
    "swapoff",
    "fanotify_init",
    # namespaces
    "unshare",
    "setns",
    # kernel programs, tracing, modules
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "lookup_dcookie",
    # memory and I/O interfaces with a history of exploits
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # system administration
    "reboot",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    "syslog",
    "iopl",
    "ioperm",
    "vhangup",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "sethostname",
    "setdomainname",
)
NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
PERSONALITY_FLAGS: tuple[int, ...] = (
    0x0040000,  # ADDR_NO_RANDOMIZE
    0x0100000,  # MMAP_PAGE_ZERO
    0x0200000,  # ADDR_COMPAT_LAYOUT
    0x0400000,  # READ_IMPLIES_EXEC
)

_ACT_ALLOW = 0x7FFF0000
_ATTR_ACT_BADARCH = 2
_CMP_MASKED_EQ = 7


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise SandboxUnavailable(
            "libseccomp is not installed; bwrap sandboxes need it for their seccomp filter (`apt-get install libseccomp2`)"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


@functools.cache
def sandbox_filter() -> bytes:
    """The compiled filter (classic BPF ``sock_filter`` array for this host's arch)."""
    lib = _lib()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SandboxUnavailable("libseccomp could not start a filter")
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _errno(errno.EPERM)), "set the foreign-ABI action")
        for name in DENIED:
            _add(lib, ctx, _errno(errno.EPERM), name)
        _add(lib, ctx, _errno(errno.ENOSYS), "clone3")
        for flag in NAMESPACE_FLAGS:
            _add(lib, ctx, _errno(errno.EPERM), "clone", _ArgCmp(0, _CMP_MASKED_EQ, flag, flag))
        for flag in PERSONALITY_FLAGS:
            _add(lib, ctx, _errno(errno.EPERM), "personality", _ArgCmp(0, _CMP_MASKED_EQ, flag, flag))
        with tempfile.TemporaryFile() as out:
            _check(lib.seccomp_export_bpf(ctx, out.fileno()), "export the filter")
            out.seek(0)
            program = out.read()
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise SandboxUnavailable("libseccomp produced no usable seccomp program")
    return program


def filter_fd() -> int:
    """A new descriptor to pass to ``bwrap --seccomp``, positioned at the program's start
    (the caller closes it once bwrap has started)."""
    fd = os.memfd_create("taskbus-seccomp", 0)
    try:
        os.write(fd, sandbox_filter())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr == -1:  # __NR_SCMP_ERROR: a name libseccomp does not know at all
        return
    array = (_ArgCmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
    if rc == -errno.EDOM or (rc and nr < 0):
        return  # not a syscall of this architecture (e.g. iopl on aarch64): nothing to deny
    _check(rc, f"deny {name}")


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SandboxUnavailable(f"libseccomp could not {what}: {os.strerror(-rc)}")
