// vpnmasq_tun: TUN device I/O for the NAT data path.
//
// open() creates/attaches a TUN device with a virtio_net_hdr prefix and kernel
// offloads; start() drives the non-blocking fd from a uv_poll_t on Node's loop:
// each wakeup reads a batch of packets into a JS-registered arena, calls JS once
// with the count, and writes back the packets JS lists in txList. A device that
// fails (POLLERR, or a read/write error such as EBADFD once it was deleted) stops
// the loop and is reported to onEvent; so is an exception that onBatch let escape.
// See include/uapi/linux/if_tun.h and include/uapi/linux/virtio_net.h.

#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
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

// Indexes into the stats Float64Array (mirrored in src/tun/native.ts).
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
  STATS_COUNT = 11,
};

// read()/write() errors that mean the device itself is gone or broken, not the
// packet: EBADFD once the interface was deleted (tun_chr_read_iter/write_iter
// with no tun attached), EBADF/ENODEV/ENXIO/EIO for a dead fd or device.
bool IsDeviceErrno(int err) {
  return err == EBADFD || err == EBADF || err == ENODEV || err == ENXIO || err == EIO;
}

// Read/onBatch/write rounds per poll wakeup before yielding to the loop.
constexpr int kMaxRoundsPerWakeup = 8;
// Bounds of the per-device queue of packets the TUN would not take yet.
constexpr size_t kMaxQueuedPackets = 4096;
constexpr size_t kMaxQueuedBytes = 32u << 20;

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

