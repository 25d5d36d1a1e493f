#!/usr/bin/env python3
"""Crafted PPTP endpoints for the lab (the kernel here has no PPP/GRE stack).

Control messages on TCP 1723 follow RFC 2637 §2 (lengths and Call ID offsets
of vpn-masquerade-spec §2); data is enhanced GRE (RFC 2637 §4.1: K=1, S=1 with
a payload, A=1 with an ack, version 1, protocol 0x880B) on a raw IP 47 socket.
Every wait is bounded by --seconds. Each command prints one JSON line.

  client --server S [--port 1723] --call-id X [--calls N] [--serial B]
         --gre-count K [--gre-delay D] [--big N] [--clear] --seconds T
      Start-Control-Connection, then N Outgoing-Call-Requests with Call IDs
      X, X+1, ... (serial numbers B, B+1, ...; the serial is never rewritten by
      a NAT, so servers refuse by serial). For each connected call, K GRE data
      packets (payload "<local addr>/<call id>/<seq>") and one ack-only packet
      to the SERVER's Call ID (after D seconds); meanwhile it records the GRE
      that arrives. --clear ends each call with a Call-Clear-Request and waits
      for the Call-Disconnect-Notify before closing.
      --big N also sends one data packet of N payload bytes with DF and reports
      an ICMP fragmentation-needed quoting it (raw ICMP socket).
      --hold H keeps the first call up for H more seconds (a long-running
      call across a router restart): one data packet every 0.2 s, reporting
      in "hold" how many were sent and the times (epoch s) echoes came back.
      --resume K ends the hold early once K echoes came back after a silence
      of at least 1.5 s (the router was down and is back).
      --linger L keeps the control connection open L seconds before closing.
      --resend-first sends the TCP segment of the first Outgoing-Call-Request
      again, byte for byte with its old sequence number, once every call is
      up (a retransmission after N calls; the kernel's copy is taken off the
      wire with a packet socket). --pad N sends N Echo-Requests in front of
      the requests in one write with DF off, so a narrower link on the way
      fragments the segment that carries them.
  synflood --server S [--port 1723] --count N
      N SYNs from random source ports (raw socket), no handshake completed.
  server [--port 1723] --clients N [--refuse-serial Y] [--fixed-call-id F] [--sniff] --seconds T
      Answers Start-Control-Connection-Requests and Outgoing-Call-Requests
      (own Call ID unique per call, or always F: a server reusing the ID of a
      cleared call; Peer's Call ID = the request's Call ID, result 1, or 2 for
      serial Y), and Call-Clear-Requests with a Call-Disconnect-Notify. Each GRE data packet is answered with a
      data packet "echo:<payload>" to its sender carrying the CLIENT's Call ID
      as the server saw it, each ack-only packet with an ack-only packet.
      Stops when N control connections have come and gone (or at --seconds).
      Works on either side of the NAT: on the LAN behind a forward it is the
      PAC of spec §6. --sniff also records, from a packet socket, the Call ID
      of every Outgoing-Call-Request that arrives on the wire, duplicates and
      retransmissions included ("wire").
"""
import argparse
import select
import socket
import struct
import sys
import time
from hostlib import answer, out, resumed

MAGIC = 0x1A2B3C4D
SCCRQ, SCCRP, OCRQ, OCRP, CCRQ, CDN = 1, 2, 7, 8, 12, 13
LENGTHS = {1: 156, 2: 156, 3: 16, 4: 16, 5: 16, 6: 20, 7: 168, 8: 32, 9: 220, 10: 24, 11: 28, 12: 16, 13: 148, 14: 40, 15: 24}
GRE_PPP = 0x880B
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 10, 0, 2
ETH_P_ALL, PACKET_OUTGOING = 0x0003, 4


def csum(data):
    if len(data) % 2:
        data += b"\0"
    v = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    v = (v >> 16) + (v & 0xFFFF)
    v += v >> 16
    return ~v & 0xFFFF


def tcp_checksum(ip):
    """Recomputes the TCP checksum of an IPv4 packet (the kernel's copy may carry a partial one)."""
    ihl = (ip[0] & 15) * 4
    seg = bytearray(ip[ihl:])
    seg[16:18] = b"\0\0"
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, len(seg))
    seg[16:18] = struct.pack("!H", csum(pseudo + bytes(seg)))
    return bytes(ip[:ihl]) + bytes(seg)


