/**
 * Removes namespaces left by lab runs whose process died. Run before the lab
 * tests (`sweep.js`), and after them (`sweep.js --after`), where anything it
 * finds was left behind by a test of this run: a bug, reported loudly (exit 3).
 */
import { sweepStaleLabs } from './lab';

const after = process.argv.includes('--after');
void sweepStaleLabs().then((removed) => {
  if (removed.length === 0) return;
  if (after) {
    process.stderr.write(`test: FAILED: lab tests left namespaces behind (removed now): ${removed.join(' ')}\n`);
    process.exitCode = 3;
  } else {
    process.stderr.write(`removed stale lab namespaces: ${removed.join(' ')}\n`);
  }
});