void ThrowType(Napi::Env env, const char* msg) {
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

struct Poller;

// Per-environment state: the handles start() returned and not yet stopped.
struct AddonData {
  std::unordered_map<uint32_t, Poller*> pollers;
  uint32_t nextId = 1;
};

// One started device: a uv_poll_t on its fd plus the JS memory it works on.
// Lifetime: created by start(); Close() (from stop() or env teardown) stops
// polling; OnClosed, after libuv releases the handle, frees it.
struct Poller {
  enum class WriteResult { kSent, kRetry, kFailed };

  Napi::Env env;
  AddonData* addon;
  uint32_t id = 0;
  int fd;
  uv_poll_t poll;
  int events = 0;
  bool closing = false;
  napi_async_cleanup_hook_handle cleanupHook = nullptr;

  // References keep the typed arrays alive; the raw pointers are captured once.
  Napi::Reference<Napi::Uint8Array> arenaRef;
  Napi::Reference<Napi::Uint32Array> rxLensRef;
  Napi::Reference<Napi::Uint32Array> txListRef;
  Napi::Reference<Napi::Float64Array> statsRef;
  Napi::FunctionReference onBatch;
  Napi::FunctionReference onEvent;
  std::unique_ptr<Napi::AsyncContext> asyncContext;
  // errno of the device failure that stopped the loop (0 while healthy), and
  // the operation that met it.
  int deviceErrno = 0;
  const char* deviceOp = nullptr;
  bool reported = false;

  uint8_t* arena = nullptr;
  size_t arenaLen = 0;
  size_t slotSize = 0;
  uint32_t rxSlots = 0;
  uint32_t* rxLens = nullptr;
  uint32_t* txList = nullptr;
  uint32_t txCapacity = 0;  // entries, i.e. txList.length / 2
  double* stats = nullptr;

  std::deque<std::vector<uint8_t>> queue;
  size_t queueBytes = 0;

  Poller(Napi::Env e, AddonData* a, int f) : env(e), addon(a), fd(f) {
    poll.data = this;
  }

  void SetEvents(int wanted) {
    if (closing || deviceErrno != 0 || wanted == events) return;
    if (uv_poll_start(&poll, wanted, OnPoll) == 0) events = wanted;
  }

  WriteResult WriteOne(const uint8_t* p, size_t len) {
    for (;;) {
      if (write(fd, p, len) >= 0) {
        stats[TX_PACKETS] += 1;
        stats[TX_BYTES] += len;
        return WriteResult::kSent;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
        return WriteResult::kRetry;
      }
      stats[TX_ERRORS] += 1;  // e.g. EINVAL: malformed packet or vnet header
      if (IsDeviceErrno(errno)) Fail("write", errno);
      return WriteResult::kFailed;
    }
  }

  void Enqueue(const uint8_t* p, size_t len) {
    if (queue.size() >= kMaxQueuedPackets || queueBytes + len > kMaxQueuedBytes) {
      stats[TX_QUEUE_DROPS] += 1;
      return;
    }
    queue.emplace_back(p, p + len);
    queueBytes += len;
    stats[TX_QUEUED] += 1;
    stats[TX_QUEUE_LEN] = queue.size();
  }

  // Writes txList entries [0, n). Packets queue behind a non-empty queue so the
  // TUN sees them in order.
  void Transmit(uint32_t n) {
    for (uint32_t k = 0; k < n; ++k) {
      size_t off = txList[2 * k];
      size_t len = txList[2 * k + 1];
      if (len == 0 || off > arenaLen || len > arenaLen - off) {
        stats[TX_ERRORS] += 1;
        continue;
      }
      const uint8_t* p = arena + off;
      if (deviceErrno != 0) {
        stats[TX_ERRORS] += 1;
        continue;
      }
      if (!queue.empty() || WriteOne(p, len) == WriteResult::kRetry) Enqueue(p, len);
    }
    if (!queue.empty()) SetEvents(UV_READABLE | UV_WRITABLE);
  }

  void DrainQueue() {
    while (!queue.empty() && deviceErrno == 0) {
      std::vector<uint8_t>& pkt = queue.front();
      if (WriteOne(pkt.data(), pkt.size()) == WriteResult::kRetry) break;
      queueBytes -= pkt.size();
      queue.pop_front();
    }
    stats[TX_QUEUE_LEN] = queue.size();
    if (queue.empty()) SetEvents(UV_READABLE);
  }

  // Reads up to rxSlots packets into consecutive slots. *drained is set when
  // read() reported EAGAIN, i.e. the device queue is empty.
  uint32_t ReadBatch(bool* drained) {
    uint32_t count = 0;
    *drained = false;
    for (uint32_t tries = 0; count < rxSlots && tries < rxSlots; ++tries) {
      ssize_t r = read(fd, arena + count * slotSize, slotSize);
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          *drained = true;
          break;
        }
        // EINTR retries; a device error stops the loop; anything else (e.g.
        // EFAULT: packet larger than a slot, already dropped by the kernel) is
        // counted and the next packet read.
        if (errno == EINTR) continue;
        stats[RX_ERRORS] += 1;
        if (IsDeviceErrno(errno)) {
          Fail("read", errno);
          break;
        }
        continue;
      }
      rxLens[count++] = static_cast<uint32_t>(r);
      stats[RX_PACKETS] += 1;
      stats[RX_BYTES] += r;
    }
    return count;
  }

  // Calls onBatch(count); returns the number of tx entries, or -1 when the
  // callback threw or returned something other than a valid count. Either way
  // the batch is not written (onBatch did not say what is complete) and JS
  // hears of it through onEvent.
  int64_t CallOnBatch(uint32_t count) {
    Napi::Value ret = onBatch.Call({Napi::Number::New(env, count)});
    uint32_t n;
    if (env.IsExceptionPending()) {
      stats[ERR_CALLBACK] += 1;
      Napi::Object ev = Napi::Object::New(env);
      ev.Set("kind", "callback-error");
      ev.Set("error", env.GetAndClearPendingException().Value());
      ev.Set("dropped", Napi::Number::New(env, count));
      Emit(ev);
      return -1;
    }
    if (GetCount(ret, txCapacity, &n)) return n;
    stats[ERR_CALLBACK] += 1;
    Napi::Object ev = Napi::Object::New(env);
    ev.Set("kind", "callback-error");
    ev.Set("error", Napi::Error::New(env, "onBatch returned " + ret.ToString().Utf8Value() +
                                              ", not a tx count in [0, txList.length / 2]").Value());
    ev.Set("dropped", Napi::Number::New(env, count));
    Emit(ev);
    return -1;
  }

  // Calls onEvent(ev) inside the callback scope ReadRounds/OnPoll opened. An
  // exception from the handler itself is raised as an uncaught exception.
  void Emit(Napi::Object ev) {
    onEvent.Call({ev});
    if (env.IsExceptionPending()) {
      napi_fatal_exception(env, env.GetAndClearPendingException().Value());
    }
  }

  // The device failed: stop polling for good (the fd stays open until close())
  // and report it once, after the current round.
  void Fail(const char* op, int err) {
    if (deviceErrno != 0) return;
    deviceErrno = err;
    deviceOp = op;
    if (!closing) uv_poll_stop(&poll);
    events = 0;
  }

  void EmitDeviceError() {
    Napi::Object ev = Napi::Object::New(env);
    ev.Set("kind", "device-error");
    ev.Set("op", deviceOp);
    ev.Set("code", ErrnoName(deviceErrno));
    ev.Set("errno", Napi::Number::New(env, deviceErrno));
    ev.Set("message", std::string(deviceOp) + ": " + strerror(deviceErrno));
    Emit(ev);
  }

  void ReadRounds() {
    for (int round = 0; round < kMaxRoundsPerWakeup && deviceErrno == 0; ++round) {
      bool drained;
      uint32_t count = ReadBatch(&drained);
      if (count == 0) break;
      stats[RX_BATCHES] += 1;
      int64_t n = CallOnBatch(count);
      if (closing) break;  // onBatch called stop(): the arena may be gone
      if (n > 0) Transmit(static_cast<uint32_t>(n));
      if (drained) break;
    }
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    Poller* self = static_cast<Poller*>(handle->data);
    Napi::HandleScope handleScope(self->env);
    // One callback scope per wakeup: microtasks and nextTicks queued by onBatch
    // run when it closes, as after any other libuv-driven callback. The
    // resource argument is ignored by Node (the async context carries it).
    napi_callback_scope scope;
    if (napi_open_callback_scope(self->env, nullptr, *self->asyncContext, &scope) != napi_ok) {
      self->stats[ERR_CALLBACK] += 1;
      return;
    }
    if (status < 0) {
      // POLLERR (the device was deleted, or failed): libuv has stopped the
      // handle and reports UV_EBADF. A read says what the device reports.
      self->events = 0;
      self->stats[RX_ERRORS] += 1;
      ssize_t r = read(self->fd, self->arena, self->slotSize);
      self->Fail("poll", r < 0 && errno != EAGAIN && errno != EINTR ? errno : -status);
    } else {
      if (events & UV_WRITABLE) self->DrainQueue();
      if ((events & UV_READABLE) && !self->closing) self->ReadRounds();
    }
    if (self->deviceErrno != 0 && !self->closing && !self->reported) {
      self->reported = true;
      self->EmitDeviceError();
    }
    napi_close_callback_scope(self->env, scope);
  }

  void Close() {
    if (closing) return;
    closing = true;
    addon->pollers.erase(id);
    uv_poll_stop(&poll);  // a no-op when Fail() stopped it already
    uv_close(reinterpret_cast<uv_handle_t*>(&poll), OnClosed);
  }

  // JS references and the async context are released here rather than in
  // Close(), which may run inside onBatch while its callback scope is open.
  static void OnClosed(uv_handle_t* handle) {
    Poller* self = static_cast<Poller*>(handle->data);
    if (self->cleanupHook != nullptr) napi_remove_async_cleanup_hook(self->cleanupHook);
    delete self;
  }

  // Environment teardown (worker exit): stop polling before the loop closes.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
    static_cast<Poller*>(arg)->Close();
  }
};

