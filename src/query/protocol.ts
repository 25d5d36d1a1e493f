/**
 * The control socket's protocol, shared by the daemon (src/daemon/control.ts)
 * and the CLI: newline-delimited JSON over a Unix stream socket. One request
 * per line, `{"cmd": ...}`; the answer is one JSON line, or for listings one
 * line per row followed by `{"ok": true, "end": true, ...}`; a failure is
 * `{"ok": false, "error": ...}`. The commands are listed in
 * src/daemon/control-commands.ts.
 */

export type ControlRequest = { cmd: string } & Record<string, unknown>;

/** Longest request line the daemon reads. */
export const MAX_REQUEST_BYTES = 64 * 1024;
