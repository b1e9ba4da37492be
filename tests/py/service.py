"""Health, reflection and shutdown of streamhub, seen from Python's grpcio,
grpcio-health-checking and grpcio-reflection (clients nobody here wrote).

Usage: service.py HOST:PORT PROTO_DIR OUT_DIR
Prints READY once it watches health and holds a subscription to room "bye";
the test then publishes 50 messages to "bye" and shuts the server down.
"""
import os
import sys
import threading

import grpc
import grpc_tools
from grpc_tools import protoc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf import descriptor_pool, message_factory


def main():
    addr, proto_dir, out_dir = sys.argv[1:4]
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    assert protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}",
                        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
                        f"{proto_dir}/chat.proto"]) == 0
    sys.path.insert(0, out_dir)
    import chat_pb2
    import chat_pb2_grpc

    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)

    # Reflection: list, describe and call ChatService with no .proto file.
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert "chat.ChatService" in services, services
    assert "grpc.health.v1.Health" in services, services
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("chat.ChatService")
    methods = sorted(m.name for m in svc.methods)
    assert methods == ["Chat", "SendMessage", "StreamMetrics", "SubscribeMessages", "UploadMessages"], methods
    send = svc.FindMethodByName("SendMessage")
    Req = message_factory.GetMessageClass(send.input_type)
    Resp = message_factory.GetMessageClass(send.output_type)
    call = channel.unary_unary("/chat.ChatService/SendMessage",
                               request_serializer=Req.SerializeToString,
                               response_deserializer=Resp.FromString)
    resp = call(Req(user="reflect", content="called via reflection", room="refl"), timeout=10)
    assert resp.message_id.startswith("msg_"), resp
    print("reflection OK", flush=True)

    # Health.
    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", "chat.ChatService"]:
        r = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING, (name, r)
    try:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        raise AssertionError("unknown service answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    first = next(watch)
    assert first.status == health_pb2.HealthCheckResponse.SERVING, first

    # A subscriber that must get everything accepted before shutdown.
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    sub = stub.SubscribeMessages(chat_pb2.SubscribeRequest(room="bye"), timeout=30)
    welcome = next(sub)
    assert welcome.type == chat_pb2.SYSTEM, welcome

    received = []
    sub_error = []

    def read_all():
        try:
            for m in sub:
                received.append(m)
        except grpc.RpcError as e:
            sub_error.append(e)

    reader = threading.Thread(target=read_all)
    reader.start()
    print("READY", flush=True)

    # Shutdown: health turns NOT_SERVING, then the watch ends UNAVAILABLE.
    second = next(watch)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING, second
    try:
        next(watch)
        raise AssertionError("watch went on")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    except StopIteration:
        raise AssertionError("watch ended without a status")

    reader.join(timeout=20)
    assert not reader.is_alive(), "subscriber never ended"
    contents = [m.content for m in received]
    assert contents[:-1] == [str(i) for i in range(50)], contents
    assert received[-1].content == "server shutting down", received[-1]
    assert received[-1].type == chat_pb2.SYSTEM
    assert sub_error and sub_error[0].code() == grpc.StatusCode.UNAVAILABLE, sub_error
    print("health and shutdown OK", flush=True)


if __name__ == "__main__":
    main()
