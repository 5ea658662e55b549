"""The gateway service: the public API (identify, ingest, catalog reads) over the other services."""
