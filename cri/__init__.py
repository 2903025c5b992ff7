"""The Kubernetes face of wharfd (CRI v1) and the daemon that composes everything."""
