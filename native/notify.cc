// sd_notify(3) for Type=notify services: send one datagram such as "READY=1",
// "WATCHDOG=1" or "STOPPING=1" to the socket named by $NOTIFY_SOCKET.

#include <napi.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>

// notify(socketPath, message) -> true; throws on error. A path starting with
// '@' names a socket in the abstract namespace (leading NUL, no terminator).
Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    Napi::TypeError::New(env, "notify(socketPath: string, message: string)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();

  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  // Filesystem paths need room for the terminating NUL; abstract names do not.
  bool abstract = !path.empty() && path[0] == '@';
  size_t maxLen = sizeof(addr.sun_path) - (abstract ? 0 : 1);
  if (path.empty() || (abstract && path.size() < 2) || path.size() > maxLen) {
    Napi::TypeError::New(env, "notify: invalid socket path '" + path + "'")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  memcpy(addr.sun_path, path.data(), path.size());
  if (abstract) addr.sun_path[0] = '\0';
  socklen_t addrLen = offsetof(struct sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1);

  // Non-blocking, so a stalled service manager cannot block the event loop; a
  // full receive queue surfaces as EAGAIN.
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    Napi::Error::New(env, std::string("notify: socket: ") + strerror(errno))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ssize_t sent;
  do {
    sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL,
                  reinterpret_cast<struct sockaddr*>(&addr), addrLen);
  } while (sent < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (sent < 0) {
    Napi::Error::New(env, "notify " + path + ": " + strerror(err))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, true);
}
