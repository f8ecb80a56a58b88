"""Proxyless gRPC helpers for tests/xds.rs (grpcio from the pinned .venv).

serve PORT...   run one gRPC server per port; server i answers "g{i}" to /greeter.Greeter/Hello
call TARGET     read a count N per line on stdin; make N unary calls on ONE channel to TARGET
                (e.g. xds:///greeter, with GRPC_XDS_BOOTSTRAP set) and print a JSON line of
                reply -> count. The same channel serves every line, so it follows xDS updates.
"""
import json
import sys
from concurrent import futures

import grpc

METHOD = "/greeter.Greeter/Hello"


def serve(ports):
    servers = []
    for i, port in enumerate(ports):
        name = f"g{i}".encode()

        def hello(request, context, name=name):
            return name

        handler = grpc.method_handlers_generic_handler(
            "greeter.Greeter",
            {"Hello": grpc.unary_unary_rpc_method_handler(hello)},
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        servers.append(server)
    for server in servers:
        server.wait_for_termination()


def call(target):
    channel = grpc.insecure_channel(target)
    hello = channel.unary_unary(METHOD)
    for line in sys.stdin:
        n = int(line.strip() or "0")
        counts = {}
        for _ in range(n):
            reply = hello(b"hi", timeout=20, wait_for_ready=True).decode()
            counts[reply] = counts.get(reply, 0) + 1
        print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    else:
        call(sys.argv[2])
