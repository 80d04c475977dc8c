"""gRPC's xDS interop test client, on grpcio: the peer our interop driver runs beside ours.

It implements the contract of grpc's `doc/xds-test-descriptions.md` (the flags, and
`LoadBalancerStatsService`, `XdsUpdateClientConfigureService` and CSDS on the stats port),
like grpc's own `xds_interop_client.py`, but is written here and needs no generated stubs:
the `grpc.testing` messages are described below with protobuf's descriptor API, with the
field numbers of grpc's `messages.proto`.

  GRPC_XDS_BOOTSTRAP=bootstrap.json python xds_interop_client.py --server=xds:///server:8080 \\
      --qps=100 --rpc=UnaryCall,EmptyCall --metadata=EmptyCall:k:v --stats_port=0 --secure_mode

With `--stats_port=0` it picks a port and prints "PORT <n>" once it serves.
"""

import argparse
import collections
import sys
import threading
import time
from concurrent import futures

import grpc
import grpc.experimental
from grpc._cython import cygrpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
INT32, BOOL, STRING, BYTES, MESSAGE, ENUM = (
    F.TYPE_INT32,
    F.TYPE_BOOL,
    F.TYPE_STRING,
    F.TYPE_BYTES,
    F.TYPE_MESSAGE,
    F.TYPE_ENUM,
)
REPEATED = F.LABEL_REPEATED


