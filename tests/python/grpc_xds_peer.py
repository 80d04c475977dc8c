"""A grpcio peer for interop tests: a tiny gRPC server, or an xDS client.

The service is generic (no generated stubs): `/mesh.test.Echo/Who` answers with the server's
name as raw bytes.

  server NAME            serve on an ephemeral loopback port; print "PORT <n>" when ready
  client TARGET N [K=V]  make N calls to TARGET (e.g. xds:///reviews:9080) with metadata K=V;
                         print one JSON list: {"ok": name} or {"code": STATUS} per call
"""

import json
import sys
from concurrent import futures

import grpc

METHOD = "/mesh.test.Echo/Who"


def serve(name: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "mesh.test.Echo",
        {"Who": grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def client(target: str, n: int, pairs: list) -> None:
    metadata = [tuple(p.split("=", 1)) for p in pairs]
    results = []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        for _ in range(n):
            try:
                results.append({"ok": call(b"", metadata=metadata, timeout=10).decode()})
            except grpc.RpcError as e:
                results.append({"code": e.code().name, "details": e.details()})
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    elif sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(__doc__)
