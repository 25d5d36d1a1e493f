// vpnmasq_tun: TUN device I/O for the NAT data path (design: docs/datapath.md).
//
// open() creates or attaches a TUN device, one fd per queue (IFF_MULTI_QUEUE
// when more than one), with a virtio_net_hdr on every packet and kernel
// offloads. start() runs one packet loop over the queues of one or more
// devices: packets are read into each queue's ring of slots in a JS-owned
// arena, the JS thread takes every packet read so far as one batch (arena
// offset, length and device tag per packet), translates in place with one
// call into JS, and lists what to write (offset, length, device). No system
// call is made per packet on the JS thread. Two ways to do the I/O:
//
//  - "uring": one io_uring on the JS thread. A multishot read per queue fills
//    the ring's slots (a provided-buffer ring), a batch's writes go out with
//    one io_uring_enter, and an eventfd wakes the loop. No thread switch on
//    the way through: the lowest latency, and the least CPU per packet.
//  - "threads": a reader and a writer thread per queue, filling and draining
//    single-producer/single-consumer rings, the JS thread woken once per batch
//    through a uv_async_t. The kernel's work for reads and writes runs beside
//    translation, on other cores.
//
// A slot has a reference count: it is refilled once JS is done with it and
// every write from it has completed. A device that fails (POLLERR, or a
// read/write error such as EBADFD once the interface was deleted) stops the
// loop and is reported to onEvent once; so is an exception that onBatch let
// escape. See include/uapi/linux/if_tun.h and include/uapi/linux/virtio_net.h.

#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "uring.h"

// Defined in native/notify.cc.
Napi::Value Notify(const Napi::CallbackInfo& info);

namespace {

// TUNSETOFFLOAD flags for UDP segmentation, added in Linux 6.2 (if_tun.h);
// the build host's headers may predate them.
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif
constexpr unsigned kUsoFlags = TUN_F_USO4 | TUN_F_USO6;
constexpr unsigned kKnownOffloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | kUsoFlags;

// sizeof(struct virtio_net_hdr) in include/uapi/linux/virtio_net.h (the legacy
// header without num_buffers); that header is not valid C++, so not included.
constexpr int kVnetHdrLen = 10;

// Indexes into the stats Float64Array (mirrored in src/edge/tun/native.ts).
enum Stat : uint32_t {
  RX_PACKETS = 0,
  RX_BYTES = 1,
  RX_BATCHES = 2,
  TX_PACKETS = 3,
  TX_BYTES = 4,
  TX_QUEUED = 5,
  TX_QUEUE_DROPS = 6,
  TX_ERRORS = 7,
  RX_ERRORS = 8,
  ERR_CALLBACK = 9,
  TX_QUEUE_LEN = 10,
  RX_RING_FULL = 11,
  // "threads": batches by how long their oldest packet waited for the JS
  // thread (from its read until the batch was gathered), then the longest
  // wait in µs. With io_uring the kernel holds what arrived until the loop's
  // next io_uring_enter, and nothing stamps that: these stay 0.
  RX_WAIT_UNDER_64US = 12,
  RX_WAIT_UNDER_256US = 13,
  RX_WAIT_UNDER_1MS = 14,
  RX_WAIT_UNDER_4MS = 15,
  RX_WAIT_4MS_OR_MORE = 16,
  RX_WAIT_MAX_US = 17,
  // "uring" with busyPollUs: idle moments the loop spun through and found
  // work in (no sleep, no wakeup), and those it spun through in vain.
  BUSY_POLL_HITS = 18,
  BUSY_POLL_MISSES = 19,
  STATS_COUNT = 20,
};

constexpr uint64_t kWaitBoundsUs[] = {64, 256, 1000, 4000};
constexpr uint32_t kWaitBuckets = RX_WAIT_MAX_US - RX_WAIT_UNDER_64US;

// A spin-wait hint: lets the core's other hardware thread run, saves power.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// How often a busy-polling loop offers its CPU to other runnable tasks
// (sched_yield(2)). A socket's wakeup is a sync wakeup (WF_SYNC: the waker
// is expected to sleep soon), so the scheduler tends to queue the endpoint a
// write just woke on the loop's own CPU; a spin at the unit's nice -10 would
// keep it waiting until the spin ends. With nothing else runnable the call
// returns at once, so a lone loop loses at most one system call's time.
constexpr uint64_t kBusyPollYieldNs = 5000;

// Batches delivered per wakeup before yielding to the event loop.
constexpr int kMaxRoundsPerWakeup = 8;
// io_uring_enter calls per SubmitAndReap: a batch's writes, the re-armed
// reads their completions allowed, and retries after EBUSY (each frees room).
constexpr int kMaxSubmitsPerReap = 8;
// Bounds on a loop's shape.
constexpr uint32_t kMaxQueues = 64;
constexpr uint32_t kMaxDevices = 255;
// How long a writer waits for room after ENOBUFS, which raises no POLLOUT.
constexpr int kNoBufsWaitMs = 1;
// A reader wakes the JS thread when the device has nothing more to read, or
// after this many packets while it keeps reading (so a flood is translated in
// batches while the next one is read, and one packet alone is not delayed).
constexpr uint32_t kWakeEvery = 32;

// read()/write() errors that mean the device itself is gone or broken, not the
// packet: EBADFD once the interface was deleted (tun_chr_read_iter/write_iter
// with no tun attached), EBADF/ENODEV/ENXIO/EIO for a dead fd or device.
bool IsDeviceErrno(int err) {
  return err == EBADFD || err == EBADF || err == ENODEV || err == ENXIO || err == EIO;
}

// errno's symbolic name ("EBADFD"); libuv's table lacks some that TUN returns.
const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);  // glibc >= 2.32
  return name != nullptr ? name : uv_err_name(-err);
}

void ThrowErrno(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.ThrowAsJavaScriptException();
}

void ThrowType(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
}

bool IsTypedArrayOf(const Napi::Value& v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

// A non-negative integer argument no larger than max.
bool GetCount(const Napi::Value& v, double max, uint32_t* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= max) || std::floor(d) != d) return false;
  *out = static_cast<uint32_t>(d);
  return true;
}

