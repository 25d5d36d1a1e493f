/** Removes namespaces left by lab runs whose process died (run before the lab tests). */
import { sweepStaleLabs } from './lab';

void sweepStaleLabs().then((removed) => {
  if (removed.length > 0) process.stderr.write(`removed stale lab namespaces: ${removed.join(' ')}\n`);
});
