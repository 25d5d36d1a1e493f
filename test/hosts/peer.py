#!/usr/bin/env python3
"""Test host programs run inside lab namespaces by the integration tests.

Every command prints one JSON line with what it observed on the wire and
exits; every wait is bounded by --timeout. Subcommands:

  tcp-server  --port P [--count N]         accept N connections; reply with the peer and the sha256 of what it read
  tcp-client  --host H --port P --bytes N  send N pseudo-random bytes, print own sha256 and the server's reply
  udp-server  --port P [--count N]         answer N datagrams with {"peer": ..., "len": ..., "sha256": ...} (+ --echo-bytes)
  udp-client  --host H --port P [--sport S] [--size N] [--expect-bytes N]
  udp-refused --host H --port P            connected UDP socket; report whether ECONNREFUSED came back
  udp-pmtu    --host H --port P --size N   DF datagram; report the path MTU learnt from frag-needed
  raw         --dst D --proto N --hex PAYLOAD [--bad-checksum]  send one raw IPv4 payload (kernel builds the IP header)
  udp-frags   --src S --dst D --sport A --dport B --size N [--reverse]  send one UDP datagram as IP fragments
  listen-raw  --proto N --seconds T         count raw packets of a protocol arriving at this host
"""
import argparse
import hashlib
import json
import socket
import struct
import sys
import time


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def pattern(n, seed=7):
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    full, rest = divmod(n, len(block))
    return block, full, rest


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def tcp_server(a):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(16)
    srv.settimeout(a.timeout)
    print("ready", file=sys.stderr, flush=True)
    for _ in range(a.count):
        conn, peer = srv.accept()
        conn.settimeout(a.timeout)
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        conn.sendall((json.dumps({"peer": "%s:%d" % peer, "bytes": n, "sha256": h.hexdigest()}) + "\n").encode())
        conn.close()


def tcp_client(a):
    s = socket.create_connection((a.host, a.port), timeout=a.timeout)
    local = s.getsockname()
    remote = s.getpeername()
    block, full, rest = pattern(a.bytes)
    h = hashlib.sha256()
    for _ in range(full):
        s.sendall(block)
        h.update(block)
    s.sendall(block[:rest])
    h.update(block[:rest])
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    out({"local": "%s:%d" % local, "remote": "%s:%d" % remote, "sha256": h.hexdigest(),
         "bytes": a.bytes, "reply": json.loads(reply) if reply else None})


def udp_server(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", a.port))
    s.settimeout(a.timeout)
    print("ready", file=sys.stderr, flush=True)
    for _ in range(a.count):
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            break
        seen = {"peer": "%s:%d" % peer, "len": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        out(seen)
        reply = json.dumps(seen).encode()
        if a.echo_bytes:
            block, full, rest = pattern(a.echo_bytes, seed=9)
            reply = reply + b"\n" + (block * (full + 1))[: a.echo_bytes]
        s.sendto(reply, peer)


def udp_client(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if a.sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", a.sport))
    s.settimeout(a.timeout)
    block, full, rest = pattern(a.size)
    payload = (block * (full + 1))[: a.size]
    s.sendto(payload, (a.host, a.port))
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        out({"local": "%s:%d" % s.getsockname(), "reply": None})
        return
    head, _, tail = data.partition(b"\n")
    res = {"local": "%s:%d" % s.getsockname(), "from": "%s:%d" % peer, "sentSha256": hashlib.sha256(payload).hexdigest(),
           "reply": json.loads(head)}
    if a.expect_bytes:
        block, full, rest = pattern(a.expect_bytes, seed=9)
        res["tailOk"] = tail == (block * (full + 1))[: a.expect_bytes]
        res["tailLen"] = len(tail)
    out(res)


def udp_refused(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(a.timeout)
    s.connect((a.host, a.port))
    s.send(b"probe")
    try:
        s.recv(100)
        out({"refused": False, "reply": True})
    except ConnectionRefusedError:
        out({"refused": True})
    except socket.timeout:
        out({"refused": False, "reply": False})


def udp_pmtu(a):
    """Sends a datagram with DF set; reports the path MTU the kernel learnt from the frag-needed it got back."""
    IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    s.connect((a.host, a.port))
    s.send(b"x" * a.size)
    time.sleep(0.5)
    try:
        s.send(b"x" * a.size)
        again = "sent"
    except OSError as e:
        again = "EMSGSIZE" if e.errno == 90 else str(e)
    out({"mtu": s.getsockopt(socket.IPPROTO_IP, IP_MTU), "second": again})


def raw(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, a.proto)
    payload = bytes.fromhex(a.hex)
    s.sendto(payload, (a.dst, 0))
    out({"sent": len(payload)})


def udp_frags(a):
    """One UDP datagram sent as hand-made IP fragments (IP_HDRINCL)."""
    src = socket.inet_aton(a.src)
    dst = socket.inet_aton(a.dst)
    block, full, rest = pattern(a.size)
    data = (block * (full + 1))[: a.size]
    ulen = 8 + len(data)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    csum = checksum(pseudo + struct.pack("!HHHH", a.sport, a.dport, ulen, 0) + data) or 0xFFFF
    datagram = struct.pack("!HHHH", a.sport, a.dport, ulen, csum) + data
    ident = a.ident
    step = 1480
    frags = []
    for off in range(0, len(datagram), step):
        chunk = datagram[off: off + step]
        more = off + step < len(datagram)
        flags = (0x2000 if more else 0) | (off // 8)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident, flags, 64, 17, 0, src, dst)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        frags.append(hdr + chunk)
    if a.reverse:
        frags.reverse()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for f in frags:
        s.sendto(f, (a.dst, 0))
    out({"fragments": len(frags), "sha256": hashlib.sha256(data).hexdigest()})


def listen_raw(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, a.proto)
    s.settimeout(0.2)
    end = time.time() + a.seconds
    n = 0
    print("ready", file=sys.stderr, flush=True)
    while time.time() < end:
        try:
            s.recv(65535)
            n += 1
        except socket.timeout:
            pass
    out({"received": n})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--dport", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--echo-bytes", type=int, default=0)
    p.add_argument("--expect-bytes", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--src")
    p.add_argument("--dst")
    p.add_argument("--proto", type=int, default=0)
    p.add_argument("--hex", default="")
    p.add_argument("--ident", type=int, default=0x4242)
    p.add_argument("--reverse", action="store_true")
    p.add_argument("--seconds", type=float, default=2)
    a = p.parse_args()
    cmds = {"tcp-server": tcp_server, "tcp-client": tcp_client, "udp-server": udp_server, "udp-client": udp_client,
            "udp-refused": udp_refused, "udp-pmtu": udp_pmtu, "raw": raw, "udp-frags": udp_frags, "listen-raw": listen_raw}
    cmds[a.cmd](a)


if __name__ == "__main__":
    main()
