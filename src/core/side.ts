/**
 * The two sides of the router, and the TUN device each one's policy routing
 * feeds. The TUN cannot see the interface a packet entered the box on, so
 * vpnmasq has one device per side: LAN-ingress rules route into the first,
 * WAN-ingress steering into the second, and the device tag a packet is read
 * with tells the packet path which side it came from. The tag of a device is
 * its side.
 */

/** Fed by `from PREFIX iif LANIF lookup LAN` (table 7100): only these packets may create outbound mappings. */
export const SIDE_LAN = 0;
/** Fed by the WAN steering (tables 7101 and, shared mode, 7102). */
export const SIDE_WAN = 1;

export type Side = typeof SIDE_LAN | typeof SIDE_WAN;

/** Linux IFNAMSIZ (16) less the terminating NUL. */
const IFNAME_MAX = 15;
const WAN_SUFFIX = '-w';
/** The longest tun.name whose two devices both fit IFNAMSIZ. */
export const TUN_NAME_MAX = IFNAME_MAX - WAN_SUFFIX.length;

/**
 * The TUN devices of `tun.name`, indexed by side (= device tag): the LAN one
 * keeps the configured name, the WAN one adds "-w". Every place that names a
 * TUN device (routes, rules, sysctls, firewall) takes it from here.
 */
export function tunDeviceNames(tunName: string): readonly [lan: string, wan: string] {
  if (tunName.length > TUN_NAME_MAX) throw new Error(`tun.name ${JSON.stringify(tunName)} is longer than ${TUN_NAME_MAX} characters: its WAN device ${tunName}${WAN_SUFFIX} would not fit IFNAMSIZ`);
  return [tunName, `${tunName}${WAN_SUFFIX}`];
}
