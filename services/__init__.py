"""The Know Your Bands services, one gRPC service per folder (contracts in protos/kyb/v1/).

``detector`` finds logo/cover regions, ``encoder`` turns pixels into features, ``matcher`` serves one
shard of the reference index, ``gateway`` is the public API that fans out to the others. Each has
``servicer.py`` (the servicer class), ``server.py`` (``create_server(config) -> (server, port)``) and
``__main__.py`` (``python -m services.<name>``). The plumbing they share lives in :mod:`kyb.rpc`.
"""