void Wake(int eventFd) {
  uint64_t one = 1;
  while (write(eventFd, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

void DrainEvent(int eventFd) {
  uint64_t n;
  while (read(eventFd, &n, sizeof(n)) < 0 && errno == EINTR) {
  }
}

// Written by one thread, read by the JS thread for stats(): relaxed is enough.
struct Counter {
  std::atomic<uint64_t> v{0};
  void Add(uint64_t n) { v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  uint64_t Get() const { return v.load(std::memory_order_relaxed); }
};

// A packet to write: arena offset and length, and the global receive slot it
// lies in (released once written), or -1 for memory outside the rings.
struct TxEntry {
  uint32_t off;
  uint32_t len;
  int32_t slot;
};

enum class Mode { kThreads, kUring };

enum Op : uint32_t { kOpPoll = 0, kOpRead = 1, kOpWrite = 2, kOpEnter = 3 };

uint32_t NextPow2(uint32_t v) {
  uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// io_uring user_data: what completed, and which queue or write.
constexpr uint64_t kUdRead = 1ull << 62;
constexpr uint64_t kUdWrite = 2ull << 62;
constexpr uint64_t kUdKindMask = 3ull << 62;

// A write handed to io_uring and not yet completed.
struct Inflight {
  TxEntry e;
  uint32_t queue;
  bool active;
};

struct Loop;

// One fd: a device, or one queue of a multi-queue device, with its receive
// ring (slots [firstSlot, firstSlot + ringSlots) of the arena), its tx ring,
// and the two threads that serve them.
struct Queue {
  Loop* loop = nullptr;
  int fd = -1;
  uint32_t dev = 0;        // device tag JS sees in rxDevs and gives in txDevs
  uint32_t index = 0;      // position among the device's queues
  uint32_t firstSlot = 0;  // global index of ring slot 0
  uint8_t* ring = nullptr;
  int readerWake = -1;  // eventfds: a slot was freed / entries were queued / stop
  int writerWake = -1;

  // Receive ring: the reader (or the io_uring completions) produce, in the
  // order the device returned the packets; the JS thread consumes.
  std::vector<uint32_t> rxFifo;  // ring slot of each packet, by arrival
  std::vector<uint32_t> rxLen;   // bytes read into each ring slot
  std::vector<uint64_t> rxStamp;  // "threads": CLOCK_MONOTONIC ns when the reader read each ring slot
  alignas(64) std::atomic<uint32_t> rxHead{0};
  std::atomic<bool> readerWaiting{false};
  uint32_t rxTail = 0;  // JS thread only

  // Transmit ring: the JS thread produces, the writer consumes (txTail).
  std::vector<TxEntry> tx;
  uint32_t txMask = 0;
  alignas(64) std::atomic<uint32_t> txHead{0};
  uint32_t txHeadLocal = 0;  // JS thread: entries pushed, published at the end of a batch
  alignas(64) std::atomic<uint32_t> txTail{0};
  std::atomic<bool> writerWaiting{false};

  Counter rxPackets, rxBytes, rxErrors, rxRingFull;  // reader
  Counter txPackets, txBytes, txErrors, txQueued;    // writer

  std::thread reader;
  std::thread writer;

  // "uring": this queue's slots as provided buffers (group = queue number).
  uring::BufRing bufs;
  uint32_t bufsAvail = 0;  // buffers the kernel can still take
  bool bufsAdded = false;  // added since the last Publish()
  bool armed = false;      // the multishot read is active

  void ReaderMain();
  void WriterMain();
};

struct AddonData {
  std::unordered_map<uint32_t, Loop*> loops;
  uint32_t nextId = 1;
};

// The devices' queues, the JS memory they work on, and the JS-thread side of
// the loop. Lifetime: created by start(); Close() (from stop() or env
// teardown) stops the I/O (joins the threads, or cancels and drains every
// io_uring request); OnClosed, once libuv released its handles, frees it.
struct Loop {
  Napi::Env env;
  AddonData* addon;
  uint32_t id = 0;
  Mode mode;
  // Wakes the JS thread: readers and writers ("threads"), or the loop itself
  // when it yields with work left ("uring").
  uv_async_t async;
  bool asyncReady = false;  // async is initialized
  bool closing = false;
  int handlesOpen = 0;  // libuv handles to close before the Loop is freed
  napi_async_cleanup_hook_handle cleanupHook = nullptr;

  Napi::Reference<Napi::Uint8Array> arenaRef;
  Napi::Reference<Napi::Uint32Array> rxOffsRef, rxLensRef, txListRef;
  Napi::Reference<Napi::Uint8Array> rxDevsRef, txDevsRef;
  Napi::FunctionReference onBatch;
  Napi::FunctionReference onEvent;
  std::unique_ptr<Napi::AsyncContext> asyncContext;

  uint8_t* arena = nullptr;
  size_t arenaLen = 0;
  size_t slotSize = 0;
  uint32_t ringSlots = 0;
  size_t ringsEnd = 0;  // arena bytes [0, ringsEnd) are receive slots
  uint32_t* rxOffs = nullptr;
  uint32_t* rxLens = nullptr;
  uint8_t* rxDevs = nullptr;
  uint32_t batchCapacity = 0;
  uint32_t* txList = nullptr;
  uint8_t* txDevs = nullptr;
  uint32_t txCapacity = 0;

  std::vector<std::unique_ptr<Queue>> queues;
  std::vector<std::vector<Queue*>> devices;  // by tag: that device's queues
  // Per global slot: 1 while JS holds it (from read to the end of its batch)
  // plus 1 per queued write from it; at 0 it is read into again.
  std::unique_ptr<std::atomic<uint32_t>[]> refs;
  std::vector<uint32_t> batchSlots;  // global slot of each packet of the current batch
  std::vector<uint32_t> slotBatch;   // per global slot: the batch number that holds it
  uint32_t batchNo = 0;
  uint32_t nextQueue = 0;  // gathering starts here, round robin
  // Writes from outside the rings (held fragments, copies) not yet done: the
  // next batch waits for them, since JS may reuse that memory in it.
  std::atomic<uint32_t> foreignPending{0};
  std::atomic<bool> stopping{false};
  // The first device failure: errno << 16 | device tag << 8 | operation; 0 while healthy.
  std::atomic<uint32_t> failure{0};
  bool reported = false;

  Counter rxBatches, errCallback, txDrops, txInvalid;  // JS thread
  Counter busyPollHits, busyPollMisses;                 // JS thread ("uring")
  // "uring": how long the loop may spin for work before it sleeps (0: never),
  // whether it spins at its next idle moment, and since when it sleeps (0: awake).
  uint64_t busyPollNs = 0;
  bool spinNext = false;
  uint64_t idleSinceNs = 0;
  uint64_t rxWait[kWaitBuckets] = {};                   // JS thread: batches by wait (CountWait)
  uint64_t rxWaitMaxUs = 0;

  // "uring": the ring, the eventfd it signals when completions or deferred
  // work wait (polled on the event loop: epoll on the ring fd itself is not
  // woken for deferred work), and the writes in flight.
  std::unique_ptr<uring::Ring> ring;
  int ringEvent = -1;
  uv_poll_t ringPoll;
  std::vector<Inflight> inflight;
  std::vector<uint32_t> freeInflight;
  std::vector<uint32_t> submitted;  // writes handed out since the last reap

  Loop(Napi::Env e, AddonData* a, Mode m) : env(e), addon(a), mode(m) {
    async.data = this;
    ringPoll.data = this;
  }

  Queue* OwnerOf(uint32_t slot) { return queues[slot / ringSlots].get(); }

  // Any thread: the device failed; the JS thread reports it and stops delivering.
  void Fail(Queue* q, uint32_t op, int err) {
    uint32_t expected = 0;
    uint32_t code = static_cast<uint32_t>(err) << 16 | q->dev << 8 | op;
    if (failure.compare_exchange_strong(expected, code, std::memory_order_acq_rel) && mode == Mode::kThreads) {
      uv_async_send(&async);
    }
  }
  bool Failed() const { return failure.load(std::memory_order_acquire) != 0; }

  // Any thread: drops one reference; the last one hands the slot back to
  // its reader, or to the kernel as a provided buffer.
  void Unref(uint32_t slot) {
    if (refs[slot].fetch_sub(1, std::memory_order_seq_cst) != 1) return;
    Queue* q = OwnerOf(slot);
    if (mode == Mode::kUring) {
      GiveBuffer(q, slot - q->firstSlot);  // `slot` is arena-wide; the buffer ring counts from the queue's first slot
    } else if (q->readerWaiting.load(std::memory_order_seq_cst)) {
      Wake(q->readerWake);
    }
  }

  // Writer threads, or io_uring completions: a write from `e` completed or failed.
  void Release(const TxEntry& e) {
    if (e.slot >= 0) {
      Unref(static_cast<uint32_t>(e.slot));
    } else if (foreignPending.fetch_sub(1, std::memory_order_acq_rel) == 1 && mode == Mode::kThreads) {
      uv_async_send(&async);  // a batch may be waiting for it
    }
  }

  // ---- JS thread ----------------------------------------------------------

  // Takes what the readers published, round robin across queues, into
  // rxOffs/rxLens/rxDevs; returns the batch size.
  uint32_t Gather() {
    uint32_t count = 0;
    uint32_t n = static_cast<uint32_t>(queues.size());
    uint64_t oldest = UINT64_MAX;
    ++batchNo;
    for (uint32_t k = 0; k < n && count < batchCapacity; ++k) {
      Queue* q = queues[(nextQueue + k) % n].get();
      uint32_t avail = q->rxHead.load(std::memory_order_acquire) - q->rxTail;
      if (avail > 0 && mode == Mode::kThreads) {
        uint64_t t = q->rxStamp[q->rxFifo[q->rxTail % ringSlots]];
        if (t < oldest) oldest = t;
      }
      for (; avail > 0 && count < batchCapacity; --avail, ++q->rxTail, ++count) {
        uint32_t slot = q->rxFifo[q->rxTail % ringSlots];
        uint32_t g = q->firstSlot + slot;
        rxOffs[count] = static_cast<uint32_t>(g * slotSize);
        rxLens[count] = q->rxLen[slot];
        rxDevs[count] = static_cast<uint8_t>(q->dev);
        batchSlots[count] = g;
        slotBatch[g] = batchNo;
      }
    }
    nextQueue = (nextQueue + 1) % n;
    if (oldest != UINT64_MAX) CountWait(oldest);
    return count;
  }

  // Files the batch under how long its oldest packet waited.
  void CountWait(uint64_t stamp) {
    uint64_t now = NowNs();
    uint64_t us = now > stamp ? (now - stamp) / 1000 : 0;
    uint32_t b = 0;
    while (b < kWaitBuckets - 1 && us >= kWaitBoundsUs[b]) ++b;
    ++rxWait[b];
    if (us > rxWaitMaxUs) rxWaitMaxUs = us;
  }

  // Calls onEvent(ev). An exception from the handler itself is raised as an
  // uncaught exception.
  void Emit(Napi::Object ev) {
    onEvent.Call({ev});
    if (env.IsExceptionPending()) {
      napi_fatal_exception(env, env.GetAndClearPendingException().Value());
    }
  }

  // Calls onBatch(count); returns the number of tx entries, or -1 when the
  // callback threw or returned something other than a valid count. Either way
  // nothing of the batch is written (onBatch did not say what is complete) and
  // JS hears of it through onEvent.
  int64_t CallOnBatch(uint32_t count) {
    Napi::Value ret = onBatch.Call({Napi::Number::New(env, count)});
    uint32_t n;
    Napi::Value error;
    if (env.IsExceptionPending()) {
      error = env.GetAndClearPendingException().Value();
    } else if (GetCount(ret, txCapacity, &n)) {
      return n;
    } else {
      error = Napi::Error::New(env, "onBatch returned " + ret.ToString().Utf8Value() +
                                        ", not a tx count in [0, txList.length / 2]")
                  .Value();
    }
    errCallback.Add(1);
    if (closing) return -1;
    Napi::Object ev = Napi::Object::New(env);
    ev.Set("kind", "callback-error");
    ev.Set("error", error);
    ev.Set("dropped", Napi::Number::New(env, count));
    Emit(ev);
    return -1;
  }

  // Queues txList entries [0, n) on the writers of their devices. A packet in a
  // receive slot goes to the queue it was read from when it returns to the same
  // device (so a flow keeps one writer and its order), else to the queue with
  // the same index on the target device.
  void Transmit(uint32_t n) {
    for (uint32_t k = 0; k < n; ++k) {
      uint32_t off = txList[2 * k];
      uint32_t len = txList[2 * k + 1];
      uint32_t dev = txDevs[k];
      int32_t slot = -1;
      bool valid = len > 0 && off <= arenaLen && len <= arenaLen - off && dev < devices.size();
      if (valid && off < ringsEnd) {
        uint32_t g = static_cast<uint32_t>(off / slotSize);
        // Inside one slot, and a slot of this batch (any other is being refilled).
        valid = off - g * slotSize + len <= slotSize && slotBatch[g] == batchNo;
        slot = static_cast<int32_t>(g);
      }
      if (!valid) {
        txInvalid.Add(1);
        continue;
      }
      std::vector<Queue*>& targets = devices[dev];
      Queue* q = targets[0];
      if (slot >= 0) {
        Queue* from = OwnerOf(static_cast<uint32_t>(slot));
        q = from->dev == dev ? from : targets[from->index % targets.size()];
      }
      if (!Push(q, TxEntry{off, len, slot})) {
        txDrops.Add(1);  // the writers are that far behind: counted, never silent
        continue;
      }
      if (slot >= 0) {
        refs[slot].fetch_add(1, std::memory_order_relaxed);
      } else {
        foreignPending.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (mode == Mode::kUring) return;  // the caller submits
    for (auto& q : queues) {
      if (q->txHeadLocal == q->txHead.load(std::memory_order_relaxed)) continue;
      q->txHead.store(q->txHeadLocal, std::memory_order_seq_cst);
      if (q->writerWaiting.load(std::memory_order_seq_cst)) Wake(q->writerWake);
    }
  }

  // Hands one write to q's writer thread (published at the end of Transmit),
  // or to io_uring; false when there is no room.
  bool Push(Queue* q, const TxEntry& e) {
    if (mode == Mode::kThreads) {
      if (q->txHeadLocal - q->txTail.load(std::memory_order_acquire) > q->txMask) return false;
      q->tx[q->txHeadLocal++ & q->txMask] = e;
      return true;
    }
    if (freeInflight.empty()) return false;
    io_uring_sqe* sqe = Sqe();
    if (sqe == nullptr) return false;
    uint32_t i = freeInflight.back();
    freeInflight.pop_back();
    inflight[i] = Inflight{e, static_cast<uint32_t>(q->firstSlot / ringSlots), true};
    uring::PrepWrite(sqe, q->fd, arena + e.off, e.len, kUdWrite | i);
    submitted.push_back(i);
    return true;
  }

  // ---- "uring" ------------------------------------------------------------

  // A submission entry; a full submission ring is submitted first.
  io_uring_sqe* Sqe() {
    io_uring_sqe* s = ring->Sqe();
    if (s == nullptr && ring->Submit(false) == 0) s = ring->Sqe();
    return s;
  }

  void GiveBuffer(Queue* q, uint32_t slot) {
    q->bufs.Add(q->ring + size_t{slot} * slotSize, static_cast<uint32_t>(slotSize), static_cast<uint16_t>(slot));
    q->bufsAvail++;
    q->bufsAdded = true;
  }

  // Publishes freed buffers and re-arms reads that ran out of them; true
  // when it prepared a read that still has to be submitted.
  bool Refill() {
    bool prepared = false;
    for (auto& q : queues) {
      if (q->bufsAdded) {
        q->bufs.Publish();
        q->bufsAdded = false;
      }
      if (q->armed || q->bufsAvail == 0 || Failed()) continue;
      io_uring_sqe* sqe = Sqe();
      if (sqe == nullptr) return true;
      uring::PrepReadMultishot(sqe, q->fd, static_cast<uint16_t>(q->firstSlot / ringSlots),
                               kUdRead | (q->firstSlot / ringSlots));
      q->armed = true;
      prepared = true;
    }
    return prepared;
  }

  void OnCqe(const io_uring_cqe& c) {
    if ((c.user_data & kUdKindMask) == kUdRead) {
      Queue* q = queues[c.user_data & 0xffff].get();
      bool hasBuf = (c.flags & IORING_CQE_F_BUFFER) != 0;
      uint32_t slot = c.flags >> IORING_CQE_BUFFER_SHIFT;
      if (hasBuf) q->bufsAvail--;
      if (!(c.flags & IORING_CQE_F_MORE)) q->armed = false;
      if (c.res > 0 && hasBuf) {
        q->rxLen[slot] = static_cast<uint32_t>(c.res);
        refs[q->firstSlot + slot].store(1, std::memory_order_relaxed);
        uint32_t head = q->rxHead.load(std::memory_order_relaxed);
        q->rxFifo[head % ringSlots] = slot;
        q->rxHead.store(head + 1, std::memory_order_relaxed);
        q->rxPackets.Add(1);
        q->rxBytes.Add(static_cast<uint64_t>(c.res));
        return;
      }
      if (hasBuf) GiveBuffer(q, slot);
      int err = c.res == 0 ? EIO : -c.res;
      if (err == ENOBUFS) {
        q->rxRingFull.Add(1);  // every slot is in use: Refill re-arms once one is free
      } else if (err != ECANCELED) {
        q->rxErrors.Add(1);
        if (IsDeviceErrno(err)) Fail(q, kOpRead, err);
      }
      return;
    }
    uint32_t i = static_cast<uint32_t>(c.user_data & 0xffffffff);
    Inflight& f = inflight[i];
    Queue* q = queues[f.queue].get();
    if (c.res < 0) {
      q->txErrors.Add(1);  // e.g. EINVAL: malformed packet or vnet header
      if (IsDeviceErrno(-c.res)) Fail(q, kOpWrite, -c.res);
    } else {
      q->txPackets.Add(1);
      q->txBytes.Add(f.e.len);
    }
    f.active = false;
    freeInflight.push_back(i);
    Release(f.e);
  }

  bool InFlight() const {
    for (auto& q : queues) {
      if (q->armed) return true;
    }
    return freeInflight.size() != inflight.size();
  }

  // Submits what is prepared, runs the completions the kernel deferred and
  // takes them; returns how many there were. A write still in flight after
  // that met EAGAIN: it stays queued in io_uring (counted) until the device
  // takes it.
  //
  // The completions just taken can free slots (a write from them is done)
  // after a multishot read ended for want of buffers (ENOBUFS: every slot
  // was held by JS or a write). Those buffers are published and the read
  // re-armed here, before the loop may go to sleep: with no read armed
  // nothing would post a completion, signal the eventfd and wake it again.
  uint32_t SubmitAndReap(bool getEvents) {
    Refill();
    uint32_t n = 0;
    bool unsent = true;
    for (int tries = 0; unsent && tries < kMaxSubmitsPerReap; ++tries) {
      int err = ring->Submit(getEvents);
      n += ring->Reap([this](const io_uring_cqe& c) { OnCqe(c); });
      if (err == EBUSY || err == EAGAIN) continue;  // completions were waiting: reaped, try again
      if (err != 0) {
        Fail(queues[0].get(), kOpEnter, err);
        break;
      }
      unsent = Refill();
    }
    // Still something to submit after the bound: come back after the event loop had its turn.
    if (unsent && asyncReady && !Failed() && !closing) uv_async_send(&async);
    for (uint32_t i : submitted) {
      if (inflight[i].active) queues[inflight[i].queue]->txQueued.Add(1);
    }
    submitted.clear();
    return n;
  }

  // Each round's io_uring_enter sends the previous batch's writes and collects
  // what was read meanwhile: two system calls for a lone packet, about one
  // per batch under load. Reads that complete later signal the eventfd.
  void RunRing() {
    bool more = false;
    for (int round = 0; round < kMaxRoundsPerWakeup && !closing; ++round) {
      SubmitAndReap(true);
      more = !Failed() && DeliverOne();
      if (!more) break;
    }
    if (closing) return;
    if (more) {
      SubmitAndReap(false);  // the last batch's writes
      if (!Failed()) uv_async_send(&async);  // come back after the event loop had its turn
    }
  }

  // The eventfd is signalled for deferred work and again for every
  // completion the loop's own submissions post; it is read after the work,
  // so those do not wake the loop once more. Work that arrived meanwhile is
  // flagged in the ring, checked after the read.
  static void OnRingEvent(uv_poll_t* handle, int, int) {
    Loop* self = static_cast<Loop*>(handle->data);
    if (self->closing) return;
    self->InCallbackScope([self] {
      self->Woken();
      for (int pass = 0; pass < kMaxRoundsPerWakeup && !self->Failed() && !self->closing; ++pass) {
        self->RunRing();
        if (self->closing) return;
        DrainEvent(self->ringEvent);
        if (!self->ring->Pending() && !self->BusyPoll()) return;
      }
      self->ComeBackIfPending();
    });
  }

  // Adaptive busy polling. Sleeping costs a wakeup when the next packet
  // comes: the eventfd, epoll and, on a virtual machine, the vCPU's halt and
  // the interrupt that ends it, tens of µs each way of a request/response.
  // When the loop runs out of work it reads the ring's flags (shared memory,
  // no system call) for up to busyPollNs instead, but only while that pays:
  // it spins after a wakeup that came within busyPollNs of falling asleep,
  // and stops spinning after a spin that found nothing. Sparse traffic so
  // costs at most one vain spin per burst. It offers the CPU to other tasks
  // every kBusyPollYieldNs, the first time right after the batch it follows.
  // Returns whether work arrived.
  bool BusyPoll() {
    if (!spinNext) {
      idleSinceNs = busyPollNs == 0 ? 0 : NowNs();
      return false;
    }
    uint64_t until = NowNs() + busyPollNs;
    uint64_t yieldAt = 0;
    for (;;) {
      for (int i = 0; i < 64; ++i) {
        if (ring->Pending()) {
          busyPollHits.Add(1);
          return true;
        }
        CpuRelax();
      }
      uint64_t now = NowNs();
      if (now >= until) {
        busyPollMisses.Add(1);
        spinNext = false;
        idleSinceNs = now;
        return false;
      }
      if (now >= yieldAt) {
        sched_yield();
        yieldAt = now + kBusyPollYieldNs;
      }
    }
  }

  // The eventfd woke the loop: had it spun, would the work have come in time?
  void Woken() {
    if (idleSinceNs != 0) spinNext = NowNs() - idleSinceNs <= busyPollNs;
    idleSinceNs = 0;
  }

  // Work still waits after a wakeup's bound (a burst), and the eventfd was
  // read: with DEFER_TASKRUN the kernel signals it only when its list of
  // deferred work goes from empty to not empty, so nothing would wake the
  // loop again. Come back after the event loop had its turn.
  void ComeBackIfPending() {
    if (!closing && !Failed() && ring->Pending()) uv_async_send(&async);
  }

  void EmitFailure() {
    uint32_t code = failure.load(std::memory_order_acquire);
    static const char* const kOps[] = {"poll", "read", "write", "io_uring_enter"};
    const char* op = kOps[code & 0xff];
    int err = static_cast<int>(code >> 16);
    Napi::Object ev = Napi::Object::New(env);
    ev.Set("kind", "device-error");
    ev.Set("dev", Napi::Number::New(env, (code >> 8) & 0xff));
    ev.Set("op", op);
    ev.Set("code", ErrnoName(err));
    ev.Set("errno", Napi::Number::New(env, err));
    ev.Set("message", std::string(op) + ": " + strerror(err));
    Emit(ev);
  }

  // One batch: what the queues have read, translated by JS, its writes
  // queued. False when there was nothing to deliver (or a batch must wait for
  // writes from outside the rings: their completion wakes the loop).
  bool DeliverOne() {
    if (foreignPending.load(std::memory_order_acquire) != 0) return false;
    uint32_t count = Gather();
    if (count == 0) return false;
    rxBatches.Add(1);
    int64_t n = CallOnBatch(count);
    if (closing) return false;  // onBatch called stop(): the I/O is gone
    if (n > 0) Transmit(static_cast<uint32_t>(n));
    for (uint32_t i = 0; i < count; ++i) Unref(batchSlots[i]);
    return true;
  }

  void Deliver() {
    for (int round = 0; round < kMaxRoundsPerWakeup && !closing && !Failed(); ++round) {
      if (!DeliverOne()) return;
    }
    // More may be waiting: come back after the event loop had its turn.
    for (auto& q : queues) {
      if (!closing && q->rxHead.load(std::memory_order_acquire) != q->rxTail) {
        uv_async_send(&async);
        break;
      }
    }
  }

  // Runs fn in a callback scope: microtasks and nextTicks queued by onBatch
  // run when it closes, as after any other libuv-driven callback (the
  // resource argument is ignored by Node; the async context carries it).
  // A device failure is reported after fn.
  template <typename F>
  void InCallbackScope(F fn) {
    Napi::HandleScope handleScope(env);
    napi_callback_scope scope;
    if (napi_open_callback_scope(env, nullptr, *asyncContext, &scope) != napi_ok) {
      errCallback.Add(1);
      return;
    }
    fn();
    if (Failed() && !reported && !closing) {
      reported = true;
      EmitFailure();
    }
    napi_close_callback_scope(env, scope);
  }

  static void OnAsync(uv_async_t* handle) {
    Loop* self = static_cast<Loop*>(handle->data);
    if (self->closing) return;
    self->InCallbackScope([self] {
      if (self->Failed()) return;
      if (self->mode == Mode::kUring) {
        self->RunRing();
        self->ComeBackIfPending();
      } else {
        self->Deliver();
      }
    });
  }

  void FillStats(double* out) {
    uint64_t s[STATS_COUNT] = {};
    for (auto& q : queues) {
      s[RX_PACKETS] += q->rxPackets.Get();
      s[RX_BYTES] += q->rxBytes.Get();
      s[RX_ERRORS] += q->rxErrors.Get();
      s[RX_RING_FULL] += q->rxRingFull.Get();
      s[TX_PACKETS] += q->txPackets.Get();
      s[TX_BYTES] += q->txBytes.Get();
      s[TX_ERRORS] += q->txErrors.Get();
      s[TX_QUEUED] += q->txQueued.Get();
      if (mode == Mode::kThreads) s[TX_QUEUE_LEN] += q->txHeadLocal - q->txTail.load(std::memory_order_relaxed);
    }
    if (mode == Mode::kUring) s[TX_QUEUE_LEN] = inflight.size() - freeInflight.size();
    s[RX_BATCHES] = rxBatches.Get();
    s[ERR_CALLBACK] = errCallback.Get();
    s[TX_QUEUE_DROPS] = txDrops.Get();
    s[TX_ERRORS] += txInvalid.Get();
    for (uint32_t b = 0; b < kWaitBuckets; ++b) s[RX_WAIT_UNDER_64US + b] = rxWait[b];
    s[RX_WAIT_MAX_US] = rxWaitMaxUs;
    s[BUSY_POLL_HITS] = busyPollHits.Get();
    s[BUSY_POLL_MISSES] = busyPollMisses.Get();
    for (uint32_t i = 0; i < STATS_COUNT; ++i) out[i] = static_cast<double>(s[i]);
  }

  void StartThreads() {
    for (auto& q : queues) {
      q->reader = std::thread(&Queue::ReaderMain, q.get());
      q->writer = std::thread(&Queue::WriterMain, q.get());
    }
  }

  // Sets up the ring: every slot a provided buffer, a multishot read per
  // queue, a poll handle on its eventfd (started by the caller). Returns 0,
  // or errno and what failed; on failure the Loop is simply deleted.
  int StartRing(uv_loop_t* uvLoop, const char** what) {
    uint32_t totalSlots = static_cast<uint32_t>(queues.size()) * ringSlots;
    uint32_t writes = totalSlots + txCapacity;
    inflight.assign(writes, Inflight{});
    freeInflight.reserve(writes);
    for (uint32_t i = writes; i-- > 0;) freeInflight.push_back(i);
    ring = std::make_unique<uring::Ring>();
    // Room for a completion per slot and per write in flight (the kernel
    // wants at least as many as submission entries).
    constexpr uint32_t kSqEntries = 256;
    uint32_t cq = NextPow2(totalSlots + writes);
    int err = ring->Init(kSqEntries, cq > kSqEntries ? cq : kSqEntries);
    if (err != 0) return *what = "io_uring_setup", err;
    ringEvent = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ringEvent < 0) return *what = "eventfd", errno;
    if (uring::Register(ring->fd(), IORING_REGISTER_EVENTFD, &ringEvent, 1) < 0) {
      return *what = "IORING_REGISTER_EVENTFD", errno;
    }
    for (auto& q : queues) {
      err = q->bufs.Init(ring->fd(), static_cast<uint16_t>(q->firstSlot / ringSlots), ringSlots);
      if (err != 0) return *what = "IORING_REGISTER_PBUF_RING", err;
      for (uint32_t slot = 0; slot < ringSlots; ++slot) GiveBuffer(q.get(), slot);
    }
    SubmitAndReap(false);
    int rc = uv_poll_init(uvLoop, &ringPoll, ringEvent);
    if (rc < 0) {
      ring->CancelAll();
      return *what = "uv_poll_init", -rc;
    }
    return 0;
  }

  // Stops and joins the threads (they only ever block on their eventfds and
  // non-blocking fds), or cancels every io_uring request and waits for them,
  // then releases the libuv handle.
  void Close() {
    if (closing) return;
    closing = true;
    addon->loops.erase(id);
    if (mode == Mode::kUring) {
      uv_poll_stop(&ringPoll);
      // Cancelled requests complete as deferred work: run it until none is
      // left, so they drop their references to the device files now and the
      // devices go away when the caller closes its fds, then close the ring.
      ring->CancelAll();
      for (int i = 0; i < 100 && InFlight(); ++i) {
        ring->Submit(true);
        ring->Reap([this](const io_uring_cqe& c) { OnCqe(c); });
      }
      ring.reset();
      uv_close(reinterpret_cast<uv_handle_t*>(&ringPoll), OnClosed);
      uv_close(reinterpret_cast<uv_handle_t*>(&async), OnClosed);
      return;
    }
    stopping.store(true, std::memory_order_seq_cst);
    for (auto& q : queues) {
      if (q->readerWake >= 0) Wake(q->readerWake);
      if (q->writerWake >= 0) Wake(q->writerWake);
    }
    for (auto& q : queues) {
      if (q->reader.joinable()) q->reader.join();
      if (q->writer.joinable()) q->writer.join();
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&async), OnClosed);
  }

  // JS references and the async context are released here rather than in
  // Close(), which may run inside onBatch while its callback scope is open.
  static void OnClosed(uv_handle_t* handle) {
    Loop* self = static_cast<Loop*>(handle->data);
    if (--self->handlesOpen > 0) return;
    if (self->cleanupHook != nullptr) napi_remove_async_cleanup_hook(self->cleanupHook);
    for (auto& q : self->queues) {
      if (q->readerWake >= 0) close(q->readerWake);
      if (q->writerWake >= 0) close(q->writerWake);
    }
    if (self->ringEvent >= 0) close(self->ringEvent);
    delete self;
  }

  // Environment teardown (worker exit): stop the threads before the loop closes.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
    static_cast<Loop*>(arg)->Close();
  }
};

// Reads into the ring in order while slots are free, publishing each packet;
// wakes the JS thread once per burst (kWakeEvery). uv_async_send coalesces
// further: no system call while a wakeup is still pending.
void Queue::ReaderMain() {
  Loop* L = loop;
  uint32_t head = 0;
  uint32_t unsignaled = 0;
  bool pollError = false;
  auto signal = [&] {
    if (unsignaled == 0) return;
    unsignaled = 0;
    uv_async_send(&L->async);
  };
  struct pollfd pfd[2] = {{fd, POLLIN, 0}, {readerWake, POLLIN, 0}};
  while (!L->stopping.load(std::memory_order_acquire) && !L->Failed()) {
    uint32_t slot = head % L->ringSlots;
    std::atomic<uint32_t>& ref = L->refs[firstSlot + slot];
    if (ref.load(std::memory_order_acquire) != 0) {
      // Backpressure: JS or a writer still holds the next slot.
      signal();
      rxRingFull.Add(1);
      readerWaiting.store(true, std::memory_order_seq_cst);
      if (ref.load(std::memory_order_seq_cst) != 0 && !L->stopping.load(std::memory_order_seq_cst)) {
        if (poll(&pfd[1], 1, -1) > 0) DrainEvent(readerWake);
      }
      readerWaiting.store(false, std::memory_order_relaxed);
      continue;
    }
    ssize_t r = read(fd, ring + slot * L->slotSize, L->slotSize);
    if (r > 0) {
      pollError = false;
      rxLen[slot] = static_cast<uint32_t>(r);
      rxStamp[slot] = NowNs();
      rxFifo[slot] = slot;  // read in slot order
      ref.store(1, std::memory_order_relaxed);
      rxHead.store(++head, std::memory_order_release);
      rxPackets.Add(1);
      rxBytes.Add(static_cast<uint64_t>(r));
      if (++unsignaled == kWakeEvery) signal();
      continue;
    }
    int err = r == 0 ? EIO : errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      signal();
      if (pollError) {  // POLLERR with nothing to read: the device failed
        L->Fail(this, kOpPoll, EIO);
        break;
      }
      if (poll(pfd, 2, -1) < 0) {
        if (errno == EINTR) continue;
        L->Fail(this, kOpPoll, errno);
        break;
      }
      if (pfd[1].revents & POLLIN) DrainEvent(readerWake);
      // POLLERR once the interface is deleted: the next read says why (EBADFD).
      pollError = (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
      continue;
    }
    // A device error stops the loop; anything else (e.g. EFAULT or EINVAL for
    // a packet larger than a slot, which the kernel drops) is counted.
    rxErrors.Add(1);
    if (IsDeviceErrno(err)) {
      L->Fail(this, kOpRead, err);
      break;
    }
  }
}

// Writes the tx ring in order. A write that meets EAGAIN/ENOBUFS stays at the
// head of the ring (counted once in txQueued) until the device takes it.
void Queue::WriterMain() {
  Loop* L = loop;
  uint32_t tail = 0;
  bool waited = false;
  struct pollfd pfd[2] = {{fd, POLLOUT, 0}, {writerWake, POLLIN, 0}};
  while (!L->stopping.load(std::memory_order_acquire) && !L->Failed()) {
    if (tail == txHead.load(std::memory_order_acquire)) {
      writerWaiting.store(true, std::memory_order_seq_cst);
      if (tail == txHead.load(std::memory_order_seq_cst) && !L->stopping.load(std::memory_order_seq_cst)) {
        if (poll(&pfd[1], 1, -1) > 0) DrainEvent(writerWake);
      }
      writerWaiting.store(false, std::memory_order_relaxed);
      continue;
    }
    const TxEntry e = tx[tail & txMask];
    ssize_t w = write(fd, L->arena + e.off, e.len);
    if (w < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
        if (!waited) txQueued.Add(1);
        waited = true;
        if (poll(pfd, 2, err == ENOBUFS ? kNoBufsWaitMs : -1) > 0 && (pfd[1].revents & POLLIN)) {
          DrainEvent(writerWake);
        }
        continue;
      }
      txErrors.Add(1);  // e.g. EINVAL: malformed packet or vnet header
      if (IsDeviceErrno(err)) {
        L->Fail(this, kOpWrite, err);
        break;
      }
    } else {
      txPackets.Add(1);
      txBytes.Add(e.len);
    }
    waited = false;
    L->Release(e);
    txTail.store(++tail, std::memory_order_release);
  }
}

Loop* FindLoop(Napi::Env env, const Napi::Value& v) {
  uint32_t id;
  if (!GetCount(v, UINT32_MAX, &id)) return nullptr;
  AddonData* addon = env.GetInstanceData<AddonData>();
  auto it = addon->loops.find(id);
  return it == addon->loops.end() ? nullptr : it->second;
}

// Applies TUNSETOFFLOAD; returns 0 or errno.
int SetOffload(int fd, unsigned mask) {
  return ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(mask)) == 0 ? 0 : errno;
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

// open(name, vnetHdr, offloadMask, queues, txQueueLen) -> { fds, name, vnetHdr, offloads, offloadError }
// txQueueLen: packets the kernel queues for us to read (the device's
// tx_queue_len, 500 by default for TUN); 0 keeps what the device has.
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t mask, nq, txQueueLen;
  if (info.Length() < 5 || !info[0].IsString() || !info[1].IsBoolean() ||
      !GetCount(info[3], kMaxQueues, &nq) || nq == 0 || !GetCount(info[4], 1u << 20, &txQueueLen)) {
    ThrowType(env, "open(name: string, vnetHdr: boolean, offloadMask: number, queues: 1..64, txQueueLen: 0..1048576)");
    return env.Undefined();
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  bool vnetHdr = info[1].As<Napi::Boolean>().Value();
  if (name.size() >= IFNAMSIZ) {
    ThrowType(env, "open: device name longer than 15 bytes");
    return env.Undefined();
  }
  if (!GetCount(info[2], kKnownOffloads, &mask) || (mask & ~kKnownOffloads) != 0 ||
      (mask != 0 && (!vnetHdr || !(mask & TUN_F_CSUM)))) {
    // The kernel accepts TSO/USO only together with CSUM, and GSO packets can
    // only be described with a vnet header.
    ThrowType(env, "open: offloadMask must be 0, or TUN_F_CSUM plus TSO/USO flags with vnetHdr");
    return env.Undefined();
  }

  std::vector<int> fds;
  std::string actualName = name;
  for (uint32_t i = 0; i < nq; ++i) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      CloseAll(fds);
      ThrowErrno(env, "open /dev/net/tun for " + name, err);
      return env.Undefined();
    }
    fds.push_back(fd);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    // Every queue attaches by the name the first one got (the kernel names the
    // device when `name` is empty or a pattern).
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0) | (nq > 1 ? IFF_MULTI_QUEUE : 0);
    memcpy(ifr.ifr_name, actualName.data(), actualName.size());
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
      int err = errno;
      CloseAll(fds);
      ThrowErrno(env, "TUNSETIFF " + actualName + (nq > 1 ? " (queue " + std::to_string(i) + ")" : ""), err);
      return env.Undefined();
    }
    actualName.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  }

  if (txQueueLen > 0) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, actualName.data(), actualName.size());
    ifr.ifr_qlen = static_cast<int>(txQueueLen);
    int err = sock < 0 || ioctl(sock, SIOCSIFTXQLEN, &ifr) < 0 ? errno : 0;
    if (sock >= 0) close(sock);
    if (err != 0) {
      CloseAll(fds);
      ThrowErrno(env, "SIOCSIFTXQLEN " + actualName, err);
      return env.Undefined();
    }
  }

  int hdrLen = kVnetHdrLen;  // the size is per device: pin it when attaching
  if (vnetHdr && ioctl(fds[0], TUNSETVNETHDRSZ, &hdrLen) < 0) {
    int err = errno;
    CloseAll(fds);
    ThrowErrno(env, "TUNSETVNETHDRSZ " + actualName, err);
    return env.Undefined();
  }

  unsigned offloads = mask;
  Napi::Value offloadError = env.Null();
  int err = SetOffload(fds[0], offloads);
  if (err == EINVAL && (offloads & kUsoFlags)) {
    offloads &= ~kUsoFlags;  // USO4/USO6 need Linux >= 6.2
    err = SetOffload(fds[0], offloads);
  }
  if (err != 0 && offloads != 0) {
    char hex[16];
    snprintf(hex, sizeof(hex), "0x%x", offloads);
    offloadError = Napi::String::New(
        env, "TUNSETOFFLOAD(" + std::string(hex) + ") " + actualName + ": " + strerror(err));
    offloads = 0;
    err = SetOffload(fds[0], 0);  // an attached device may keep earlier offloads
  }
  if (err != 0) {
    CloseAll(fds);
    ThrowErrno(env, "TUNSETOFFLOAD(0) " + actualName, err);
    return env.Undefined();
  }

  Napi::Array fdArray = Napi::Array::New(env, fds.size());
  for (uint32_t i = 0; i < fds.size(); ++i) fdArray.Set(i, Napi::Number::New(env, fds[i]));
  Napi::Object result = Napi::Object::New(env);
  result.Set("fds", fdArray);
  result.Set("name", Napi::String::New(env, actualName));
  result.Set("vnetHdr", Napi::Boolean::New(env, vnetHdr));
  result.Set("offloads", Napi::Number::New(env, offloads));
  result.Set("offloadError", offloadError);
  return result;
}