Poller* FindPoller(Napi::Env env, const Napi::Value& v) {
  uint32_t id;
  if (!GetCount(v, UINT32_MAX, &id)) return nullptr;
  AddonData* addon = env.GetInstanceData<AddonData>();
  auto it = addon->pollers.find(id);
  return it == addon->pollers.end() ? nullptr : it->second;
}

// Applies TUNSETOFFLOAD; returns 0 or errno.
int SetOffload(int fd, unsigned mask) {
  return ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(mask)) == 0 ? 0 : errno;
}

// open(name, vnetHdr, offloadMask) -> { fd, name, vnetHdr, offloads, offloadError }
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsBoolean() || !info[2].IsNumber()) {
    ThrowType(env, "open(name: string, vnetHdr: boolean, offloadMask: number)");
    return env.Undefined();
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  bool vnetHdr = info[1].As<Napi::Boolean>().Value();
  uint32_t mask;
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

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(env, "open /dev/net/tun for " + name, errno);
    return env.Undefined();
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0);
  memcpy(ifr.ifr_name, name.data(), name.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "TUNSETIFF " + name, err);
    return env.Undefined();
  }
  std::string actualName(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));

  int hdrLen = kVnetHdrLen;  // the size is per device: pin it when attaching
  if (vnetHdr && ioctl(fd, TUNSETVNETHDRSZ, &hdrLen) < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "TUNSETVNETHDRSZ " + actualName, err);
    return env.Undefined();
  }

  unsigned offloads = mask;
  Napi::Value offloadError = env.Null();
  int err = SetOffload(fd, offloads);
  if (err == EINVAL && (offloads & kUsoFlags)) {
    offloads &= ~kUsoFlags;  // USO4/USO6 need Linux >= 6.2
    err = SetOffload(fd, offloads);
  }
  if (err != 0 && offloads != 0) {
    char hex[16];
    snprintf(hex, sizeof(hex), "0x%x", offloads);
    offloadError = Napi::String::New(
        env, "TUNSETOFFLOAD(" + std::string(hex) + ") " + actualName + ": " + strerror(err));
    offloads = 0;
    err = SetOffload(fd, 0);  // an attached device may keep earlier offloads
  }
  if (err != 0) {
    close(fd);
    ThrowErrno(env, "TUNSETOFFLOAD(0) " + actualName, err);
    return env.Undefined();
  }

  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("name", Napi::String::New(env, actualName));
  result.Set("vnetHdr", Napi::Boolean::New(env, vnetHdr));
  result.Set("offloads", Napi::Number::New(env, offloads));
  result.Set("offloadError", offloadError);
  return result;
}