def _messages():
    """The grpc.testing messages the contract uses, as message classes by name."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="mesh/grpc_testing.proto", package="grpc.testing", syntax="proto3"
    )

    def message(parent, name, fields):
        m = parent.add()
        m.name = name
        for field in fields:
            fname, number, ftype = field[:3]
            label = field[3] if len(field) > 3 else F.LABEL_OPTIONAL
            type_name = field[4] if len(field) > 4 else ""
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    def map_field(m, fname, number, key, value, value_type="", scope=None):
        """A `map<key, value>` field: a repeated nested `...Entry` message. `scope` is the
        full name of `m` when it is nested."""
        entry_name = "".join(p.capitalize() for p in fname.split("_")) + "Entry"
        entry = message(m.nested_type, entry_name, [("key", 1, key), ("value", 2, value, F.LABEL_OPTIONAL, value_type)])
        entry.options.map_entry = True
        full = f"{scope or '.grpc.testing.' + m.name}.{entry_name}"
        m.field.add(name=fname, number=number, type=MESSAGE, label=REPEATED, type_name=full)

    mt = fd.message_type
    message(mt, "Empty", [])
    message(mt, "Payload", [("type", 1, INT32), ("body", 2, BYTES)])
    message(
        mt,
        "SimpleRequest",
        [
            ("response_type", 1, INT32),
            ("response_size", 2, INT32),
            ("payload", 3, MESSAGE, F.LABEL_OPTIONAL, ".grpc.testing.Payload"),
            ("fill_server_id", 9, BOOL),
        ],
    )
    message(
        mt,
        "SimpleResponse",
        [
            ("payload", 1, MESSAGE, F.LABEL_OPTIONAL, ".grpc.testing.Payload"),
            ("server_id", 4, STRING),
            ("hostname", 6, STRING),
        ],
    )
    message(
        mt,
        "LoadBalancerStatsRequest",
        [("num_rpcs", 1, INT32), ("timeout_sec", 2, INT32), ("metadata_keys", 3, STRING, REPEATED)],
    )
    rsp = message(mt, "LoadBalancerStatsResponse", [("num_failures", 2, INT32)])
    by_peer = message(rsp.nested_type, "RpcsByPeer", [])
    map_field(by_peer, "rpcs_by_peer", 1, STRING, INT32, scope=".grpc.testing.LoadBalancerStatsResponse.RpcsByPeer")
    map_field(rsp, "rpcs_by_peer", 1, STRING, INT32)
    map_field(
        rsp, "rpcs_by_method", 3, STRING, MESSAGE, ".grpc.testing.LoadBalancerStatsResponse.RpcsByPeer"
    )
    message(mt, "LoadBalancerAccumulatedStatsRequest", [])
    acc = message(mt, "LoadBalancerAccumulatedStatsResponse", [])
    method_stats = message(acc.nested_type, "MethodStats", [("rpcs_started", 1, INT32)])
    map_field(
        method_stats,
        "result",
        2,
        INT32,
        INT32,
        scope=".grpc.testing.LoadBalancerAccumulatedStatsResponse.MethodStats",
    )
    map_field(acc, "num_rpcs_started_by_method", 1, STRING, INT32)
    map_field(acc, "num_rpcs_succeeded_by_method", 2, STRING, INT32)
    map_field(acc, "num_rpcs_failed_by_method", 3, STRING, INT32)
    map_field(
        acc,
        "stats_per_method",
        4,
        STRING,
        MESSAGE,
        ".grpc.testing.LoadBalancerAccumulatedStatsResponse.MethodStats",
    )
    configure = message(
        mt,
        "ClientConfigureRequest",
        [
            ("types", 1, ENUM, REPEATED, ".grpc.testing.ClientConfigureRequest.RpcType"),
            ("metadata", 2, MESSAGE, REPEATED, ".grpc.testing.ClientConfigureRequest.Metadata"),
            ("timeout_sec", 3, INT32),
        ],
    )
    rpc_type = configure.enum_type.add(name="RpcType")
    rpc_type.value.add(name="EMPTY_CALL", number=0)
    rpc_type.value.add(name="UNARY_CALL", number=1)
    message(
        configure.nested_type,
        "Metadata",
        [
            ("type", 1, ENUM, F.LABEL_OPTIONAL, ".grpc.testing.ClientConfigureRequest.RpcType"),
            ("key", 2, STRING),
            ("value", 3, STRING),
        ],
    )
    message(mt, "ClientConfigureResponse", [])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.testing.{m.name}"))
        for m in fd.message_type
    }


M = _messages()
# The methods, by the names `--rpc` uses: (path, request, response, accumulated-stats key).
METHODS = {
    "EmptyCall": ("/grpc.testing.TestService/EmptyCall", M["Empty"], M["Empty"], "EMPTY_CALL"),
    "UnaryCall": (
        "/grpc.testing.TestService/UnaryCall",
        M["SimpleRequest"],
        M["SimpleResponse"],
        "UNARY_CALL",
    ),
}
BY_ENUM = {0: "EmptyCall", 1: "UnaryCall"}


class Watcher:
    """`GetClientStats`: the next `n` RPCs sent, counted as they finish."""

    def __init__(self, n):
        self.remaining = n
        self.pending = n
        self.by_peer = collections.Counter()
        self.by_method = collections.defaultdict(collections.Counter)
        self.failures = 0
        self.done = threading.Event()
        if n == 0:
            self.done.set()


class Client:
    def __init__(self, channel, qps, rpcs, metadata, timeout):
        self.channel = channel
        self.qps = qps
        self.lock = threading.Lock()
        self.rpcs = rpcs
        self.metadata = metadata  # method name -> [(key, value)]
        self.timeout = timeout
        self.watchers = []
        self.started = collections.Counter()
        self.results = collections.defaultdict(collections.Counter)
        self.calls = {
            name: channel.unary_unary(
                path, request_serializer=req.SerializeToString, response_deserializer=rsp.FromString
            )
            for name, (path, req, rsp, _) in METHODS.items()
        }

    def run(self):
        """Open loop: one send per method every 1/qps seconds, on a fixed schedule."""
        interval = 1.0 / self.qps
        next_at = time.monotonic()
        while True:
            with self.lock:
                rpcs, metadata, timeout = list(self.rpcs), dict(self.metadata), self.timeout
            for name in rpcs:
                self.send(name, metadata.get(name, []), timeout)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def send(self, name, metadata, timeout):
        _, req, _, key = METHODS[name]
        request = req(fill_server_id=True) if name == "UnaryCall" else req()
        with self.lock:
            self.started[key] += 1
            watchers = [w for w in self.watchers if w.remaining > 0]
            for w in watchers:
                w.remaining -= 1
        future = self.calls[name].future(request, metadata=metadata, timeout=timeout)
        future.add_done_callback(lambda f: self.finished(f, name, key, watchers))

    def finished(self, future, name, key, watchers):
        code = future.code()
        peer = None
        if code == grpc.StatusCode.OK:
            for k, v in future.initial_metadata() or ():
                if k == "hostname":
                    peer = v
            if peer is None and name == "UnaryCall":
                peer = future.result().hostname or None
        with self.lock:
            self.results[key][code.value[0]] += 1
            for w in watchers:
                if peer is None:
                    w.failures += 1
                else:
                    w.by_peer[peer] += 1
                    w.by_method[name][peer] += 1
                w.pending -= 1
                if w.pending == 0:
                    w.done.set()

    # LoadBalancerStatsService
    def get_client_stats(self, request, context):
        w = Watcher(request.num_rpcs)
        with self.lock:
            self.watchers.append(w)
        w.done.wait(request.timeout_sec or None)
        with self.lock:
            self.watchers.remove(w)
            rsp = M["LoadBalancerStatsResponse"](num_failures=w.failures + w.pending)
            for peer, n in w.by_peer.items():
                rsp.rpcs_by_peer[peer] = n
            for method, peers in w.by_method.items():
                for peer, n in peers.items():
                    rsp.rpcs_by_method[method].rpcs_by_peer[peer] = n
        return rsp

    def get_client_accumulated_stats(self, request, context):
        rsp = M["LoadBalancerAccumulatedStatsResponse"]()
        with self.lock:
            for key, n in self.started.items():
                stats = rsp.stats_per_method[key]
                stats.rpcs_started = n
                for code, count in self.results[key].items():
                    stats.result[code] = count
        return rsp

    # XdsUpdateClientConfigureService
    def configure(self, request, context):
        metadata = collections.defaultdict(list)
        for md in request.metadata:
            metadata[BY_ENUM[md.type]].append((md.key, md.value))
        with self.lock:
            self.rpcs = [BY_ENUM[t] for t in request.types]
            self.metadata = metadata
            if request.timeout_sec:
                self.timeout = request.timeout_sec
        return M["ClientConfigureResponse"]()


def unary(handler, req, rsp):
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=req.FromString, response_serializer=rsp.SerializeToString
    )


def parse_metadata(text):
    out = collections.defaultdict(list)
    for item in filter(None, text.split(",")):
        parts = item.split(":", 2)
        if len(parts) != 3 or parts[0] not in METHODS:
            sys.exit(f"--metadata: {item!r} is not METHOD:KEY:VALUE with METHOD one of {sorted(METHODS)}")
        out[parts[0]].append((parts[1], parts[2]))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--qps", type=int, default=1)
    p.add_argument("--rpc", default="UnaryCall")
    p.add_argument("--metadata", default="")
    p.add_argument("--stats_port", type=int, default=50052)
    p.add_argument("--rpc_timeout_sec", type=int, default=30)
    p.add_argument("--secure_mode", action="store_true")
    args = p.parse_args()
    rpcs = [r for r in args.rpc.split(",") if r]
    unknown = [r for r in rpcs if r not in METHODS]
    if unknown:
        sys.exit(f"--rpc: unknown method {unknown[0]!r}, expected one of {sorted(METHODS)}")
    if args.secure_mode:
        creds = grpc.xds_channel_credentials(fallback_credentials=grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(args.server, creds)
    else:
        channel = grpc.insecure_channel(args.server)
    client = Client(channel, args.qps, rpcs, parse_metadata(args.metadata), args.rpc_timeout_sec)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    stats = grpc.method_handlers_generic_handler(
        "grpc.testing.LoadBalancerStatsService",
        {
            "GetClientStats": unary(
                client.get_client_stats, M["LoadBalancerStatsRequest"], M["LoadBalancerStatsResponse"]
            ),
            "GetClientAccumulatedStats": unary(
                client.get_client_accumulated_stats,
                M["LoadBalancerAccumulatedStatsRequest"],
                M["LoadBalancerAccumulatedStatsResponse"],
            ),
        },
    )
    configure = grpc.method_handlers_generic_handler(
        "grpc.testing.XdsUpdateClientConfigureService",
        {"Configure": unary(client.configure, M["ClientConfigureRequest"], M["ClientConfigureResponse"])},
    )
    # CSDS, as grpcio-csds serves it: grpc's core already encodes the ClientStatusResponse
    # (grpcio-csds only adds generated classes, and its protobuf 7 pin conflicts with
    # opentelemetry-proto's), so the bytes pass through.
    csds = grpc.method_handlers_generic_handler(
        "envoy.service.status.v3.ClientStatusDiscoveryService",
        {
            "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                lambda request, context: cygrpc.dump_xds_configs(),
                request_deserializer=None,
                response_serializer=None,
            )
        },
    )
    server.add_generic_rpc_handlers((stats, configure, csds))
    port = server.add_insecure_port(f"127.0.0.1:{args.stats_port}")
    server.start()
    print(f"PORT {port}", flush=True)
    client.run()


if __name__ == "__main__":
    main()
