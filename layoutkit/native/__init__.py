"""The C side and everything that builds and runs it, one idea per module:

- ``toolchain``: compilers, Debian triplets, the host arch, :class:`Runner`.
- ``build``: the one build cache (:func:`cached_build`) everything that compiles uses.
- ``protocol``: the window the probe is asked for, its report as typed values
  (:class:`Outcome`, :meth:`ScanResult.from_report`).
- ``probe``: build and run ``probe.c`` natively or under qemu-user (:func:`run_probe`).
- ``compare``: the probe against layoutkit's accounting of the same maps.
- ``preload``: the probe inside a running program (``preload.c``, LD_PRELOAD).
- ``twin``: the probe linked so the kernel lays it out like a target.
- ``guest/``: the qemu-system runner (Debian's kernels, initramfs, boot).

C sources: ``probe.c``, ``preload.c``, ``init.c`` (the guest's ``/init``); the headers
``lk_io.h`` (system helpers) and ``lk_scan.h`` (the slot scan and its outcome letters).

Each module is imported by its own name (``from layoutkit.native.probe import
run_probe``): importing the package loads nothing.
"""