def ocrq_ids(payload):
    """Call IDs of the Outgoing-Call-Requests that start at message boundaries of a segment's payload."""
    ids = []
    o = 0
    while o + 14 <= len(payload):
        length, mtype, magic, ctype = struct.unpack("!HHIH", payload[o:o + 10])
        if mtype != 1 or magic != MAGIC or length < 12:
            break
        if ctype == OCRQ:
            ids.append(struct.unpack("!H", payload[o + 12:o + 14])[0])
        o += length
    return ids


def tcp_frames(sock):
    """IPv4/TCP packets read from a packet socket: (packet type, ip bytes, tcp offset)."""
    frame, addr = sock.recvfrom(65535)
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    if ip[9] != 6:
        return None
    return addr[2], ip, (ip[0] & 15) * 4


def control(ctype, fields=()):
    """A control message of its fixed length; fields: (offset, struct format, value)."""
    m = bytearray(LENGTHS[ctype])
    struct.pack_into("!HHIH", m, 0, len(m), 1, MAGIC, ctype)
    for off, fmt, val in fields:
        struct.pack_into(fmt, m, off, val)
    return bytes(m)


def start_msg(ctype):
    # protocol version 1.0 @12, result @14 (reply only), framing/bearer caps, firmware @26
    fields = [(12, "!H", 0x0100), (16, "!I", 1), (20, "!I", 1), (26, "!H", 1)]
    if ctype == SCCRP:
        fields.append((14, "!B", 1))
    return control(ctype, fields)


def big_buffer(sock):
    """Room for a burst of hundreds of GRE packets (300 calls at once) on a loaded machine."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (we are root in the lab)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return sock


def gre_data(call_id, seq, payload, ack=None):
    flags = 0x30  # K, S
    ver = 0x01 | (0x80 if ack is not None else 0)
    h = struct.pack("!BBHHHI", flags, ver, GRE_PPP, len(payload), call_id, seq)
    if ack is not None:
        h += struct.pack("!I", ack)
    return h + payload


def gre_ack(call_id, ack):
    return struct.pack("!BBHHHI", 0x20, 0x81, GRE_PPP, 0, call_id, ack)


def parse_gre(pkt):
    """Raw IP 47 packet -> (src, call_id, seq or None, ack or None, payload) or None."""
    ihl = (pkt[0] & 15) * 4
    g = pkt[ihl:]
    if len(g) < 8:
        return None
    flags, ver, proto, plen, call_id = struct.unpack("!BBHHH", g[:8])
    if (ver & 7) != 1 or proto != GRE_PPP:
        return None
    off = 8
    seq = ack = None
    if flags & 0x10:
        seq = struct.unpack("!I", g[off:off + 4])[0]
        off += 4
    if ver & 0x80:
        ack = struct.unpack("!I", g[off:off + 4])[0]
        off += 4
    src = socket.inet_ntoa(pkt[12:16])
    return src, call_id, seq, ack, bytes(g[off:off + plen])


class Reader:
    """Splits a TCP byte stream into PPTP control messages."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        msgs = []
        while len(self.buf) >= 12:
            length = struct.unpack("!H", self.buf[:2])[0]
            if length < 12:
                raise ValueError("bad PPTP length %d" % length)
            if len(self.buf) < length:
                break
            msgs.append(self.buf[:length])
            self.buf = self.buf[length:]
        return msgs


def check_msg(m):
    length, mtype, magic, ctype = struct.unpack("!HHIH", m[:10])
    if mtype != 1 or magic != MAGIC:
        raise ValueError("bad PPTP header %s" % m[:12].hex())
    return ctype


# ---- client -----------------------------------------------------------------

