"""Python's grpcio over TLS against streamhub's gRPC port.

Usage: tls_client.py HOST:PORT CA_PEM PROTO_DIR OUT_DIR [TOKEN USER]
Calls SendMessage with per-call metadata, subscribes and receives the
message, checks health, all on a channel made with
ssl_channel_credentials(CA). With TOKEN (a server with --auth required),
every chat call carries it as `authorization: Bearer TOKEN`, the message
must come back under USER (the token's sub), and calls without it or with a
forged one must end UNAUTHENTICATED, one for another user's name
PERMISSION_DENIED. Prints one JSON line; exits non-zero on the first
mismatch.
"""
import json
import os
import sys

from grpc_tools import protoc


def main():
    addr, ca_path, proto_dir, out_dir = sys.argv[1:5]
    token, token_user = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else (None, None)
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
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open(ca_path, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    # The certificate names "localhost"; the address is 127.0.0.1.
    channel = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    auth = [("authorization", f"Bearer {token}")] if token else [("authorization", "Bearer not-checked")]
    sub = stub.SubscribeMessages(chat_pb2.SubscribeRequest(room="tls", user=""), timeout=20, metadata=auth)
    welcome = next(sub)
    assert welcome.type == chat_pb2.SYSTEM, welcome
    resp = stub.SendMessage(
        chat_pb2.SendMessageRequest(user="" if token else "py", content="over tls", room="tls"),
        timeout=10,
        metadata=auth,
    )
    got = next(sub)
    assert got.id == resp.message_id and got.content == "over tls", got
    assert got.user == (token_user or "py"), got
    if token:
        refusals = {
            "none": ([], "", grpc.StatusCode.UNAUTHENTICATED),
            "forged": ([("authorization", f"Bearer {token[:-2]}xx")], "", grpc.StatusCode.UNAUTHENTICATED),
            "impersonation": (auth, "someone-else", grpc.StatusCode.PERMISSION_DENIED),
        }
        for name, (metadata, user, code) in refusals.items():
            try:
                stub.SendMessage(chat_pb2.SendMessageRequest(user=user, content="x", room="tls"),
                                 timeout=10, metadata=metadata)
                raise AssertionError(f"{name}: accepted")
            except grpc.RpcError as e:
                assert e.code() == code, (name, e.code(), e.details())
        # The open stream was not disturbed by any of it.
        again = stub.SendMessage(chat_pb2.SendMessageRequest(content="after", room="tls"),
                                 timeout=10, metadata=auth)
        got = next(sub)
        assert got.id == again.message_id, got
    sub.cancel()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    print(json.dumps({"ok": True, "message_id": resp.message_id}))


if __name__ == "__main__":
    main()
