// A minimal io_uring for the TUN loop, on the raw system calls (no liburing):
// one submission and one completion ring, provided-buffer rings, and the
// three operations the loop needs. See io_uring_setup(2), io_uring_enter(2),
// io_uring_register(2) and include/uapi/linux/io_uring.h.
#pragma once

#include <errno.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace uring {

// IORING_OP_READ_MULTISHOT (Linux 6.7): a read that stays armed and takes a
// provided buffer per completion; the build host's headers may predate it.
constexpr uint8_t kOpReadMultishot = 49;

inline int Setup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}
inline int Enter(int fd, unsigned toSubmit, unsigned minComplete, unsigned flags) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, toSubmit, minComplete, flags, nullptr, 0));
}
inline int Register(int fd, unsigned op, void* arg, unsigned nr) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, op, arg, nr));
}

template <typename T>
T* At(void* base, uint32_t off) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + off);
}

// A provided-buffer ring (IORING_REGISTER_PBUF_RING): the kernel takes buffers
// from its head, the owner adds freed ones at its tail. The ring is an array
// of io_uring_buf whose first entry's resv field is the tail. (Addressed by
// hand: the C++ branch of __DECLARE_FLEX_ARRAY in Linux < 6.3 uapi headers
// puts io_uring_buf_ring::bufs 8 bytes too far.)
class BufRing {
 public:
  // entries: a power of two; returns 0 or errno.
  int Init(int ringFd, uint16_t group, uint32_t entries) {
    size_ = (entries * sizeof(io_uring_buf) + 4095) & ~size_t{4095};
    void* mem = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return errno;
    ring_ = static_cast<io_uring_buf*>(mem);
    io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = reinterpret_cast<uint64_t>(mem);
    reg.ring_entries = entries;
    reg.bgid = group;
    if (Register(ringFd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) return errno;
    mask_ = entries - 1;
    return 0;
  }
  // Adds a buffer; visible to the kernel after Publish().
  void Add(void* addr, uint32_t len, uint16_t bid) {
    io_uring_buf* b = ring_ + (tail_ & mask_);
    b->addr = reinterpret_cast<uint64_t>(addr);
    b->len = len;
    b->bid = bid;
    ++tail_;
  }
  void Publish() {
    reinterpret_cast<std::atomic<uint16_t>*>(&ring_->resv)->store(tail_, std::memory_order_release);
  }
  ~BufRing() {
    if (ring_ != nullptr) munmap(ring_, size_);
  }

 private:
  io_uring_buf* ring_ = nullptr;
  size_t size_ = 0;
  uint16_t tail_ = 0;
  uint32_t mask_ = 0;
};

class Ring {
 public:
  // Single issuer, completions run only when the owner asks (DEFER_TASKRUN,
  // Linux 6.1): the kernel never interrupts the JS thread; it flags deferred
  // work in the SQ ring (TASKRUN_FLAG). Returns 0 or errno.
  int Init(unsigned sqEntries, unsigned cqEntries) {
    io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
              IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = cqEntries;
    fd_ = Setup(sqEntries, &p);
    if (fd_ < 0) return errno;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) return ENOSYS;  // Linux < 5.4
    size_t sqSize = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    size_t cqSize = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    ringSize_ = sqSize > cqSize ? sqSize : cqSize;
    ring_ = mmap(nullptr, ringSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
    if (ring_ == MAP_FAILED) {
      ring_ = nullptr;
      return errno;
    }
    sqesSize_ = p.sq_entries * sizeof(io_uring_sqe);
    void* sqes = mmap(nullptr, sqesSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) return errno;
    sqes_ = static_cast<io_uring_sqe*>(sqes);
    sqTail_ = At<std::atomic<uint32_t>>(ring_, p.sq_off.tail);
    sqHead_ = At<std::atomic<uint32_t>>(ring_, p.sq_off.head);
    sqMask_ = *At<uint32_t>(ring_, p.sq_off.ring_mask);
    sqFlags_ = At<std::atomic<uint32_t>>(ring_, p.sq_off.flags);
    sqEntries_ = p.sq_entries;
    uint32_t* array = At<uint32_t>(ring_, p.sq_off.array);
    for (uint32_t i = 0; i < p.sq_entries; ++i) array[i] = i;  // SQE i is always in array slot i
    cqHead_ = At<std::atomic<uint32_t>>(ring_, p.cq_off.head);
    cqTail_ = At<std::atomic<uint32_t>>(ring_, p.cq_off.tail);
    cqMask_ = *At<uint32_t>(ring_, p.cq_off.ring_mask);
    cqes_ = At<io_uring_cqe>(ring_, p.cq_off.cqes);
    localTail_ = sqTail_->load(std::memory_order_relaxed);
    return 0;
  }