def client(a):
    deadline = time.time() + a.seconds
    res = {"calls": [], "received": [], "foreign": [], "ackOnly": 0, "wrongCallId": []}
    raw = big_buffer(socket.socket(socket.AF_INET, socket.SOCK_RAW, 47))
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) if a.big else None
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) if a.resend_first else None
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if a.pad:
        t.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t.settimeout(max(0.5, deadline - time.time()))
    t.connect((a.server, a.port))
    name = t.getsockname()[0]
    res["local"] = "%s:%d" % t.getsockname()
    reader = Reader()
    pending = []

    def expect(ctype):
        while True:
            while pending:
                m = pending.pop(0)
                if check_msg(m) == ctype:
                    return m
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no control message %d" % ctype)
            t.settimeout(left)
            data = t.recv(4096)
            if not data:
                raise ConnectionError("control connection closed")
            pending.extend(reader.feed(data))

    try:
        t.sendall(start_msg(SCCRQ))
        rep = expect(SCCRP)
        res["startResult"] = rep[14]
        # All requests first: several calls in flight on one control connection.
        reqs = [control(OCRQ, [(12, "!H", a.call_id + i), (14, "!H", a.serial + i), (16, "!I", 300),
                               (20, "!I", 100000000), (24, "!I", 3), (28, "!I", 3), (32, "!H", 64)]) for i in range(a.calls)]
        if a.pad:
            t.sendall(control(5) * a.pad + reqs[0])
            reqs = reqs[1:]
        for m in reqs:
            t.sendall(m)
        for i in range(a.calls):
            rep = expect(OCRP)
            server_id, peer_id, result = struct.unpack("!HHB", rep[12:17])
            res["calls"].append({"callId": peer_id, "serverCallId": server_id, "result": result,
                                 "sent": 0, "dataBack": 0, "ackBack": 0})
    except (OSError, ValueError) as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
        out(res)
        return
    by_id = {c["callId"]: c for c in res["calls"]}
    live = [c for c in res["calls"] if c["result"] == 1]
    if sniff is not None:
        res["resent"] = resend_first(a, sniff, t)
    time.sleep(min(a.gre_delay, max(0.0, deadline - time.time())))
    for i, c in enumerate(live):
        if i and i % 25 == 0:
            time.sleep(0.005)  # paced: the burst is the router's test, not the hosts' socket buffers'
        sid = c["serverCallId"]
        for seq in range(a.gre_count):
            raw.sendto(gre_data(sid, seq, ("%s/%d/%d" % (name, c["callId"], seq)).encode()), (a.server, 0))
            c["sent"] += 1
        raw.sendto(gre_ack(sid, max(0, a.gre_count - 1)), (a.server, 0))
    if a.big and live:
        raw.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        try:
            raw.sendto(gre_data(live[0]["serverCallId"], 1000, b"B" * a.big), (a.server, 0))
            res["bigSent"] = True
        except OSError as e:
            res["bigSent"] = str(e)
    want = sum(a.gre_count + 1 for _ in live)
    got = 0
    frag_needed = None
    t.setblocking(False)
    socks = [raw] + ([icmp] if icmp else [])
    res["greResent"] = 0
    while time.time() < deadline and (got < want or (a.big and live and frag_needed is None)):
        ready, _, _ = select.select(socks, [], [], max(0.0, min(2.0, deadline - time.time())))
        if not ready and got < want and not res["greResent"]:
            # 2 s quiet with echoes missing: GRE is datagrams, a host on a loaded machine can lose some.
            # Once, the data of the calls without an echo again (the test reports how many).
            for c in live:
                if c["dataBack"] == 0 and a.gre_count:
                    raw.sendto(gre_data(c["serverCallId"], a.gre_count, ("%s/%d/r" % (name, c["callId"])).encode()), (a.server, 0))
                    res["greResent"] += 1
                    want += 1
            continue
        if raw in ready:
            g = parse_gre(raw.recv(65535))
            if g is None:
                continue
            src, call_id, seq, ack, payload = g
            c = by_id.get(call_id)
            if c is None:
                res["wrongCallId"].append(call_id)
                continue
            got += 1
            if seq is None:
                c["ackBack"] += 1
                res["ackOnly"] += 1
                continue
            text = payload.decode(errors="replace")
            res["received"].append(text)
            if text.startswith("echo:%s/%d/" % (name, call_id)):
                c["dataBack"] += 1
            else:
                res["foreign"].append(text)
        if icmp is not None and icmp in ready:
            p = icmp.recv(65535)
            ihl = (p[0] & 15) * 4
            if p[ihl] == 3 and p[ihl + 1] == 4:
                inner = p[ihl + 8:]
                iihl = (inner[0] & 15) * 4
                frag_needed = {"from": socket.inet_ntoa(p[12:16]), "mtu": struct.unpack("!H", p[ihl + 6:ihl + 8])[0],
                               "quotedProto": inner[9], "quotedSrc": socket.inet_ntoa(inner[12:16]),
                               "quotedDst": socket.inet_ntoa(inner[16:20])}
                if inner[9] == 47 and len(inner) >= iihl + 8:
                    frag_needed["quotedCallId"] = struct.unpack("!H", inner[iihl + 6:iihl + 8])[0]
    res["fragNeeded"] = frag_needed
    if a.hold and live:
        hold(a, raw, name, live[0], res)
    if a.linger:
        time.sleep(min(a.linger, max(0.0, deadline - time.time())))
    if a.clear:
        t.setblocking(True)
        try:
            for c in live:
                t.sendall(control(CCRQ, [(12, "!H", c["callId"])]))
                m = expect(CDN)
                c["disconnectCallId"] = struct.unpack("!H", m[12:14])[0]
        except (OSError, ValueError) as e:
            res["error"] = "clear: %s: %s" % (type(e).__name__, e)
    t.close()
    out(res)


