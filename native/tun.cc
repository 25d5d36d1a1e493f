// vpnmasq_tun: TUN device I/O for the NAT data path (design: docs/datapath.md).
//
// open() creates or attaches a TUN device, one fd per queue (IFF_MULTI_QUEUE
// when more than one), with a virtio_net_hdr on every packet and kernel
// offloads. start() runs one packet loop over the queues of one or more
// devices. Per queue, a reader thread reads packets into that queue's ring of
// slots in a JS-owned arena and a writer thread writes what JS listed, so no
// system call is made per packet on the JS thread. The JS thread is woken
// through a uv_async_t, takes every packet read so far as one batch (arena
// offset, length and device tag per packet), translates in place with one
// call into JS, and lists what to write (offset, length, device).
//
// Threads share only the arena, single-producer/single-consumer rings and a
// reference count per slot: a slot is refilled once JS is done with it and
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
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
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
  STATS_COUNT = 12,
};

// Batches delivered per wakeup before yielding to the event loop.
constexpr int kMaxRoundsPerWakeup = 8;
// Bounds on a loop's shape.
constexpr uint32_t kMaxQueues = 64;
constexpr uint32_t kMaxDevices = 255;
// How long a writer waits for room after ENOBUFS, which raises no POLLOUT.
constexpr int kNoBufsWaitMs = 1;

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

  // Receive ring: the reader produces (rxHead), the JS thread consumes.
  std::vector<uint32_t> rxLen;  // bytes read into each ring slot
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

  void ReaderMain();
  void WriterMain();
};

struct AddonData {
  std::unordered_map<uint32_t, Loop*> loops;
  uint32_t nextId = 1;
};

// The devices' queues, the JS memory they work on, and the JS-thread side of
// the loop. Lifetime: created by start(); Close() (from stop() or env
// teardown) stops and joins the threads; OnClosed, after libuv releases the
// async handle, frees it.
struct Loop {
  Napi::Env env;
  AddonData* addon;
  uint32_t id = 0;
  uv_async_t async;
  bool closing = false;
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
  // plus 1 per queued write from it; the reader refills it at 0.
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

  Loop(Napi::Env e, AddonData* a) : env(e), addon(a) { async.data = this; }

  Queue* OwnerOf(uint32_t slot) { return queues[slot / ringSlots].get(); }

  // Any thread: the device failed; the JS thread reports it and stops delivering.
  void Fail(Queue* q, uint32_t op, int err) {
    uint32_t expected = 0;
    uint32_t code = static_cast<uint32_t>(err) << 16 | q->dev << 8 | op;
    if (failure.compare_exchange_strong(expected, code, std::memory_order_acq_rel)) uv_async_send(&async);
  }
  bool Failed() const { return failure.load(std::memory_order_acquire) != 0; }

  // Any thread: drops one reference; the last one hands the slot back to its reader.
  void Unref(uint32_t slot) {
    if (refs[slot].fetch_sub(1, std::memory_order_seq_cst) != 1) return;
    Queue* q = OwnerOf(slot);
    if (q->readerWaiting.load(std::memory_order_seq_cst)) Wake(q->readerWake);
  }

  // Writer threads: a write from `e` completed or failed.
  void Release(const TxEntry& e) {
    if (e.slot >= 0) {
      Unref(static_cast<uint32_t>(e.slot));
    } else if (foreignPending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      uv_async_send(&async);  // a batch may be waiting for it
    }
  }

  // ---- JS thread ----------------------------------------------------------

