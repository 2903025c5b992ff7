"""gRPC servicers for containerd's client API: thin adapters over the stores."""
