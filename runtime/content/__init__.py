"""Content-addressed blobs and the resumable, digest-verified ingests that write them.

:mod:`~wharfd.runtime.content.store` states the contract (the
:class:`~wharfd.runtime.content.store.ContentStore` protocol, ``Info``,
``Status`` and the digest rules); :mod:`~wharfd.runtime.content.local` is the
implementation over a directory and the metadata database;
:mod:`~wharfd.runtime.content.testsuite` is the conformance suite every
implementation must pass.
"""
