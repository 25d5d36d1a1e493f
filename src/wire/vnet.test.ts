import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VNET_ERR_TRUNCATED, VNET_GSO_TCPV4, VNET_HDR_LEN, VNET_OK, VnetHeader } from './vnet';

/** struct virtio_net_hdr (virtio 1.x §5.1.6, little-endian): what the TUN hands over with a TSO super-packet. */
const TSO = Uint8Array.from([0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00]);
/** A plain packet whose checksum the kernel already verified. */
const VALID = Uint8Array.from([0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

describe('VnetHeader', () => {
  it('reads a TSO header: NEEDS_CSUM, TCPv4, header 66, segments 1448, checksum at 34 + 16', () => {
    const v = new VnetHeader();
    assert.equal(v.parse(TSO, 0, VNET_HDR_LEN), VNET_OK);
    assert.deepEqual([v.needsChecksum, v.dataValid, v.gsoType, v.hdrLen, v.gsoSize, v.csumStart, v.csumOffset],
      [true, false, VNET_GSO_TCPV4, 66, 1448, 34, 16]);
    assert.equal(v.parse(VALID, 0, VNET_HDR_LEN), VNET_OK);
    assert.deepEqual([v.needsChecksum, v.dataValid], [false, true]);
  });

  it('needs 10 bytes', () => {
    assert.equal(new VnetHeader().parse(TSO, 0, 9), VNET_ERR_TRUNCATED);
  });
});
