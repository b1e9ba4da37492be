"""Sends messages to streamhub with Python's grpcio, one per line of stdin.

Usage: send.py HOST:PORT PROTO_DIR OUT_DIR ROOM USER
Generates stubs from PROTO_DIR/chat.proto into OUT_DIR, connects, prints
"ready", then for each line read sends SendMessage and prints
"sent <message id>" (flushed), until stdin ends.
"""
import os
import sys

from grpc_tools import protoc


def main():
    addr, proto_dir, out_dir, room, user = sys.argv[1:6]
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
    print("ready", flush=True)
    for line in sys.stdin:
        resp = stub.SendMessage(
            chat_pb2.SendMessageRequest(user=user, content=line.rstrip("\n"), room=room),
            timeout=10,
        )
        print("sent", resp.message_id, flush=True)


if __name__ == "__main__":
    main()
