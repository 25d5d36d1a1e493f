/**
 * The native modules must match the Node that runs them. better-sqlite3 is
 * built against V8's ABI, so it loads only in a Node with the same
 * NODE_MODULE_VERSION (every Node 20 release has 115; Node 22 has 127); the
 * TUN addon uses N-API 8 and loads in any later Node, but it can still fail to
 * load (a missing file, a newer C library than the build machine's). Both are
 * loaded once before the daemon starts, and by `vpnmasq check-native` after an
 * install or upgrade, so a mismatch is reported with how to rebuild instead of
 * surfacing at the first database write.
 */
import Database from 'better-sqlite3';
import { loadTunNative } from './tun/native';

export interface NativeModuleReport {
  module: string;
  /** null when it loaded. */
  problem: string | null;
}

/** How to get modules built for the Node on this machine; both install paths rebuild them from the source tree. */
export const REBUILD_HINT =
  'rebuild vpnmasq with this Node: in the source tree run "npm ci && npm run build", then "scripts/install.sh", ' +
  'or "npm run package" and "apt install ./vpnmasq_*.deb" (the package needs the Node major it was built with)';

/** This Node: version, executable and ABI, e.g. `v20.19.2 (/usr/bin/node, NODE_MODULE_VERSION 115)`. */
export function nodeDescription(): string {
  return `${process.version} (${process.execPath}, NODE_MODULE_VERSION ${process.versions.modules})`;
}

/**
 * Turns a load failure into one line. Node's ABI error (src/node_binding.cc)
 * reads "The module 'F' was compiled against a different Node.js version using
 * NODE_MODULE_VERSION A. This version of Node.js requires NODE_MODULE_VERSION B. …".
 */
export function describeLoadError(module: string, error: Error): string {
  const abi = /module '([^']+)'\s+was compiled against a different Node\.js version using\s+NODE_MODULE_VERSION (\d+)\.\s+This version of Node\.js requires\s+NODE_MODULE_VERSION (\d+)/.exec(error.message);
  if (abi) {
    return `${module} (${abi[1]}) was built for NODE_MODULE_VERSION ${abi[2]}, but this Node is ${nodeDescription()}: ${REBUILD_HINT}`;
  }
  return `${module} does not load in Node ${nodeDescription()}: ${error.message.replace(/\s*\n\s*/g, ' ')}: ${REBUILD_HINT}`;
}

function report(module: string, load: () => void): NativeModuleReport {
  try {
    load();
    return { module, problem: null };
  } catch (e) {
    return { module, problem: describeLoadError(module, e as Error) };
  }
}

/** Loads every native module; one report each. */
export function checkNativeModules(): NativeModuleReport[] {
  return [
    report('better-sqlite3', () => new Database(':memory:').close()),
    report('TUN addon', () => void loadTunNative()),
  ];
}