def resend_first(a, sniff, t):
    """Finds the first OCRQ's segment among the packets this host sent and sends it again as it was."""
    sniff.setblocking(False)
    local, lport = t.getsockname()
    first = None
    while True:
        try:
            got = tcp_frames(sniff)
        except BlockingIOError:
            break
        if got is None or got[0] != PACKET_OUTGOING:
            continue
        _, ip, th = got
        sport, dport, seq = struct.unpack("!HHI", ip[th:th + 8])
        payload = ip[th + (ip[th + 12] >> 4) * 4:struct.unpack("!H", ip[2:4])[0]]
        if sport == lport and dport == a.port and a.call_id in ocrq_ids(payload):
            first = ip
            break
    if first is None:
        return False
    out_sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out_sock.sendto(tcp_checksum(bytearray(first)), (a.server, 0))
    return True


def synflood(a):
    """SYNs from random ports to the server; the replies are never answered (the kernel resets them)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((a.server, a.port))
    src = probe.getsockname()[0]
    for i in range(a.count):
        sport = 20000 + (i * 7919) % 40000
        tcp = struct.pack("!HHIIBBHHH", sport, a.port, 0x10000 * i, 0, 5 << 4, 0x02, 64240, 0, 0)
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0x4000, 64, 6, 0,
                          socket.inet_aton(src), socket.inet_aton(a.server))
        s.sendto(tcp_checksum(iph + tcp), (a.server, 0))
        if i % 200 == 199:
            time.sleep(0.01)
    out({"sent": a.count, "from": src})


def hold(a, raw, name, c, res):
    h = {"sent": 0, "backAt": []}
    res["hold"] = h
    end = time.time() + a.hold
    seq = 10000
    next_send = 0.0
    while time.time() < end and not resumed(h["backAt"], a.resume):
        now = time.time()
        if now >= next_send:
            try:
                raw.sendto(gre_data(c["serverCallId"], seq, ("%s/%d/%d" % (name, c["callId"], seq)).encode()), (a.server, 0))
                h["sent"] += 1
            except OSError:
                pass  # the router is down: the next packet retries
            seq += 1
            next_send = now + 0.2
        ready, _, _ = select.select([raw], [], [], max(0.0, min(next_send, end) - time.time()))
        if ready:
            g = parse_gre(raw.recv(65535))
            if g is not None and g[1] == c["callId"] and g[4] and g[4].startswith(("echo:%s/%d/" % (name, c["callId"])).encode()):
                h["backAt"].append(round(time.time(), 3))


# ---- server -----------------------------------------------------------------

def server(a):
    deadline = time.time() + a.seconds
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", a.port))
    lsock.listen(16)
    raw = big_buffer(socket.socket(socket.AF_INET, socket.SOCK_RAW, 47))
    sniff = big_buffer(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))) if a.sniff else None
    wire = []
    print("ready", file=sys.stderr, flush=True)
    conns = {}  # socket -> record
    records = []
    calls = {}  # own call id -> (peer addr, peer call id)
    next_id = 0x5100
    gre = {"data": {}, "ackOnly": {}, "from": [], "payloads": [], "unknownCallId": [], "sent": 0, "unsent": 0}
    closed = 0
    while time.time() < deadline and not (closed >= a.clients and not conns):
        ready, _, _ = select.select([lsock, raw] + ([sniff] if sniff else []) + list(conns), [], [],
                                    max(0.0, min(0.2, deadline - time.time())))
        for s in ready:
            if s is sniff:
                got = tcp_frames(sniff)
                if got is not None and got[0] != PACKET_OUTGOING:
                    _, ip, th = got
                    if struct.unpack("!H", ip[th + 2:th + 4])[0] == a.port:
                        payload = ip[th + (ip[th + 12] >> 4) * 4:struct.unpack("!H", ip[2:4])[0]]
                        for cid in ocrq_ids(payload):
                            wire.append({"from": socket.inet_ntoa(ip[12:16]), "seq": struct.unpack("!I", ip[th + 4:th + 8])[0],
                                         "callId": cid})
            elif s is lsock:
                c, peer = lsock.accept()
                rec = {"peer": "%s:%d" % peer, "callIds": [], "serials": [], "reader": Reader()}
                conns[c] = rec
                records.append(rec)
            elif s is raw:
                g = parse_gre(raw.recv(65535))
                if g is None:
                    continue
                src, call_id, seq, ack, payload = g
                if src not in gre["from"]:
                    gre["from"].append(src)
                target = calls.get(call_id)
                if target is None or target[0] != src:
                    gre["unknownCallId"].append(call_id)
                    continue
                key = str(call_id)
                if seq is None:
                    gre["ackOnly"][key] = gre["ackOnly"].get(key, 0) + 1
                    reply = gre_ack(target[1], ack or 0)
                else:
                    gre["data"][key] = gre["data"].get(key, 0) + 1
                    gre["payloads"].append(payload.decode(errors="replace"))
                    reply = gre_data(target[1], seq, b"echo:" + payload)
                if answer(raw, reply, (src, 0), gre):
                    gre["sent"] += 1
            else:
                rec = conns[s]
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    del conns[s]
                    s.close()
                    closed += 1
                    continue
                for m in rec["reader"].feed(data):
                    ctype = check_msg(m)
                    if ctype == SCCRQ:
                        s.sendall(start_msg(SCCRP))
                    elif ctype == OCRQ:
                        peer_id, serial = struct.unpack("!HH", m[12:16])
                        rec["callIds"].append(peer_id)
                        rec["serials"].append(serial)
                        own = a.fixed_call_id if a.fixed_call_id >= 0 else next_id
                        next_id += 1
                        ok = serial != a.refuse_serial
                        if ok:
                            calls[own] = (rec["peer"].split(":")[0], peer_id)
                        s.sendall(control(OCRP, [(12, "!H", own), (14, "!H", peer_id), (16, "!B", 1 if ok else 2),
                                                 (20, "!I", 100000000), (24, "!H", 64)]))
                    elif ctype == CCRQ:
                        peer_id = struct.unpack("!H", m[12:14])[0]
                        rec.setdefault("cleared", []).append(peer_id)
                        own = next((k for k, v in calls.items() if v == (rec["peer"].split(":")[0], peer_id)), 0)
                        calls.pop(own, None)
                        s.sendall(control(CDN, [(12, "!H", own), (14, "!B", 3)]))
    for rec in records:
        del rec["reader"]
    out({"connections": records, "calls": {str(k): {"peer": v[0], "peerCallId": v[1]} for k, v in calls.items()},
         "gre": gre, "wire": wire})


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, default=1723)
    c.add_argument("--calls", type=int, default=1)
    c.add_argument("--call-id", type=lambda v: int(v, 0), required=True)
    c.add_argument("--serial", type=lambda v: int(v, 0), default=1)
    c.add_argument("--gre-count", type=int, default=3)
    c.add_argument("--gre-delay", type=float, default=0)
    c.add_argument("--clear", action="store_true")
    c.add_argument("--big", type=int, default=0)
    c.add_argument("--seconds", type=float, default=10)
    c.add_argument("--hold", type=float, default=0)
    c.add_argument("--resume", type=int, default=0)
    c.add_argument("--linger", type=float, default=0)
    c.add_argument("--resend-first", action="store_true")
    c.add_argument("--pad", type=int, default=0)
    f = sub.add_parser("synflood")
    f.add_argument("--server", required=True)
    f.add_argument("--port", type=int, default=1723)
    f.add_argument("--count", type=int, default=1000)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=1723)
    s.add_argument("--clients", type=int, default=1)
    s.add_argument("--refuse-serial", type=lambda v: int(v, 0), default=-1)
    s.add_argument("--fixed-call-id", type=lambda v: int(v, 0), default=-1)
    s.add_argument("--seconds", type=float, default=15)
    s.add_argument("--sniff", action="store_true")
    a = p.parse_args()
    {"client": client, "server": server, "synflood": synflood}[a.cmd](a)


if __name__ == "__main__":
    main()
