"""The ``qemu-system`` runner: programs run on a real foreign kernel.

qemu-user is quick but is not a kernel (``toolchain.QEMU_USER_INFIDELITIES``). Here
Debian's own kernel for the arch boots under ``qemu-system-<arch>`` (TCG) with an
initramfs written from Python; ``/init`` prints the kernel facts, runs each program as
uid/gid 65534 (relaying a probe's handshake, waiting for a report file it leaves) and
prints its output, then powers the guest off.

- ``kernels``: which Debian kernel package per arch, fetched once (:func:`fetch_kernel`).
- ``initramfs``: the cpio archive, with a dynamic program's loader and libraries.
- ``boot``: booting, the console protocol of ``init.c`` (:func:`run_in_guest`).
- ``probe``: the probe in the guest (static, or a twin doing the handshake over the
  serial console), its report as a ``ScanResult``.
- ``program``: ``probe -- PROGRAM`` in the guest (the preload library inside PROGRAM; a
  static PROGRAM's layout twin).
"""
