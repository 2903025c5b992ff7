"""Tasks: the daemon side of containerd's runtime v2 (shim manager, bundles, per-task handles).

A task is a container's running process tree, owned by a shim process that
outlives the daemon. The pieces::

    manager  TaskManager: create/get/list/delete tasks, sandbox grouping, shim
             death clean-up, recovery from the bundles on daemon start (PLUGIN)
    shim     resolving a runtime type to its binary, the ``start``/``delete``
             launch protocol (bootstrap and legacy), the shim log FIFO
    bundle   the on-disk bundle <state>/<namespace>/<id>/ that holds a task's state
    task     Task: one task's ttrpc connection and the Task API calls on it
"""
