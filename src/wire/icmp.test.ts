import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { sumBytes } from './checksum';
import { ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_ERR_TRUNCATED, ICMP_OK, IcmpHeader, isIcmpQueryReply, isIcmpQueryRequest } from './icmp';
import { Ipv4Header, IPV4_OK, PROTO_UDP } from './ipv4';

/** Captured from Linux on a veth pair; TCP and UDP checksums, left to the NIC by offload, completed as it would. */
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
/** ICMP echo request, id 0x6672, seq 1, 8 bytes of data. */
const ICMP_ECHO_PKT = hex(`
  45000024 a8a04000 40010e35 c0000201 c0000202
  0800857c 66720001 00010203 04050607`);
/** Its echo reply. */
const ICMP_ECHO_REPLY_PKT = hex(`
  45000024 177b0000 4001df5a c0000202 c0000201
  00008d7c 66720001 00010203 04050607`);
/** Port unreachable (RFC 792) quoting the DNS query's IP header and first 8 bytes. */
const ICMP_PORT_UNREACH_PKT = hex(`
  45c00038 1b2c0000 4001dad5 c0000202 c0000201
  030362d9 00000000
  45000039 94694000 40112247 c0000201 c0000202 89bc0035 0025100d`);

describe('IcmpHeader', () => {
  it('reads a captured echo request and its reply (RFC 792)', () => {
    const c = new IcmpHeader();
    assert.equal(c.parse(ICMP_ECHO_PKT, 20, 16), ICMP_OK);
    assert.deepEqual([c.type, c.code, c.id, c.seq, c.isError], [ICMP_ECHO_REQUEST, 0, 0x6672, 1, false]);
    assert.ok(isIcmpQueryRequest(c.type));
    assert.equal(sumBytes(ICMP_ECHO_PKT, 20, 16, 0), 0xffff);
    assert.equal(c.parse(ICMP_ECHO_REPLY_PKT, 20, 16), ICMP_OK);
    assert.deepEqual([c.type, c.id, c.idOff, c.csumOff], [ICMP_ECHO_REPLY, 0x6672, 24, 22]);
    assert.ok(isIcmpQueryReply(c.type));
  });

  it('an error quotes the offending header and 8 bytes, parsed by its own IPv4 view', () => {
    const c = new IcmpHeader();
    assert.equal(c.parse(ICMP_PORT_UNREACH_PKT, 20, 36), ICMP_OK);
    assert.deepEqual([c.type, c.code, c.isError, c.embeddedOff, c.embeddedLen], [ICMP_DEST_UNREACH, 3, true, 28, 28]);
    assert.equal(sumBytes(ICMP_PORT_UNREACH_PKT, 20, 36, 0), 0xffff);
    const inner = new Ipv4Header();
    assert.equal(inner.parse(ICMP_PORT_UNREACH_PKT, c.embeddedOff, c.embeddedLen, true, false), IPV4_OK);
    assert.equal(inner.proto, PROTO_UDP);
  });

  it('needs 8 bytes', () => {
    assert.equal(new IcmpHeader().parse(ICMP_ECHO_PKT, 20, 7), ICMP_ERR_TRUNCATED);
  });
});