  // Takes what the readers published, round robin across queues, into
  // rxOffs/rxLens/rxDevs; returns the batch size.
  uint32_t Gather() {
    uint32_t count = 0;
    uint32_t n = static_cast<uint32_t>(queues.size());
    ++batchNo;
    for (uint32_t k = 0; k < n && count < batchCapacity; ++k) {
      Queue* q = queues[(nextQueue + k) % n].get();
      uint32_t avail = q->rxHead.load(std::memory_order_acquire) - q->rxTail;
      for (; avail > 0 && count < batchCapacity; --avail, ++q->rxTail, ++count) {
        uint32_t slot = q->rxTail % ringSlots;
        uint32_t g = q->firstSlot + slot;
        rxOffs[count] = static_cast<uint32_t>(g * slotSize);
        rxLens[count] = q->rxLen[slot];
        rxDevs[count] = static_cast<uint8_t>(q->dev);
        batchSlots[count] = g;
        slotBatch[g] = batchNo;
      }
    }
    nextQueue = (nextQueue + 1) % n;
    return count;
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
      if (q->txHeadLocal - q->txTail.load(std::memory_order_acquire) > q->txMask) {
        txDrops.Add(1);  // the writer is that far behind: counted, never silent
        continue;
      }
      q->tx[q->txHeadLocal & q->txMask] = TxEntry{off, len, slot};
      if (slot >= 0) {
        refs[slot].fetch_add(1, std::memory_order_relaxed);
      } else {
        foreignPending.fetch_add(1, std::memory_order_relaxed);
      }
      ++q->txHeadLocal;
    }
    for (auto& q : queues) {
      if (q->txHeadLocal == q->txHead.load(std::memory_order_relaxed)) continue;
      q->txHead.store(q->txHeadLocal, std::memory_order_seq_cst);
      if (q->writerWaiting.load(std::memory_order_seq_cst)) Wake(q->writerWake);
    }
  }

  void EmitFailure() {
    uint32_t code = failure.load(std::memory_order_acquire);
    static const char* const kOps[] = {"poll", "read", "write"};
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

  void Deliver() {
    for (int round = 0; round < kMaxRoundsPerWakeup && !closing && !Failed(); ++round) {
      if (foreignPending.load(std::memory_order_acquire) != 0) return;  // its writer wakes us
      uint32_t count = Gather();
      if (count == 0) return;
      rxBatches.Add(1);
      int64_t n = CallOnBatch(count);
      if (closing) return;  // onBatch called stop(): the threads are gone
      if (n > 0) Transmit(static_cast<uint32_t>(n));
      for (uint32_t i = 0; i < count; ++i) Unref(batchSlots[i]);
    }
    // More may be waiting: come back after the event loop had its turn.
    for (auto& q : queues) {
      if (q->rxHead.load(std::memory_order_acquire) != q->rxTail) {
        uv_async_send(&async);
        break;
      }
    }
  }

  static void OnAsync(uv_async_t* handle) {
    Loop* self = static_cast<Loop*>(handle->data);
    if (self->closing) return;
    Napi::HandleScope handleScope(self->env);
    // One callback scope per wakeup: microtasks and nextTicks queued by onBatch
    // run when it closes, as after any other libuv-driven callback. The
    // resource argument is ignored by Node (the async context carries it).
    napi_callback_scope scope;
    if (napi_open_callback_scope(self->env, nullptr, *self->asyncContext, &scope) != napi_ok) {
      self->errCallback.Add(1);
      return;
    }
    if (self->Failed()) {
      if (!self->reported) {
        self->reported = true;
        self->EmitFailure();
      }
    } else {
      self->Deliver();
    }
    napi_close_callback_scope(self->env, scope);
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
      s[TX_QUEUE_LEN] += q->txHeadLocal - q->txTail.load(std::memory_order_relaxed);
    }
    s[RX_BATCHES] = rxBatches.Get();
    s[ERR_CALLBACK] = errCallback.Get();
    s[TX_QUEUE_DROPS] = txDrops.Get();
    s[TX_ERRORS] += txInvalid.Get();
    for (uint32_t i = 0; i < STATS_COUNT; ++i) out[i] = static_cast<double>(s[i]);
  }

  void StartThreads() {
    for (auto& q : queues) {
      q->reader = std::thread(&Queue::ReaderMain, q.get());
      q->writer = std::thread(&Queue::WriterMain, q.get());
    }
  }

  // Stops and joins the threads (they only ever block on their eventfds and
  // non-blocking fds), then releases the async handle.
  void Close() {
    if (closing) return;
    closing = true;
    addon->loops.erase(id);
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
    if (self->cleanupHook != nullptr) napi_remove_async_cleanup_hook(self->cleanupHook);
    for (auto& q : self->queues) {
      if (q->readerWake >= 0) close(q->readerWake);
      if (q->writerWake >= 0) close(q->writerWake);
    }
    delete self;
  }

  // Environment teardown (worker exit): stop the threads before the loop closes.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
    static_cast<Loop*>(arg)->Close();
  }
};

enum Op : uint32_t { kOpPoll = 0, kOpRead = 1, kOpWrite = 2 };

