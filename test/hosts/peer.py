#!/usr/bin/env python3
"""Test host programs run inside lab namespaces by the integration tests.

Every command prints one JSON line with what it observed on the wire and
exits; every wait is bounded by --timeout. Subcommands:

  tcp-server  --port P [--count N]         accept N connections; reply with the peer and the sha256 of what it read
  tcp-client  --host H --port P --bytes N [--rate B]  send N pseudo-random bytes (at most B bytes/s), print own sha256 and the server's reply
  tcp-source  --port P --bytes N [--rate B]  accept one connection and send it N pseudo-random bytes (a download); print peer and sha256
  tcp-sink    --host H --port P             connect, read to the end; print bytes and sha256 of what arrived
  udp-server  --port P [--count N]         answer N datagrams with {"peer": ..., "len": ..., "sha256": ...} (+ --echo-bytes)
  udp-client  --host H --port P [--sport S] [--size N] [--expect-bytes N]
  udp-refused --host H --port P            connected UDP socket; report whether ECONNREFUSED came back
  udp-pmtu    --host H --port P --size N [--sport S] [--icookie HEX]  DF datagram (an ISAKMP header first with
              --icookie); report the path MTU learnt from frag-needed
  raw         --dst D --proto N --hex PAYLOAD [--bad-checksum]  send one raw IPv4 payload (kernel builds the IP header)
  udp-frags   --src S --dst D --sport A --dport B --size N [--reverse]  send one UDP datagram as IP fragments
  udp-spoof   --src S --dst D --sport A --dport B [--count N]  send N UDP datagrams with any source (IP_HDRINCL), from
              source ports A, A+1, ...
  listen-raw  --proto N --seconds T [--dump]  count raw packets of a protocol arriving at this host
  ike-esp-responder --seconds T [--idle I] [--silent-spi S,...] [--push-spis S,... --push-delay D]
              answer IKEv1-style headers on UDP 500 and raw ESP with own SPIs; stops at an Informational "BYE" from a
              held client; for the --push-spis, D seconds after the first of their Quick Modes, send one ESP packet on
              each of its own new SPIs, in reverse order, and only then answer on them (a remote that starts using new
              SAs before answering the hosts' first packets: the order that crosses serialized pairs)
  ike-esp-client --host R --icookie HEX --spi S [--packets K] [--rekey-spi S2] [--start-at EPOCH] [--rekey-at EPOCH]
                 [--backoff] [--hold T] [--resume K]
              Main+Quick Mode, then raw ESP; --rekey-at: the rekey's Quick Mode waits for that time; --backoff:
              the send interval doubles (with jitter) while packets go unanswered, as a transport would; --hold keeps
              the SA sending for T more seconds (when replies came back), --resume K ends that early once K replies
              came back after a silence of at least 1.5 s (an outage that ended)
"""
import argparse
import hashlib
import json
import random
import select
import socket
import struct
import sys
import time
from hostlib import answer, out, resumed


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
    digest = paced_send(s, a)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    out({"local": "%s:%d" % local, "remote": "%s:%d" % remote, "sha256": digest,
         "bytes": a.bytes, "reply": json.loads(reply) if reply else None})


def paced_send(s, a):
    """Sends --bytes pseudo-random bytes at most --rate bytes/s; returns their sha256."""
    block, full, rest = pattern(a.bytes)
    h = hashlib.sha256()
    t0 = time.monotonic()
    for i in range(full):
        if a.rate > 0:  # long transfers that outlive a router restart
            time.sleep(max(0.0, t0 + i * len(block) / a.rate - time.monotonic()))
        s.sendall(block)
        h.update(block)
    s.sendall(block[:rest])
    h.update(block[:rest])
    return h.hexdigest()


def tcp_source(a):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(1)
    srv.settimeout(a.timeout)
    print("ready", file=sys.stderr, flush=True)
    conn, peer = srv.accept()
    conn.settimeout(a.timeout)
    digest = paced_send(conn, a)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # the sink closes once it has read everything
    conn.close()
    out({"peer": "%s:%d" % peer, "bytes": a.bytes, "sha256": digest})


