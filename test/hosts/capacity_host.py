#!/usr/bin/env python3
"""Test host for the capacity lab tests: many UDP flows from one host, an
echo server that records who it saw, and a raw listener for ICMP errors.
Every command prints one JSON line; every loop is bounded in count and time."""
import argparse
import select
import signal
import socket
import struct
import sys
import time
from hostlib import out


def echo_server(a):
    """Answers every datagram with "<tag>|<payload>" to its sender, and sends a
    stray "stray|<payload>" from port+1 to the same sender (which a NAT with
    address-and-port-dependent filtering must drop). Records (addr, port, payload)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", a.port))
    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stray.bind(("0.0.0.0", a.port + 1))
    s.settimeout(0.2)
    seen = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    end = time.time() + a.seconds
    while time.time() < end and not stop and len(seen) < 100000:
        try:
            data, addr = s.recvfrom(2048)
        except (socket.timeout, InterruptedError):
            continue
        seen.append([addr[0], addr[1], data.decode(errors="replace")])
        s.sendto(a.tag.encode() + b"|" + data, addr)
        if a.stray:
            stray.sendto(b"stray|" + data, addr)
    out({"seen": seen})


def flows(a):
    """`count` UDP sockets bound to sport..sport+count-1 each send "<tag>:<i>:<round>"
    to host:port in `rounds` rounds `interval` apart; every datagram received on
    any of them is recorded as [i, payload, from addr, from port]."""
    socks = []
    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", a.sport + i))
        s.setblocking(False)
        socks.append(s)
    index = {s.fileno(): i for i, s in enumerate(socks)}
    got = []
    t0 = time.time() + a.start_at
    for r in range(a.rounds):
        while time.time() < t0 + r * a.interval:
            drain(socks, index, got, 0.05)
        for i, s in enumerate(socks):
            s.sendto(("%s:%d:%d" % (a.tag, i, r)).encode(), (a.host, a.port))
    end = time.time() + a.timeout
    while time.time() < end:
        drain(socks, index, got, 0.05)
    out({"got": got})


def drain(socks, index, got, wait):
    r, _, _ = select.select(socks, [], [], wait)
    for s in r:
        try:
            data, addr = s.recvfrom(2048)
        except BlockingIOError:
            continue
        got.append([index[s.fileno()], data.decode(errors="replace"), addr[0], addr[1]])


def spray(a):
    """Opens `count` new flows, one datagram each from ports sport.., `gap`
    seconds apart; listens on a raw ICMP socket meanwhile and for `timeout`
    after, and reports the destination-unreachable errors that quote our
    datagrams: [code, from, quoted source port]."""
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    icmp.setblocking(False)
    errors = []

    def read_icmp(wait):
        r, _, _ = select.select([icmp], [], [], wait)
        while r:
            try:
                data, addr = icmp.recvfrom(2048)
            except BlockingIOError:
                break
            ihl = (data[0] & 15) * 4
            t, code = data[ihl], data[ihl + 1]
            inner = data[ihl + 8:]
            if t == 3 and len(inner) >= 28 and inner[9] == 17:
                iihl = (inner[0] & 15) * 4
                sport, dport = struct.unpack("!HH", inner[iihl:iihl + 4])
                if dport == a.port and a.sport <= sport < a.sport + a.count:
                    errors.append([code, addr[0], sport])
            r, _, _ = select.select([icmp], [], [], 0)

    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", a.sport + i))
        s.sendto(("%s:%d:0" % (a.tag, i)).encode(), (a.host, a.port))
        s.close()
        read_icmp(a.gap)
    end = time.time() + a.timeout
    while time.time() < end:
        read_icmp(0.05)
    out({"errors": errors})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["echo-server", "flows", "spray"])
    p.add_argument("--host")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, default=20000)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--start-at", type=float, default=0)
    p.add_argument("--gap", type=float, default=0)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--tag", default="x")
    p.add_argument("--stray", action="store_true")
    a = p.parse_args()
    {"echo-server": echo_server, "flows": flows, "spray": spray}[a.cmd](a)


if __name__ == "__main__":
    main()
