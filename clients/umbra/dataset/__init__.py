"""Umbra's dataset format, shared by the client (ingest, upload, export) and the services (commit, read).

A dataset version is a manifest (one JSON line per sample) plus tar shards of encoded images named like
WebDataset's (`shard-000000.tar`, members `<key>.png` and `<key>.json`). See manifest.py and shards.py.
"""