def tcp_sink(a):
    s = socket.create_connection((a.host, a.port), timeout=a.timeout)
    local = s.getsockname()
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    s.close()
    out({"local": "%s:%d" % local, "bytes": n, "sha256": h.hexdigest()})


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
    if a.sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", a.sport))
    s.connect((a.host, a.port))
    data = b"x" * a.size
    if a.icookie:
        body = b"\0" * max(0, a.size - 28)
        data = isakmp(bytes.fromhex(a.icookie), b"\0" * 8, 2, 0, body)
    s.send(data)
    time.sleep(0.5)
    try:
        s.send(data)
        again = "sent"
    except OSError as e:
        again = "EMSGSIZE" if e.errno == 90 else str(e)
    out({"mtu": s.getsockopt(socket.IPPROTO_IP, IP_MTU), "second": again})


def raw(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, a.proto)
    payload = bytes.fromhex(a.hex)
    s.sendto(payload, (a.dst, 0))
    out({"sent": len(payload)})


def udp_datagram(src, dst, sport, dport, data):
    """A UDP header and `data`, checksum over the pseudo-header (addresses packed; 0 is sent as 0xFFFF)."""
    ulen = 8 + len(data)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    csum = checksum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + data) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, ulen, csum) + data


def ipv4_header(src, dst, payload_len, ident, flags=0, proto=17):
    """A 20-byte IPv4 header with its checksum (addresses packed)."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, flags, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def udp_frags(a):
    """One UDP datagram sent as hand-made IP fragments (IP_HDRINCL)."""
    src = socket.inet_aton(a.src)
    dst = socket.inet_aton(a.dst)
    block, full, rest = pattern(a.size)
    data = (block * (full + 1))[: a.size]
    datagram = udp_datagram(src, dst, a.sport, a.dport, data)
    ident = a.ident
    step = 1480
    frags = []
    for off in range(0, len(datagram), step):
        chunk = datagram[off: off + step]
        more = off + step < len(datagram)
        flags = (0x2000 if more else 0) | (off // 8)
        frags.append(ipv4_header(src, dst, len(chunk), ident, flags) + chunk)
    if a.reverse:
        frags.reverse()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for f in frags:
        s.sendto(f, (a.dst, 0))
    out({"fragments": len(frags), "sha256": hashlib.sha256(data).hexdigest()})


def udp_spoof(a):
    """UDP datagrams with a source address of our choosing (IP_HDRINCL): what a spoofing host sends."""
    src = socket.inet_aton(a.src)
    dst = socket.inet_aton(a.dst)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for i in range(a.count):
        datagram = udp_datagram(src, dst, a.sport + i, a.dport, b"spoofed")
        s.sendto(ipv4_header(src, dst, len(datagram), i & 0xFFFF) + datagram, (a.dst, 0))
    out({"sent": a.count})


def listen_raw(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, a.proto)
    s.settimeout(0.2)
    end = time.time() + a.seconds
    n = 0
    dumps = []
    print("ready", file=sys.stderr, flush=True)
    while time.time() < end:
        try:
            data = s.recv(65535)
            n += 1
            if a.dump and len(dumps) < 5:
                dumps.append(data.hex())
        except socket.timeout:
            pass
    out({"received": n, "packets": dumps})


# ---- IPsec test hosts: IKEv1-style headers (RFC 2408 §3.1) with opaque bodies, raw ESP (RFC 4303 §2) ----

def isakmp(icookie, rcookie, exchange, flags, body):
    return icookie + rcookie + struct.pack("!BBBBII", 8, 0x10, exchange, flags, 0, 28 + len(body)) + body


def esp_packet(spi, seq, payload):
    return struct.pack("!II", spi, seq) + payload


def responder_spi(spi):
    """The remote's own SPI for a client SPI: different from it, deterministic, never reserved."""
    return (spi ^ 0x5A5A0000) | 0x01000000


