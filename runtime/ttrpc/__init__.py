"""ttrpc: containerd's lightweight RPC over unix sockets, spoken between the daemon and shims."""