// start(fd, arena, slotSize, rxSlots, rxLens, txList, stats, onBatch, onEvent) -> handle
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fd, slotSize, rxSlots;
  if (info.Length() < 9 || !GetCount(info[0], INT32_MAX, &fd) ||
      !IsTypedArrayOf(info[1], napi_uint8_array) || !GetCount(info[2], UINT32_MAX, &slotSize) ||
      !GetCount(info[3], UINT32_MAX, &rxSlots) || !IsTypedArrayOf(info[4], napi_uint32_array) ||
      !IsTypedArrayOf(info[5], napi_uint32_array) || !IsTypedArrayOf(info[6], napi_float64_array) ||
      !info[7].IsFunction() || !info[8].IsFunction()) {
    ThrowType(env,
              "start(fd, arena: Uint8Array, slotSize, rxSlots, rxLens: Uint32Array, "
              "txList: Uint32Array, stats: Float64Array, onBatch: function, onEvent: function)");
    return env.Undefined();
  }
  Napi::Uint8Array arena = info[1].As<Napi::Uint8Array>();
  Napi::Uint32Array rxLens = info[4].As<Napi::Uint32Array>();
  Napi::Uint32Array txList = info[5].As<Napi::Uint32Array>();
  Napi::Float64Array stats = info[6].As<Napi::Float64Array>();
  if (slotSize == 0 || rxSlots == 0 || uint64_t{slotSize} * rxSlots > arena.ByteLength() ||
      rxLens.ElementLength() < rxSlots || txList.ElementLength() < 2 ||
      stats.ElementLength() < STATS_COUNT) {
    Napi::RangeError::New(env,
                          "start: need slotSize*rxSlots <= arena.byteLength, rxLens.length >= "
                          "rxSlots, txList.length >= 2, stats.length >= 11")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  AddonData* addon = env.GetInstanceData<AddonData>();
  for (const auto& entry : addon->pollers) {
    if (entry.second->fd == static_cast<int>(fd)) {
      ThrowType(env, "start: fd is already being polled");
      return env.Undefined();
    }
  }
  uv_loop_t* loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    Napi::Error::New(env, "start: no libuv loop").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  auto p = std::make_unique<Poller>(env, addon, static_cast<int>(fd));
  int rc = uv_poll_init(loop, &p->poll, p->fd);
  if (rc < 0) {  // the handle was not registered: plain delete is fine
    ThrowErrno(env, "uv_poll_init", -rc);
    return env.Undefined();
  }
  p->arenaRef = Napi::Persistent(arena);
  p->rxLensRef = Napi::Persistent(rxLens);
  p->txListRef = Napi::Persistent(txList);
  p->statsRef = Napi::Persistent(stats);
  p->onBatch = Napi::Persistent(info[7].As<Napi::Function>());
  p->onEvent = Napi::Persistent(info[8].As<Napi::Function>());
  p->asyncContext = std::make_unique<Napi::AsyncContext>(env, "vpnmasq:tun");
  p->arena = arena.Data();
  p->arenaLen = arena.ByteLength();
  p->slotSize = slotSize;
  p->rxSlots = rxSlots;
  p->rxLens = rxLens.Data();
  p->txList = txList.Data();
  p->txCapacity = static_cast<uint32_t>(txList.ElementLength() / 2);
  p->stats = stats.Data();
  p->id = addon->nextId++;
  napi_add_async_cleanup_hook(env, Poller::OnEnvCleanup, p.get(), &p->cleanupHook);

  Poller* poller = p.release();  // owned by the uv handle from here on
  addon->pollers.emplace(poller->id, poller);
  rc = uv_poll_start(&poller->poll, UV_READABLE, Poller::OnPoll);
  if (rc < 0) {
    poller->Close();
    ThrowErrno(env, "uv_poll_start", -rc);
    return env.Undefined();
  }
  poller->events = UV_READABLE;
  return Napi::Number::New(env, poller->id);
}

