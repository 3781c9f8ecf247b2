"""Load generator and benchmark suite: ours vs Synapse over the Matrix Client-Server API (README.md)."""