// Reads into the ring in order while slots are free, publishing each packet
// and waking the JS thread (uv_async_send coalesces: one wakeup per batch).
void Queue::ReaderMain() {
  Loop* L = loop;
  uint32_t head = 0;
  bool pollError = false;
  struct pollfd pfd[2] = {{fd, POLLIN, 0}, {readerWake, POLLIN, 0}};
  while (!L->stopping.load(std::memory_order_acquire) && !L->Failed()) {
    uint32_t slot = head % L->ringSlots;
    std::atomic<uint32_t>& ref = L->refs[firstSlot + slot];
    if (ref.load(std::memory_order_acquire) != 0) {
      // Backpressure: JS or a writer still holds the next slot.
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
      ref.store(1, std::memory_order_relaxed);
      rxHead.store(++head, std::memory_order_release);
      rxPackets.Add(1);
      rxBytes.Add(static_cast<uint64_t>(r));
      uv_async_send(&L->async);
      continue;
    }
    int err = r == 0 ? EIO : errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
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

// open(name, vnetHdr, offloadMask, queues) -> { fds, name, vnetHdr, offloads, offloadError }
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t mask, nq;
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsBoolean() ||
      !GetCount(info[3], kMaxQueues, &nq) || nq == 0) {
    ThrowType(env, "open(name: string, vnetHdr: boolean, offloadMask: number, queues: 1..64)");
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

uint32_t NextPow2(uint32_t v) {
  uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// start({ devices: [[fd, ...], ...], arena, slotSize, ringSlots, rxOffs, rxLens,
//         rxDevs, txList, txDevs, onBatch, onEvent }) -> handle
// Device i's queues own consecutive rings of ringSlots slots of slotSize bytes
// at the start of the arena, in order.
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage =
      "start({ devices: number[][], arena: Uint8Array, slotSize, ringSlots, rxOffs: Uint32Array, "
      "rxLens: Uint32Array, rxDevs: Uint8Array, txList: Uint32Array, txDevs: Uint8Array, "
      "onBatch: function, onEvent: function })";
  if (info.Length() < 1 || !info[0].IsObject()) {
    ThrowType(env, usage);
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Uint8Array arena, rxDevs, txDevs;
  Napi::Uint32Array rxOffs, rxLens, txList;
  uint32_t slotSize, ringSlots;
  Napi::Value devs = o.Get("devices");
  if (!devs.IsArray() || !GetTyped(o, "arena", napi_uint8_array, &arena) ||
      !GetTyped(o, "rxOffs", napi_uint32_array, &rxOffs) || !GetTyped(o, "rxLens", napi_uint32_array, &rxLens) ||
      !GetTyped(o, "rxDevs", napi_uint8_array, &rxDevs) || !GetTyped(o, "txList", napi_uint32_array, &txList) ||
      !GetTyped(o, "txDevs", napi_uint8_array, &txDevs) || !GetCount(o.Get("slotSize"), UINT32_MAX, &slotSize) ||
      !GetCount(o.Get("ringSlots"), UINT32_MAX, &ringSlots) || !o.Get("onBatch").IsFunction() ||
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
  uv_loop_t* uvLoop;
  if (napi_get_uv_event_loop(env, &uvLoop) != napi_ok) {
    Napi::Error::New(env, "start: no libuv loop").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  auto L = std::make_unique<Loop>(env, addon);
  L->arena = arena.Data();
  L->arenaLen = arena.ByteLength();
  L->slotSize = slotSize;
  L->ringSlots = ringSlots;
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
      q->rxLen.assign(ringSlots, 0);
      q->tx.resize(txRing);
      q->txMask = txRing - 1;
      q->readerWake = eventfd(0, EFD_CLOEXEC);
      q->writerWake = eventfd(0, EFD_CLOEXEC);
      if (q->readerWake < 0 || q->writerWake < 0) {
        int e = errno;
        for (auto& done : L->queues) {
          close(done->readerWake);
          close(done->writerWake);
        }
        if (q->readerWake >= 0) close(q->readerWake);
        if (q->writerWake >= 0) close(q->writerWake);
        ThrowErrno(env, "eventfd", e);
        return env.Undefined();
      }
      L->devices[d].push_back(q.get());
      L->queues.push_back(std::move(q));
    }
  }
  int rc = uv_async_init(uvLoop, &L->async, Loop::OnAsync);
  if (rc < 0) {
    for (auto& q : L->queues) {
      close(q->readerWake);
      close(q->writerWake);
    }
    ThrowErrno(env, "uv_async_init", -rc);
    return env.Undefined();
  }
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
  loop->StartThreads();
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