// flush(handle, n): writes txList entries [0, n) now.
Napi::Value Flush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Poller* p = FindPoller(env, info[0]);
  uint32_t n;
  if (p == nullptr) {
    ThrowType(env, "flush: unknown or stopped handle");
  } else if (!GetCount(info[1], p->txCapacity, &n)) {
    Napi::RangeError::New(env, "flush: n must be an integer in [0, txList.length / 2]")
        .ThrowAsJavaScriptException();
  } else {
    p->Transmit(n);
    if (p->deviceErrno != 0 && !p->reported) {
      p->reported = true;
      p->EmitDeviceError();
    }
  }
  return env.Undefined();
}

// stop(handle): stops polling; unknown or already stopped handles are ignored.
Napi::Value Stop(const Napi::CallbackInfo& info) {
  Poller* p = FindPoller(info.Env(), info[0]);
  if (p != nullptr) p->Close();
  return info.Env().Undefined();
}

// close(fd): closes a device fd that is not being polled.
Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fd;
  if (!GetCount(info[0], INT32_MAX, &fd)) {
    ThrowType(env, "close(fd: number)");
    return env.Undefined();
  }
  for (const auto& entry : env.GetInstanceData<AddonData>()->pollers) {
    if (entry.second->fd == static_cast<int>(fd)) {
      ThrowType(env, "close: fd is being polled; stop() it first");
      return env.Undefined();
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
  exports.Set("flush", Napi::Function::New(env, Flush, "flush"));
  exports.Set("stop", Napi::Function::New(env, Stop, "stop"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("notify", Napi::Function::New(env, Notify, "notify"));
  return exports;
}

}  // namespace

NODE_API_MODULE(vpnmasq_tun, Init)
