"""Protocol definitions and the Python modules generated from them (no hand-written logic)."""