template <typename T>
bool GetTyped(const Napi::Object& o, const char* key, napi_typedarray_type type, T* out) {
  Napi::Value v = o.Get(key);
  if (!IsTypedArrayOf(v, type)) return false;
  *out = v.As<T>();
  return true;
}

// start({ io: "uring" | "threads", devices: [[fd, ...], ...], arena, slotSize,
//         ringSlots, rxOffs, rxLens, rxDevs, txList, txDevs, onBatch, onEvent })
//   -> handle
// Device i's queues own consecutive rings of ringSlots slots of slotSize bytes
// at the start of the arena, in order. "uring" needs Linux 6.7 (multishot
// read) and ringSlots a power of two up to 32768; when the kernel refuses it,
// start() throws with code set (ENOSYS, EPERM, EINVAL...) and nothing started.
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage =
      "start({ io: 'uring' | 'threads', devices: number[][], arena: Uint8Array, slotSize, ringSlots, rxOffs: Uint32Array, "
      "rxLens: Uint32Array, rxDevs: Uint8Array, txList: Uint32Array, txDevs: Uint8Array, busyPollUs: number, "
      "onBatch: function, onEvent: function })";
  if (info.Length() < 1 || !info[0].IsObject()) {
    ThrowType(env, usage);
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Uint8Array arena, rxDevs, txDevs;
  Napi::Uint32Array rxOffs, rxLens, txList;
  uint32_t slotSize, ringSlots, busyPollUs;
  Napi::Value devs = o.Get("devices");
  Napi::Value io = o.Get("io");
  std::string ioName = io.IsString() ? io.As<Napi::String>().Utf8Value() : "";
  if ((ioName != "uring" && ioName != "threads") || !devs.IsArray() || !GetTyped(o, "arena", napi_uint8_array, &arena) ||
      !GetTyped(o, "rxOffs", napi_uint32_array, &rxOffs) || !GetTyped(o, "rxLens", napi_uint32_array, &rxLens) ||
      !GetTyped(o, "rxDevs", napi_uint8_array, &rxDevs) || !GetTyped(o, "txList", napi_uint32_array, &txList) ||
      !GetTyped(o, "txDevs", napi_uint8_array, &txDevs) || !GetCount(o.Get("slotSize"), UINT32_MAX, &slotSize) ||
      !GetCount(o.Get("ringSlots"), UINT32_MAX, &ringSlots) || !GetCount(o.Get("busyPollUs"), 1000000, &busyPollUs) ||
      !o.Get("onBatch").IsFunction() ||
      !o.Get("onEvent").IsFunction()) {
    ThrowType(env, usage);
    return env.Undefined();
  }
  AddonData* addon = env.GetInstanceData<AddonData>();
  Napi::Array devArray = devs.As<Napi::Array>();
  std::vector<std::vector<int>> devFds;
  uint32_t nq = 0;
  for (uint32_t d = 0; d < devArray.Length(); ++d) {
    Napi::Value qs = devArray.Get(d);
    if (!qs.IsArray() || qs.As<Napi::Array>().Length() == 0) {
      ThrowType(env, "start: devices[" + std::to_string(d) + "] must list the device's queue fds");
      return env.Undefined();
    }
    devFds.emplace_back();
    for (uint32_t i = 0; i < qs.As<Napi::Array>().Length(); ++i) {
      uint32_t fd;
      if (!GetCount(qs.As<Napi::Array>().Get(i), INT32_MAX, &fd)) {
        ThrowType(env, "start: a queue fd is not a non-negative integer");
        return env.Undefined();
      }
      for (const auto& entry : addon->loops) {
        for (auto& q : entry.second->queues) {
          if (q->fd == static_cast<int>(fd)) {
            ThrowType(env, "start: fd " + std::to_string(fd) + " already belongs to a running loop");
            return env.Undefined();
          }
        }
      }
      devFds.back().push_back(static_cast<int>(fd));
      ++nq;
    }
  }
  uint64_t ringsEnd = uint64_t{nq} * ringSlots * slotSize;
  uint32_t batch = static_cast<uint32_t>(rxOffs.ElementLength());
  if (devFds.empty() || devFds.size() > kMaxDevices || nq > kMaxQueues || slotSize == 0 || ringSlots == 0 ||
      ringsEnd > arena.ByteLength() || arena.ByteLength() > UINT32_MAX || batch == 0 ||
      rxLens.ElementLength() < batch || rxDevs.ElementLength() < batch || txList.ElementLength() < 2 ||
      txDevs.ElementLength() < txList.ElementLength() / 2) {
    Napi::RangeError::New(env,
                          "start: need 1..255 devices and at most 64 queues, queues * ringSlots * slotSize "
                          "<= arena.byteLength < 4 GiB, rxLens/rxDevs as long as rxOffs, txDevs as long as "
                          "txList / 2")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Mode mode = ioName == "uring" ? Mode::kUring : Mode::kThreads;
  if (mode == Mode::kUring && (ringSlots > 32768 || (ringSlots & (ringSlots - 1)) != 0)) {
    Napi::RangeError::New(env, "start: io 'uring' needs ringSlots a power of two up to 32768")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uv_loop_t* uvLoop;
  if (napi_get_uv_event_loop(env, &uvLoop) != napi_ok) {
    Napi::Error::New(env, "start: no libuv loop").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  auto L = std::make_unique<Loop>(env, addon, mode);
  L->arena = arena.Data();
  L->arenaLen = arena.ByteLength();
  L->slotSize = slotSize;
  L->ringSlots = ringSlots;
  L->busyPollNs = mode == Mode::kUring ? static_cast<uint64_t>(busyPollUs) * 1000 : 0;
  L->ringsEnd = static_cast<size_t>(ringsEnd);
  L->rxOffs = rxOffs.Data();
  L->rxLens = rxLens.Data();
  L->rxDevs = rxDevs.Data();
  L->batchCapacity = batch;
  L->txList = txList.Data();
  L->txDevs = txDevs.Data();
  L->txCapacity = static_cast<uint32_t>(txList.ElementLength() / 2);
  uint32_t totalSlots = nq * ringSlots;
  L->refs.reset(new std::atomic<uint32_t>[totalSlots]);
  for (uint32_t i = 0; i < totalSlots; ++i) L->refs[i].store(0, std::memory_order_relaxed);
  L->slotBatch.assign(totalSlots, 0);
  L->batchSlots.assign(batch, 0);
  // Room for every slot once plus a batch of entries from outside the rings
  // (a slot is listed at most once per batch by a sane caller; more is
  // counted as a drop, not lost silently).
  uint32_t txRing = NextPow2(totalSlots + L->txCapacity);
  L->devices.resize(devFds.size());
  for (uint32_t d = 0; d < devFds.size(); ++d) {
    for (uint32_t i = 0; i < devFds[d].size(); ++i) {
      auto q = std::make_unique<Queue>();
      q->loop = L.get();
      q->fd = devFds[d][i];
      q->dev = d;
      q->index = i;
      q->firstSlot = static_cast<uint32_t>(L->queues.size()) * ringSlots;
      q->ring = L->arena + size_t{q->firstSlot} * slotSize;
      q->rxFifo.assign(ringSlots, 0);
      q->rxLen.assign(ringSlots, 0);
      q->rxStamp.assign(ringSlots, 0);
      Queue* qp = q.get();
      L->devices[d].push_back(qp);
      L->queues.push_back(std::move(q));
      if (mode == Mode::kUring) continue;
      qp->tx.resize(txRing);
      qp->txMask = txRing - 1;
      qp->readerWake = eventfd(0, EFD_CLOEXEC);
      qp->writerWake = eventfd(0, EFD_CLOEXEC);
      if (qp->readerWake < 0 || qp->writerWake < 0) {
        int e = errno;
        for (auto& done : L->queues) {
          if (done->readerWake >= 0) close(done->readerWake);
          if (done->writerWake >= 0) close(done->writerWake);
        }
        ThrowErrno(env, "eventfd", e);
        return env.Undefined();
      }
    }
  }
  if (mode == Mode::kUring) {
    const char* what = "";
    int err = L->StartRing(uvLoop, &what);
    if (err != 0) {
      if (L->ringEvent >= 0) close(L->ringEvent);
      ThrowErrno(env, std::string("start: io 'uring': ") + what, err);
      return env.Undefined();
    }
    L->handlesOpen = 1;  // the poll handle
  }
  int rc = uv_async_init(uvLoop, &L->async, Loop::OnAsync);
  if (rc < 0) {
    for (auto& q : L->queues) {
      if (q->readerWake >= 0) close(q->readerWake);
      if (q->writerWake >= 0) close(q->writerWake);
    }
    if (mode == Mode::kUring) {  // the poll handle is registered: close it through libuv
      L->ring->CancelAll();
      Loop* l = L.release();
      uv_close(reinterpret_cast<uv_handle_t*>(&l->ringPoll), Loop::OnClosed);  // closes ringEvent
    }
    ThrowErrno(env, "uv_async_init", -rc);
    return env.Undefined();
  }
  L->asyncReady = true;
  L->handlesOpen++;
  L->arenaRef = Napi::Persistent(arena);
  L->rxOffsRef = Napi::Persistent(rxOffs);
  L->rxLensRef = Napi::Persistent(rxLens);
  L->rxDevsRef = Napi::Persistent(rxDevs);
  L->txListRef = Napi::Persistent(txList);
  L->txDevsRef = Napi::Persistent(txDevs);
  L->onBatch = Napi::Persistent(o.Get("onBatch").As<Napi::Function>());
  L->onEvent = Napi::Persistent(o.Get("onEvent").As<Napi::Function>());
  L->asyncContext = std::make_unique<Napi::AsyncContext>(env, "vpnmasq:tun");
  L->id = addon->nextId++;
  napi_add_async_cleanup_hook(env, Loop::OnEnvCleanup, L.get(), &L->cleanupHook);
  Loop* loop = L.release();  // owned by the uv handle from here on
  addon->loops.emplace(loop->id, loop);
  if (mode == Mode::kThreads) {
    loop->StartThreads();
  } else {
    rc = uv_poll_start(&loop->ringPoll, UV_READABLE, Loop::OnRingEvent);
    if (rc < 0) {
      loop->Close();
      ThrowErrno(env, "uv_poll_start", -rc);
      return env.Undefined();
    }
  }
  return Napi::Number::New(env, loop->id);
}

// stats(handle, out: Float64Array): fills out[0, STATS_COUNT) with the counters.
Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Loop* L = FindLoop(env, info[0]);
  if (L == nullptr || info.Length() < 2 || !IsTypedArrayOf(info[1], napi_float64_array) ||
      info[1].As<Napi::Float64Array>().ElementLength() < STATS_COUNT) {
    ThrowType(env, "stats(handle of a running loop, out: Float64Array of >= 12)");
    return env.Undefined();
  }
  L->FillStats(info[1].As<Napi::Float64Array>().Data());
  return env.Undefined();
}

// stop(handle): stops and joins the loop's threads; unknown or already stopped handles are ignored.
Napi::Value Stop(const Napi::CallbackInfo& info) {
  Loop* L = FindLoop(info.Env(), info[0]);
  if (L != nullptr) L->Close();
  return info.Env().Undefined();
}

// close(fd): closes a device fd that no running loop uses.
Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fd;
  if (!GetCount(info[0], INT32_MAX, &fd)) {
    ThrowType(env, "close(fd: number)");
    return env.Undefined();
  }
  for (const auto& entry : env.GetInstanceData<AddonData>()->loops) {
    for (auto& q : entry.second->queues) {
      if (q->fd == static_cast<int>(fd)) {
        ThrowType(env, "close: fd belongs to a running loop; stop() it first");
        return env.Undefined();
      }
    }
  }
  if (close(static_cast<int>(fd)) < 0 && errno != EINTR) {  // fd is gone after EINTR
    ThrowErrno(env, "close fd " + std::to_string(fd), errno);
  }
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("start", Napi::Function::New(env, Start, "start"));
  exports.Set("stats", Napi::Function::New(env, Stats, "stats"));
  exports.Set("stop", Napi::Function::New(env, Stop, "stop"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("notify", Napi::Function::New(env, Notify, "notify"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vpnmasq_tun, Init)
