"""The seccomp denylist every sandboxed process runs under, compiled for bwrap's ``--seccomp FD``.

Namespaces, uid 65534 and ``--cap-drop ALL`` already make most privileged calls fail; this
filter removes the kernel surface that stays reachable without privileges (ptrace inside the
sandbox, keyrings, io_uring, perf, user namespaces, the new mount API, exotic socket
families) plus the calls whose only use in a playground is an escape attempt. It is a
Flatpak-style denylist on top of isolate's list, not an allowlist: Go programs may use any
ordinary syscall, and a denylist cannot break a future Go runtime in surprising ways.

Only the native architecture is in the filter; a syscall made through another ABI
(``int 0x80`` on x86_64, x32, AArch32 compat) gets ENOSYS.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from collections.abc import Iterator

import pyseccomp as sc

EPERM = sc.ERRNO(errno.EPERM)
# ENOSYS, not EPERM, where a caller is expected to fall back to an older call (clone3 ->
# clone in glibc and Go) or to treat the feature as absent (new mount API, io_uring)
ENOSYS = sc.ERRNO(errno.ENOSYS)
EAFNOSUPPORT = sc.ERRNO(errno.EAFNOSUPPORT)

# Denied whatever the arguments. Names unknown on the native architecture are skipped.
_DENY: dict[str, int] = {
    # looking into or steering another process of the same job
    "ptrace": EPERM, "process_vm_readv": EPERM, "process_vm_writev": EPERM,
    "pidfd_getfd": EPERM, "process_madvise": EPERM, "kcmp": EPERM,
    # perf and eBPF are the kernel's largest unprivileged attack surface
    "perf_event_open": EPERM, "bpf": EPERM,
    # keyrings are not namespaced: a channel between jobs (and a CVE source)
    "add_key": EPERM, "keyctl": EPERM, "request_key": EPERM,
    # changing the filesystem view or namespaces
    "mount": EPERM, "umount": EPERM, "umount2": EPERM, "pivot_root": EPERM,
    "chroot": EPERM, "unshare": EPERM, "setns": EPERM,
    "open_tree": ENOSYS, "move_mount": ENOSYS, "fsopen": ENOSYS, "fsconfig": ENOSYS,
    "fsmount": ENOSYS, "fspick": ENOSYS, "mount_setattr": ENOSYS,
    # seccomp cannot read clone3's flags (they live in memory), so clone3 cannot be
    # checked for CLONE_NEW*; ENOSYS makes glibc and Go use clone, which is checked
    "clone3": ENOSYS,
    "io_uring_setup": ENOSYS, "io_uring_enter": ENOSYS, "io_uring_register": ENOSYS,
    # whole-machine operations: capabilities stop them, this is defence in depth
    "kexec_load": EPERM, "kexec_file_load": EPERM, "init_module": EPERM,
    "finit_module": EPERM, "delete_module": EPERM, "reboot": EPERM, "swapon": EPERM,
    "swapoff": EPERM, "acct": EPERM, "quotactl": EPERM, "quotactl_fd": EPERM,
    "syslog": EPERM, "vhangup": EPERM, "lookup_dcookie": EPERM, "uselib": EPERM,
    "name_to_handle_at": EPERM, "open_by_handle_at": EPERM, "modify_ldt": EPERM,
    # userfaultfd stalls kernel copies at will: the classic race-widening exploit aid
    "userfaultfd": EPERM,
    # NUMA policy calls (as Flatpak): no use in a playground, they touch shared state
    "move_pages": EPERM, "migrate_pages": EPERM, "mbind": EPERM,
    "set_mempolicy": EPERM, "get_mempolicy": EPERM,
}

# Newer than libseccomp 2.5.4 (Debian 12) knows by name; numbers are the same on x86_64
# and aarch64 (the shared table since 424). statmount/listmount show bind-mount sources,
# i.e. host paths, the same leak as /proc/self/mountinfo.
_DENY_BY_NUMBER: dict[int, int] = {457: ENOSYS, 458: ENOSYS, 467: ENOSYS}  # *mount, open_tree_attr
_NUMBERED_ARCHES = (sc.Arch.X86_64, sc.Arch.AARCH64)

CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
# AF_NETLINK is denied too: Go's net.Dial/Listen/LookupHost never open one; only
# net.Interfaces() needs it, and it fails cleanly ("address family not supported")
ALLOWED_FAMILIES = (AF_UNIX, AF_INET, AF_INET6)
PER_LINUX = 0


def _rules(flt: sc.SyscallFilter) -> None:
    arch = sc.system_arch()
    for name, action in _DENY.items():
        if sc.resolve_syscall(arch, name) < 0:  # not on this arch (uselib on aarch64)
            continue
        flt.add_rule(action, name)
    if arch in _NUMBERED_ARCHES:
        for nr, action in _DENY_BY_NUMBER.items():
            flt.add_rule(action, nr)

    # one rule per flag: a rule's comparisons are ANDed, separate rules are ORed
    for flag in CLONE_NEW_FLAGS.values():
        flt.add_rule(EPERM, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))

    # the kernel truncates ioctl's cmd to 32 bits: compare only the low half, or
    # 0x1_00005412 would slip past (CVE-2019-10063 in Flatpak)
    for cmd in (TIOCSTI, TIOCLINUX):
        flt.add_rule(EPERM, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, cmd))

    # Each gap between allowed families is denied by equality, everything above the last
    # by an unsigned 64-bit >, which also catches garbage in the upper 32 bits.
    for family in _denied_families_below(max(ALLOWED_FAMILIES)):
        flt.add_rule(EAFNOSUPPORT, "socket", sc.Arg(0, sc.EQ, family))
    flt.add_rule(EAFNOSUPPORT, "socket", sc.Arg(0, sc.GT, max(ALLOWED_FAMILIES)))
    flt.add_rule(EAFNOSUPPORT, "socketpair", sc.Arg(0, sc.NE, AF_UNIX))

    # READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and friends weaken the next exec; NE catches
    # garbage in the upper half as well. (The 0xffffffff query is denied too: libseccomp
    # 2.5 allows one comparison per argument and rule, and nothing in Go queries it.)
    flt.add_rule(EPERM, "personality", sc.Arg(0, sc.NE, PER_LINUX))


def _denied_families_below(top: int) -> Iterator[int]:
    return (f for f in range(top) if f not in ALLOWED_FAMILIES)


@functools.cache
def filter_program(*, for_toolchain: bool = False) -> bytes:
    """The BPF program (``struct sock_filter[]``, as bwrap's ``--seccomp FD`` reads it).

    ``for_toolchain`` selects the filter for go build/vet/gofmt. Both keep flock and
    fcntl locks allowed (``go`` fails with "RLock go.mod: operation not permitted"
    without them), so today the two programs are identical; the flag keeps call sites
    honest about which stage they start.
    """
    del for_toolchain  # same policy, see docstring; still part of the cache key
    flt = sc.SyscallFilter(sc.ALLOW)
    flt.set_attr(sc.Attr.ACT_BADARCH, ENOSYS)
    _rules(flt)
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def memfd_with_filter(for_toolchain: bool = False) -> int:
    """A fresh memfd holding the filter, positioned at 0; close-on-exec, as every new fd.

    The caller hands it to the child with ``pass_fds`` (which clears close-on-exec in the
    child only) and closes it after the spawn. bwrap reads it to EOF once, so each spawn
    needs its own fd.
    """
    program = filter_program(for_toolchain=for_toolchain)
    fd = os.memfd_create("gofiddle-seccomp", os.MFD_CLOEXEC)
    try:
        view = memoryview(program)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