def ike_esp_responder(a):
    """The remote: answers every ISAKMP message (learning SPIs from Quick Mode bodies) and echoes ESP with its SPI."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", 500))
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    silent = set(int(x, 0) for x in a.silent_spi.split(",") if x)
    push = set(int(x, 0) for x in a.push_spis.split(",") if x)
    pushes = []  # (own spi, peer) of the push SPIs' Quick Modes, in order
    push_at = None
    pushed = False
    seen = {"ike": 0, "esp": {}, "ikeFrom": [], "pushed": [], "unsent": 0}
    print("ready", file=sys.stderr, flush=True)
    end = time.time() + a.seconds
    last = None  # --idle counts from the first packet
    while time.time() < end and not (a.idle and last is not None and time.time() - last > a.idle):
        if push_at is not None and time.time() >= push_at:
            for spi, peer in reversed(pushes):
                r.sendto(esp_packet(spi, 1, b"PUSH"), (peer[0], 0))
                seen["pushed"].append("%08x" % spi)
            pushes, push_at, pushed = [], None, True
        wait = 0.2 if push_at is None else max(0.0, min(0.2, push_at - time.time()))
        ready, _, _ = select.select([u, r], [], [], wait)
        if ready:
            last = time.time()
        if u in ready:
            data, peer = u.recvfrom(65535)
            if len(data) >= 28:
                seen["ike"] += 1
                seen["ikeFrom"].append("%s:%d" % peer)
                ic, rc, exch = data[:8], data[8:16], data[18]
                if exch == 5 and data[28:] == b"BYE":  # the client is done (ike-esp-client --hold)
                    break
                if rc == b"\0" * 8:
                    rc = hashlib.sha256(ic).digest()[:8]
                body = data[28:]
                if exch == 32 and body[:3] == b"SPI":
                    client_spi = struct.unpack("!I", body[3:7])[0]
                    body = b"SPI" + struct.pack("!I", responder_spi(client_spi))
                    if client_spi in push and all(p[0] != responder_spi(client_spi) for p in pushes):
                        pushes.append((responder_spi(client_spi), peer))
                        if push_at is None:
                            push_at = time.time() + a.push_delay
                answer(u, isakmp(ic, rc, exch, 0x20, body), peer, seen)
        if r in ready:
            data, peer = r.recvfrom(65535)
            hl = (data[0] & 15) * 4
            spi, seq = struct.unpack("!II", data[hl:hl + 8])
            key = "%08x" % spi
            seen["esp"][key] = seen["esp"].get(key, 0) + 1
            # The push SPIs are answered only once the remote has started on its new SAs itself.
            if spi not in silent and not (spi in push and not pushed):
                answer(r, esp_packet(responder_spi(spi), seq, data[hl + 8:]), (peer[0], 0), seen)
    seen["ikeFrom"] = sorted(set(seen["ikeFrom"]))
    out(seen)


def ike_esp_client(a):
    """A LAN host: Main Mode (3 round trips) and Quick Mode from port 500, then ESP until K own replies came back."""
    if a.start_at:
        time.sleep(max(0.0, a.start_at - time.time()))  # several hosts start together (benchmark)
    start = time.time()
    deadline = start + a.timeout
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", 500))
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    ic = bytes.fromhex(a.icookie)
    state = {"rc": b"\0" * 8, "foreign": [], "ikeReplies": 0}

    def exchange(exch, body):
        msg = isakmp(ic, state["rc"], exch, 0, body)
        while time.time() < deadline:
            u.sendto(msg, (a.host, 500))
            ready, _, _ = select.select([u], [], [], 0.5)
            if ready:
                data, peer = u.recvfrom(65535)
                if data[:8] == ic and peer == (a.host, 500):
                    state["ikeReplies"] += 1
                    state["rc"] = data[8:16]
                    return data[28:]
                state["foreign"].append("ike:" + data[:8].hex())
        raise TimeoutError("no ISAKMP reply")

    def quick_mode(spi):
        body = exchange(32, b"SPI" + struct.pack("!I", spi))
        return struct.unpack("!I", body[3:7])[0]

    def esp_flow(spi, rspi, want):
        sent = good = 0
        seq = 0
        next_send = 0
        flow_start = time.time()
        first_good = first_foreign = None
        interval = a.interval
        answered = True
        while good < want and time.time() < deadline:
            now = time.time()
            if now >= next_send:
                seq += 1
                r.sendto(esp_packet(spi, seq, b"TOKEN" + ic), (a.host, 0))
                sent += 1
                if a.backoff:
                    # Like a transport's retransmission timer: doubling while unanswered, with some jitter.
                    interval = a.interval if answered else min(interval * 2, 1.6)
                    answered = False
                    next_send = now + interval * random.uniform(0.75, 1.25)
                else:
                    next_send = now + a.interval
            ready, _, _ = select.select([r], [], [], max(0.0, next_send - time.time()))
            if ready:
                data = r.recv(65535)
                hl = (data[0] & 15) * 4
                rs = struct.unpack("!I", data[hl:hl + 4])[0]
                if rs == rspi and data[hl + 8:] == b"TOKEN" + ic:
                    good += 1
                    answered = True
                    if first_good is None:
                        first_good = time.time()
                else:
                    state["foreign"].append("esp:%08x" % rs)
                    if first_foreign is None:
                        first_foreign = time.time()
        return {"spi": "%08x" % spi, "rspi": "%08x" % rspi, "sent": sent, "good": good,
                "ms": round((time.time() - start) * 1000),
                "firstGoodMs": None if first_good is None else round((first_good - flow_start) * 1000),
                "firstForeignMs": None if first_foreign is None else round((first_foreign - flow_start) * 1000)}

    def esp_hold(spi, rspi):
        """Keeps the SA sending every --interval for --hold seconds; when did replies come back (epoch seconds)?"""
        end = time.time() + a.hold
        sent, back, seq = 0, [], 1 << 20
        while time.time() < end and not resumed(back, a.resume):
            seq += 1
            try:
                r.sendto(esp_packet(spi, seq, b"TOKEN" + ic), (a.host, 0))
                sent += 1
            except OSError:
                pass  # the router is being rebuilt (no route): the next packet retries
            until = time.time() + a.interval
            while True:
                ready, _, _ = select.select([r], [], [], max(0.0, until - time.time()))
                if not ready:
                    break
                data = r.recv(65535)
                hl = (data[0] & 15) * 4
                if struct.unpack("!I", data[hl:hl + 4])[0] == rspi and data[hl + 8:] == b"TOKEN" + ic:
                    back.append(round(time.time(), 3))
                else:
                    state["foreign"].append("esp:%08x" % struct.unpack("!I", data[hl:hl + 4])[0])
        return {"sent": sent, "backAt": back}

    res = {}
    try:
        for _ in range(3):
            exchange(2, b"MM" * 20)
        rspi = quick_mode(a.spi)
        res["flow"] = esp_flow(a.spi, rspi, a.packets)
        if a.hold:
            res["hold"] = esp_hold(a.spi, rspi)
            u.sendto(isakmp(ic, state["rc"], 5, 0, b"BYE"), (a.host, 500))  # an Informational: the responder may stop
        if a.rekey_spi:
            if a.rekey_at:
                time.sleep(max(0.0, a.rekey_at - time.time()))
            rspi2 = quick_mode(a.rekey_spi)
            res["rekey"] = esp_flow(a.rekey_spi, rspi2, a.packets)
            res["old"] = esp_flow(a.spi, rspi, 2)
    except TimeoutError as e:
        res["error"] = str(e)
    res.update({"icookie": a.icookie, "rcookie": state["rc"].hex(), "ikeReplies": state["ikeReplies"],
                "foreign": state["foreign"]})
    out(res)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--dport", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--rate", type=float, default=0)
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
    p.add_argument("--dump", action="store_true")
    p.add_argument("--silent-spi", default="")
    p.add_argument("--idle", type=float, default=0)
    p.add_argument("--start-at", type=float, default=0)
    p.add_argument("--icookie", default="")
    p.add_argument("--spi", type=lambda x: int(x, 0), default=0)
    p.add_argument("--rekey-spi", type=lambda x: int(x, 0), default=0)
    p.add_argument("--packets", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--hold", type=float, default=0)
    p.add_argument("--resume", type=int, default=0)
    p.add_argument("--push-spis", default="")
    p.add_argument("--push-delay", type=float, default=0.3)
    p.add_argument("--rekey-at", type=float, default=0)
    p.add_argument("--backoff", action="store_true")
    a = p.parse_args()
    cmds = {"tcp-server": tcp_server, "tcp-client": tcp_client, "tcp-source": tcp_source, "tcp-sink": tcp_sink, "udp-server": udp_server, "udp-client": udp_client,
            "udp-refused": udp_refused, "udp-pmtu": udp_pmtu, "raw": raw, "udp-frags": udp_frags, "udp-spoof": udp_spoof, "listen-raw": listen_raw,
            "ike-esp-responder": ike_esp_responder, "ike-esp-client": ike_esp_client}
    cmds[a.cmd](a)


if __name__ == "__main__":
    main()
