"""Helpers shared by tests: a real docker-registry runner, a token server, and test image builders."""
