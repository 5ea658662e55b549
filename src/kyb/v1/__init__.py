"""Generated protobuf and gRPC stubs of the kyb.v1 contracts in protos/kyb/v1/. DO NOT EDIT.

Every ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` here is written by ``scripts/gen_protos.sh``
(one grpcio-tools command) and only imported; change the .proto files and regenerate instead.
tests/protos/test_stubs_fresh.py fails when these files no longer match the protos.
"""
