"""An OTLP/gRPC receiver for tests: prints `PORT <n>`, then one JSON line per span it receives
(`"signal": "span"`: service, name, kind, trace/span/parent ids in hex, attributes) and per
metric data point (`"signal": "metric"`: service, name, attributes, and the value of a sum or
the count, sum and bucket counts of a histogram)."""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


# Export calls run on several threads; one lock keeps each JSON line whole.
_out = threading.Lock()


def emit(record):
    line = json.dumps(record) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    emit({
                        "signal": "span",
                        "service": resource.get("service.name", ""),
                        "name": s.name,
                        "kind": s.kind,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    })
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        for rm in request.resource_metrics:
            resource = {a.key: value(a.value) for a in rm.resource.attributes}
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points = getattr(m, kind).data_points if kind else []
                    for p in points:
                        line = {
                            "signal": "metric",
                            "service": resource.get("service.name", ""),
                            "name": m.name,
                            "attributes": {a.key: value(a.value) for a in p.attributes},
                        }
                        if kind == "histogram":
                            line.update(count=p.count, sum=p.sum, bucket_counts=list(p.bucket_counts),
                                        explicit_bounds=list(p.explicit_bounds))
                        else:
                            line["value"] = p.as_int if p.HasField("as_int") else p.as_double
                        emit(line)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsReceiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit_port = f"PORT {port}\n"
    with _out:
        sys.stdout.write(emit_port)
        sys.stdout.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
