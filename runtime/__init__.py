"""The engine: metadata, content, snapshots, images, tasks, events and the containerd API."""
