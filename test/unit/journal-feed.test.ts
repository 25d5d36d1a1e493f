/** The observers' feed (delivered after the batch, bounded) and the id index built from it. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EV_DESTROY, EV_NEW, EV_UPDATE, Journal } from '../../src/core/journal';
import { JournalFeed, JournalObserver } from '../../src/query/journal-feed';
import { IdIndex, IdSource } from '../../src/query/id-index';
import { SessionTable, TABLE_SESSIONS } from '../../src/nat/sessions';
import { PROTO_UDP } from '../../src/wire/ipv4';

/** An observer that records what it is given. */
function recorder(): { observer: JournalObserver; events: number[][]; lost: number[] } {
  const events: number[][] = [];
  const lost: number[] = [];
  return { observer: { event: (k, t, i, s) => { events.push([k, t, i, s]); }, lost: (n) => { lost.push(n); } }, events, lost };
}

describe('journal feed', () => {
  it('queues events inside the batch and delivers them only when the scheduled turn runs, in order', () => {
    const scheduled: Array<() => void> = [];
    const feed = new JournalFeed(8, (fn) => scheduled.push(fn));
    const o = recorder();
    feed.add(o.observer);
    feed.event(EV_NEW, 1, 5, 100);
    feed.event(EV_UPDATE, 1, 5, 100);
    feed.flush();
    feed.event(EV_DESTROY, 1, 5, 100);
    feed.flush();
    assert.deepEqual(o.events, [], 'nothing reaches an observer inside the batch');
    assert.equal(scheduled.length, 1, 'one delivery scheduled for both drains');
    scheduled[0]();
    assert.deepEqual(o.events, [[EV_NEW, 1, 5, 100], [EV_UPDATE, 1, 5, 100], [EV_DESTROY, 1, 5, 100]]);
    assert.deepEqual(o.lost, []);
    feed.flush();
    assert.equal(scheduled.length, 1, 'nothing queued, nothing scheduled');
  });

  it('is bounded: events beyond its capacity are counted and reported as lost', () => {
    const scheduled: Array<() => void> = [];
    const feed = new JournalFeed(4, (fn) => scheduled.push(fn));
    const o = recorder();
    feed.add(o.observer);
    for (let i = 0; i < 10; i++) feed.event(EV_NEW, 1, i, i + 1);
    feed.lose(3);
    feed.flush();
    scheduled[0]();
    assert.deepEqual(o.events.map((e) => e[3]), [7, 8, 9, 10], 'the newest are kept');
    assert.deepEqual(o.lost, [6 + 3]);
  });

  it('holds nothing while nobody observes', () => {
    const scheduled: Array<() => void> = [];
    const feed = new JournalFeed(4, (fn) => scheduled.push(fn));
    feed.event(EV_NEW, 1, 0, 1);
    feed.flush();
    assert.equal(scheduled.length, 0);
  });
});

describe('id index', () => {
  function setup() {
    const t = new SessionTable(1024, 0x0a000001, { range: [1024, 65535], lowRange: null, preserve: true }, new Journal());
    const sources = (): IdSource[] => [{ table: TABLE_SESSIONS, capacity: t.capacity, inUse: t.sInUse, serial: t.sSerial }];
    const ids = new IdIndex(sources);
    const feed = new JournalFeed(1 << 10, () => undefined);
    feed.add(ids);
    const drain = () => { (t.journal as Journal).drain((k, tb, i, s) => feed.event(k, tb, i, s)); feed.deliver(); };
    return { t, ids, drain };
  }

  it('finds an entry by id from the events, and forgets it when it is destroyed', () => {
    const { t, ids, drain } = setup();
    assert.equal(ids.find(1), null);
    const a = t.createOut(PROTO_UDP, 0x0a4d000b, 40000, 0x0b000001, 53, 0, 0, 1000);
    const b = t.createOut(PROTO_UDP, 0x0a4d000b, 40001, 0x0b000001, 53, 0, 0, 1000);
    drain();
    assert.deepEqual(ids.find(t.sSerial[a]), { table: TABLE_SESSIONS, index: a });
    assert.deepEqual(ids.find(t.sSerial[b]), { table: TABLE_SESSIONS, index: b });
    t.removeSession(a);
    drain();
    assert.equal(ids.find(t.sSerial[a]), null);
    assert.equal(ids.find(2 ** 53 - 1), null);
  });

  it('rebuilds from the tables after lost events or a restore without events', () => {
    const { t, ids } = setup();
    ids.find(1);
    const s = t.createOut(PROTO_UDP, 0x0a4d000b, 40002, 0x0b000001, 53, 0, 0, 1000);
    ids.lost();
    assert.deepEqual(ids.find(t.sSerial[s]), { table: TABLE_SESSIONS, index: s });
    const r = t.restoreSession(PROTO_UDP, 0x0a4d000c, 40003, 40003, 0x0b000001, 53, 0, 0, 1000, 2 ** 40 + 7);
    ids.rebuild();
    assert.deepEqual(ids.find(2 ** 40 + 7), { table: TABLE_SESSIONS, index: r }, 'ids above 2^32 too');
  });
});