  int fd() const { return fd_; }

  // A cleared SQE, or nullptr when the submission ring is full (Submit first).
  io_uring_sqe* Sqe() {
    if (localTail_ - sqHead_->load(std::memory_order_acquire) >= sqEntries_) return nullptr;
    io_uring_sqe* s = &sqes_[localTail_ & sqMask_];
    memset(s, 0, sizeof(*s));
    ++localTail_;
    return s;
  }

  // Submits what Sqe() handed out and the kernel has not taken yet and, with
  // getEvents, runs completions the kernel deferred. Returns 0 or errno.
  int Submit(bool getEvents) {
    sqTail_->store(localTail_, std::memory_order_release);
    uint32_t n = localTail_ - sqHead_->load(std::memory_order_acquire);
    if (n == 0 && !getEvents) return 0;
    for (;;) {
      if (Enter(fd_, n, 0, getEvents ? IORING_ENTER_GETEVENTS : 0) >= 0) return 0;
      if (errno == EINTR) continue;
      // EAGAIN/EBUSY: the completion ring is full; the caller reaps and retries.
      return errno;
    }
  }

  // Calls fn(cqe) for every completion posted so far.
  template <typename F>
  uint32_t Reap(F fn) {
    uint32_t head = cqHead_->load(std::memory_order_relaxed);
    uint32_t tail = cqTail_->load(std::memory_order_acquire);
    uint32_t n = tail - head;
    for (; head != tail; ++head) fn(cqes_[head & cqMask_]);
    cqHead_->store(head, std::memory_order_release);
    return n;
  }

  // Whether deferred work or completions wait: the owner must come back
  // before it sleeps on the eventfd.
  bool Pending() const {
    return (sqFlags_->load(std::memory_order_seq_cst) & IORING_SQ_TASKRUN) != 0 ||
           cqTail_->load(std::memory_order_acquire) != cqHead_->load(std::memory_order_relaxed);
  }

  // Cancels every request and waits for them (IORING_REGISTER_SYNC_CANCEL,
  // Linux 6.0), so no read lands in memory the caller is about to free.
  void CancelAll() {
    io_uring_sync_cancel_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.flags = IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL;
    reg.timeout.tv_sec = -1;
    reg.timeout.tv_nsec = -1;
    while (Register(fd_, IORING_REGISTER_SYNC_CANCEL, &reg, 1) < 0 && errno == EINTR) {
    }
  }

  ~Ring() {
    if (sqes_ != nullptr) munmap(sqes_, sqesSize_);
    if (ring_ != nullptr) munmap(ring_, ringSize_);
    if (fd_ >= 0) close(fd_);
  }

 private:
  int fd_ = -1;
  void* ring_ = nullptr;
  size_t ringSize_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  size_t sqesSize_ = 0;
  std::atomic<uint32_t>* sqHead_ = nullptr;
  std::atomic<uint32_t>* sqTail_ = nullptr;
  uint32_t sqMask_ = 0;
  std::atomic<uint32_t>* sqFlags_ = nullptr;
  uint32_t sqEntries_ = 0;
  uint32_t localTail_ = 0;
  std::atomic<uint32_t>* cqHead_ = nullptr;
  std::atomic<uint32_t>* cqTail_ = nullptr;
  uint32_t cqMask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
};

inline void PrepReadMultishot(io_uring_sqe* s, int fd, uint16_t group, uint64_t userData) {
  s->opcode = kOpReadMultishot;
  s->fd = fd;
  s->flags = IOSQE_BUFFER_SELECT;
  s->buf_group = group;
  s->user_data = userData;
}

inline void PrepWrite(io_uring_sqe* s, int fd, const void* buf, uint32_t len, uint64_t userData) {
  s->opcode = IORING_OP_WRITE;
  s->fd = fd;
  s->addr = reinterpret_cast<uint64_t>(buf);
  s->len = len;
  s->off = static_cast<uint64_t>(-1);  // a stream: no offset
  s->user_data = userData;
}

}  // namespace uring
