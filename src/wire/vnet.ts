/**
 * struct virtio_net_hdr (include/uapi/linux/virtio_net.h), the 10-byte prefix
 * of every TUN read and write once IFF_VNET_HDR is set. Fields are in host
 * byte order (little-endian on the machines this runs on).
 */
export const VNET_HDR_LEN = 10;

export const VNET_FLAGS = 0;
export const VNET_GSO_TYPE = 1;
export const VNET_HDR_LEN_FIELD = 2;
export const VNET_GSO_SIZE = 4;
export const VNET_CSUM_START = 6;
export const VNET_CSUM_OFFSET = 8;

/** The L4 checksum field holds only the pseudo-header sum; the kernel finishes it. */
export const VNET_F_NEEDS_CSUM = 1;
/** The checksum was already verified by the kernel. */
export const VNET_F_DATA_VALID = 2;

export const VNET_GSO_NONE = 0;
export const VNET_GSO_TCPV4 = 1;
export const VNET_GSO_UDP_L4 = 5;
export const VNET_GSO_ECN = 0x80;
