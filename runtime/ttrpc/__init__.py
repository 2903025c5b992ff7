"""ttrpc: containerd's lightweight RPC over unix sockets, spoken between the daemon and shims.

``protocol`` (frames, flags, status mapping), ``connection`` (the asyncio
protocol both ends share), ``server`` (TtrpcServer), ``client`` (TtrpcClient),
``stream`` (ClientStream) and ``services`` (descriptor-driven registration and
stubs). Import from the submodules.
"""
