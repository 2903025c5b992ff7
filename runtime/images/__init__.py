"""Images: references, platforms, media types, and the index/manifest/config documents.

``reference`` parses and normalizes names, ``platforms`` picks what this host
can run, ``mediatypes`` names the OCI and Docker types, and ``manifest`` reads
and validates the JSON documents that come from registries. The registry
client itself lives in :mod:`wharfd.runtime.registry`.
"""
