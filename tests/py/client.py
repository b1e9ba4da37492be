"""Drives streamhub with Python's grpcio: a client nobody on this project wrote.

Usage: client.py HOST:PORT PROTO_DIR OUT_DIR
Generates stubs from PROTO_DIR/chat.proto into OUT_DIR, then exercises all
five RPCs. Exits non-zero with a message on the first mismatch.
"""
import sys
import threading

from grpc_tools import protoc


def main():
    addr, proto_dir, out_dir = sys.argv[1:4]
    import os
    import grpc_tools
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}", f"{proto_dir}/chat.proto",
    ])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out_dir)
    import grpc
    import chat_pb2
    import chat_pb2_grpc

    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = chat_pb2_grpc.ChatServiceStub(channel)

    # Server streaming: the welcome first, then what is published.
    sub = stub.SubscribeMessages(chat_pb2.SubscribeRequest(room="py", user=""), timeout=20)
    welcome = next(sub)
    assert welcome.type == chat_pb2.SYSTEM, welcome

    # Unary.
    resp = stub.SendMessage(chat_pb2.SendMessageRequest(user="py", content="hello from python", room="py"), timeout=10)
    assert resp.message_id, resp
    got = next(sub)
    assert got.id == resp.message_id and got.content == "hello from python", got
    assert got.timestamp.seconds == resp.timestamp.seconds

    # Unary errors carry the right code.
    try:
        stub.SendMessage(chat_pb2.SendMessageRequest(user="", content="x", room="py"), timeout=10)
        raise AssertionError("empty user accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert e.details() == "user is required", e.details()

    # Client streaming.
    msgs = [chat_pb2.Message(id=f"b{i}", user="py", content=f"batch {i}", room="py") for i in range(5)]
    up = stub.UploadMessages(iter(msgs), timeout=10)
    assert up.message_count == 5 and up.success, up
    for i in range(5):
        m = next(sub)
        assert m.content == f"batch {i}", m

    # Bidirectional.
    replies = stub.Chat(iter([chat_pb2.Message(id="c1", user="py", content="ping", room="py")]), timeout=10)
    echo = next(replies)
    assert echo.id == "echo_c1" and echo.content == "Echo: ping", echo
    m = next(sub)
    # A named Chat user announces itself first.
    if m.type == chat_pb2.JOIN:
        m = next(sub)
    assert m.content == "ping", m

    # Metrics.
    metrics = stub.StreamMetrics(chat_pb2.MetricsRequest(instance_id="py-1", interval_seconds=1), timeout=10)
    names = set()
    for _ in range(7):
        metric = next(metrics)
        assert metric.labels["instance"] == "py-1", metric
        names.add(metric.name)
    metrics.cancel()
    assert {"cpu_usage", "memory_usage", "requests_per_second"} <= names, names
    sub.cancel()
    print("python client: all five RPCs OK")


if __name__ == "__main__":
    main()
