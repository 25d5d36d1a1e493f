/**
 * Input bounds: a config file has a size cap and a nesting limit, with the
 * file and position in the error; filter values are checked (SPI range, the
 * states a protocol's rows show) and values quoted back in errors are cut.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig, MAX_CONFIG_BYTES, parseConfig } from '../../src/config/schema';
import { MAX_DEPTH } from '../../src/config/json';
import { compileFilter, FilterError, parseConnId } from '../../src/query/filters';
import { ROW_STATES } from '../../src/query/rows';

function configError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `a ConfigError, not ${String(e)}`);
    return e.message;
  }
  assert.fail('no error');
}

function filterError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof FilterError, `a FilterError, not ${String(e)}`);
    return e.message;
  }
  assert.fail('no error');
}

describe('config file bounds', () => {
  it('100,000 nested arrays: the file, line and column of the level too deep', () => {
    const text = `{\n  "lan": ${'['.repeat(100_000)}${']'.repeat(100_000)}\n}\n`;
    const msg = configError(() => parseConfig(text, '/etc/vpnmasq/deep.json'));
    // Level 1 is the document's object; the array that opens level MAX_DEPTH + 1 is refused.
    assert.equal(msg, `/etc/vpnmasq/deep.json: syntax error at line 2, column ${10 + MAX_DEPTH - 1}: nested deeper than ${MAX_DEPTH} levels`);
  });

  it('nesting up to the limit parses (and fails only on the schema)', () => {
    const text = `{"x": ${'['.repeat(MAX_DEPTH - 1)}${']'.repeat(MAX_DEPTH - 1)}}`;
    assert.doesNotMatch(configError(() => parseConfig(text, 'ok.json')), /nested deeper/);
  });

  it('/dev/zero is refused after MAX_CONFIG_BYTES, with the file named', () => {
    const msg = configError(() => loadConfig('/dev/zero'));
    assert.equal(msg, `/dev/zero: file larger than ${MAX_CONFIG_BYTES} bytes (stopped reading at byte ${MAX_CONFIG_BYTES + 1}); a config file is a few KB`);
  });
});

describe('filter values', () => {
  it('SPIs are 32 bits, cookies 64', () => {
    assert.equal(filterError(() => compileFilter({ spi: '0x123456789' })), 'spi: "0x123456789" is out of range (0 to 0xffffffff)');
    compileFilter({ spi: '0xffffffff' });
    compileFilter({ spi: '00000000ffffffff' });
    compileFilter({ cookie: '0xffffffffffffffff' });
    assert.match(filterError(() => compileFilter({ cookie: '0x1ffffffffffffffff' })), /^cookie: .* is out of range \(0 to 0xffffffffffffffff\)$/);
    assert.match(filterError(() => compileFilter({ spi: 'zz' })), /^spi: not a hex number: "zz"$/);
  });

  it('states are the ones rows show, of the protocol when one is given', () => {
    assert.match(filterError(() => compileFilter({ state: 'bogus' })), /^state: unknown state "bogus" \(one of NONE, SYN_SENT, .*CLEARING\)$/);
    assert.equal(filterError(() => compileFilter({ proto: 'udp', state: 'ESTABLISHED' })), 'state: unknown udp state "ESTABLISHED" (one of UNREPLIED, REPLIED)');
    for (const [proto, states] of Object.entries(ROW_STATES)) for (const state of states) compileFilter({ proto, state: state.toLowerCase() });
    assert.deepEqual(ROW_STATES.esp, ['PENDING', 'ESTABLISHED', 'SQUELCHED']);
  });

  it('a value quoted back is cut to 64 characters and its length', () => {
    const huge = '9'.repeat(100_000);
    for (const f of [() => compileFilter({ sport: huge as unknown as number }), () => compileFilter({ src: huge }), () => compileFilter({ proto: huge }),
      () => compileFilter({ state: huge }), () => compileFilter({ spi: `x${huge}` }), () => parseConnId(`x${huge}`)]) {
      const msg = filterError(f);
      assert.ok(msg.length < 400, `${msg.length} characters: ${msg.slice(0, 100)}`);
      assert.match(msg, /\.\.\. \(10000[01] characters\)/);
    }
  });
});
