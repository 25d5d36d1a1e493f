#!/usr/bin/env node
/**
 * The `vpnmasq` program: the command line (src/cli) with the router
 * (src/daemon) behind `vpnmasq run`. The only module that sees both; the
 * daemon is loaded for `run` alone, so the client commands start quickly.
 */
import { main } from '../cli/main';

void main(async (configPath, config, opts) => (await import('../daemon/lifecycle')).runDaemon(configPath, config, opts));
