"""``containerd-shim-wharf-v2``: the runc shim of wharfd (runtime type ``io.containerd.wharf.v2``).

It speaks containerd's runtime v2 protocol, so containerd and wharfd can both
drive it: ``start``/``delete`` on the command line (:mod:`.main`, :mod:`.launch`),
the Task API over ttrpc (:mod:`.service`), task events back to the daemon
(:mod:`.events`). Its parts::

    main ─► launch ──(unix control socket)──► zygote ──fork──► server (one per pod)
                                                                 ├─ service    Task API v2 + v3, exit ordering, events
                                                                 ├─ container  runc create/start/exec/…, rootfs
                                                                 ├─ process    lifecycle state objects
                                                                 ├─ stdio/pump FIFOs, files, loggers, ptys
                                                                 ├─ reaper     the one waitpid(-1), posix_spawn
                                                                 └─ cgroups    metrics, OOM events

The ttrpc server and client, the typed errors and mount(2) are the daemon's
own (:mod:`wharfd.runtime.ttrpc`, :mod:`wharfd.runtime.errors`,
:mod:`wharfd.runtime.mount`), none of which imports grpc. Shims are forked
from a zygote that already imported all of it, so pods share its pages.
"""
