"""The metadata store: one SQLite database holding every namespaced object.

:mod:`wharfd.runtime.metadata.db` owns the connection discipline (one writer
thread, a pool of readers) and the numbered schema migrations; the other
modules are stores over it, one per kind of object.
"""
