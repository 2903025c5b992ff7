"""``wharf``: the administrative CLI of wharfd, laid out command for command like containerd's ``ctr``.

``main`` builds the command tree from one module per command group (each
exposing ``register(subparsers)``); ``commands`` holds what the groups share;
``tabwriter`` aligns tables exactly as Go's text/tabwriter, so output matches
ctr's byte for byte.
"""
