"""OCI runtime spec generation: containerd's default spec, spec options, seccomp, image config, users.

A spec is a plain JSON-shaped ``dict`` (:data:`wharfd.runtime.oci.spec.Spec`)
built by :func:`wharfd.runtime.oci.spec.default_spec` and changed by small
option functions (``with_…``), in the manner of containerd's ``oci.With…``.
The default seccomp profile is in :mod:`.seccomp`, the image-config rules of
``ctr`` and of the CRI in :mod:`.image_config`, and the safe ``/etc/passwd``
and ``/etc/group`` lookup inside an image rootfs in :mod:`.users`.
"""
