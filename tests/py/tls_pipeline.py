"""Python's ssl module against streamhub's HTTP port over TLS: pipelined
requests in one write, a body and the next request in one record (the
server must read what rustls decrypted beyond the body), then the same
connection kept alive for one more request after a pause.

Usage: tls_pipeline.py HOST:PORT CA_PEM IDLE_SECS
IDLE_SECS is the server's --http-idle-timeout-secs: past it the server must
end the idle session with close_notify (a bare TCP close is an error here).
Prints one JSON line; exits non-zero on the first mismatch.
"""
import json
import socket
import ssl
import sys
import time


def read_responses(tls, count, deadline):
    """Reads until `count` whole responses (each with Content-Length) arrived."""
    data = b""
    statuses = []
    while len(statuses) < count:
        assert time.monotonic() < deadline, f"timed out after {statuses}: {data!r}"
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(data) >= head_end + 4 + length:
                statuses.append(int(head.split(" ")[1]))
                data = data[head_end + 4 + length:]
                continue
        chunk = tls.recv(65536)
        assert chunk, f"closed after {statuses}"
        data += chunk
    return statuses


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    ctx.set_alpn_protocols(["http/1.1"])
    idle = float(sys.argv[3])
    deadline = time.monotonic() + 20 + idle
    with socket.create_connection((host, int(port)), timeout=10 + idle) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
            assert tls.selected_alpn_protocol() == "http/1.1", tls.selected_alpn_protocol()
            body = json.dumps({"room": "pipeline", "user": "py", "content": "one write"}).encode()
            post = (b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            tls.sendall(get + post + get + get)
            first = read_responses(tls, 4, deadline)
            assert first == [200, 200, 200, 200], first
            # A head alone, then its body and the next request in one record:
            # the server reads only the body's length of that record, and
            # the GET waits decrypted inside rustls, where poll(2) cannot
            # see it.
            head_end = post.index(b"\r\n\r\n") + 4
            tls.sendall(post[:head_end])
            time.sleep(0.3)
            tls.sendall(post[head_end:] + get)
            hidden = read_responses(tls, 2, deadline)
            assert hidden == [200, 200], hidden
            time.sleep(0.5)
            tls.sendall(get)
            again = read_responses(tls, 1, deadline)
            assert again == [200], again
            # Idle past the keep-alive: close_notify, then the end.
            assert tls.recv(1) == b"", "close_notify ends the session"
            print(json.dumps({"ok": True, "version": tls.version()}))


if __name__ == "__main__":
    main()
