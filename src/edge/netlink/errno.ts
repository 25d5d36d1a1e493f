/** Extracts the errno name from an error thrown by the `netlink` package ("Request rejected: EEXIST"). */
export function netlinkErrno(e: unknown): string | undefined {
  const msg = e instanceof Error ? e.message : String(e);
  const m = /Request rejected: ([A-Z0-9_]+)/.exec(msg);
  if (m) return m[1];
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
