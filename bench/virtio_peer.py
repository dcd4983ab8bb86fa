#!/usr/bin/env python3
"""Host-side peers for bench/net-vsock.sh: they stand where a host application would.

  blast IFACE DST_MAC COUNT PAYLOAD     send COUNT test frames (ethertype 0x88B5, the pattern of
                                        tests/guest's net-* scenarios) into IFACE as fast as possible
  vsock-sink PATH COUNT_FILE            listen on the Unix socket PATH (petrel's PATH_<port>), read
                                        one connection to its end, write the byte count to COUNT_FILE
  vsock-source PATH PORT BYTES          connect to petrel's socket PATH, "CONNECT PORT", send BYTES
                                        bytes of the vsock pattern, then close

Each exits non-zero with a message when something does not happen as it should.
"""
import os
import socket
import struct
import sys
import time


def test_frame(dst, src, seq, payload_len):
    payload = b"PETREL" + struct.pack(">I", seq)
    filler = bytes((seq + i) & 0xFF for i in range(max(0, payload_len - len(payload))))
    return dst + src + struct.pack(">H", 0x88B5) + (payload + filler)[:payload_len]


def blast(iface, dst_mac, count, payload):
    dst = bytes.fromhex(dst_mac.replace(":", ""))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    src = s.getsockname()[4][:6]
    frames = [test_frame(dst, src, seq, payload) for seq in range(count)]
    start = time.perf_counter()
    for frame in frames:
        while True:
            try:
                s.send(frame)
                break
            except BlockingIOError:
                time.sleep(0.0001)
    elapsed = time.perf_counter() - start
    print(f"host sent frames={count} bytes={count * len(frames[0])} s={elapsed:.3f}")


def pattern(n, offset=0):
    return bytes((offset + i) % 251 for i in range(n))


def vsock_sink(path, count_file):
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(600)
    conn, _ = listener.accept()
    total = 0
    start = None
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        if start is None:
            start = time.perf_counter()
        total += len(data)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    conn.close()
    listener.close()
    os.unlink(path)
    with open(count_file, "w") as f:
        f.write(f"{total} {elapsed:.6f}\n")


def vsock_source(path, port, nbytes):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            sys.exit(f"petrel closed the connection before answering CONNECT {port}")
        reply += chunk
    if not reply.startswith(b"OK "):
        sys.exit(f"unexpected answer to CONNECT: {reply!r}")
    block = pattern(1 << 16)
    sent = 0
    start = time.perf_counter()
    while sent < nbytes:
        n = min(len(block), nbytes - sent)
        s.sendall(block[:n])
        sent += n
    s.shutdown(socket.SHUT_WR)
    # Wait for the guest to finish reading (it closes its side when done).
    s.settimeout(600)
    while s.recv(65536):
        pass
    print(f"host sent bytes={sent} s={time.perf_counter() - start:.3f}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "blast":
        blast(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "vsock-sink":
        vsock_sink(args[0], args[1])
    elif cmd == "vsock-source":
        vsock_source(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
