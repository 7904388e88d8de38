#pragma once
// Error types and argument-check macros shared by every syncbn module.
//
// Every failure the library reports is a syncbn::Error. Messages read
// "<op>: <what>, expected X, got Y" so that a user can tell from the message
// alone which call failed and why. The library never exits or aborts.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace syncbn {

/// Base of every exception thrown by syncbn.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A caller passed a bad argument (shape, dtype, device, option); no state changed.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// A synchronisation round failed: a peer aborted, a callback threw, or the
/// protocol was violated. Every participant of the round receives one.
class CommError : public Error {
 public:
  using Error::Error;
};

/// A participant did not arrive within the configured timeout. A Timeout is a
/// CommError, so `catch (const CommError&)` sees every failed round.
class Timeout : public CommError {
 public:
  using CommError::CommError;
};

/// The operation exists but not in this build or on this device (e.g. CUDA
/// requested in a build without CUDA).
class Unsupported : public Error {
 public:
  using Error::Error;
};

/// An allocation failed: the message names the operation and the size.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

/// A CUDA runtime call failed; the message holds the file, line, expression
/// and cudaGetErrorString.
class CudaError : public Error {
 public:
  using Error::Error;
};

/// An NCCL call failed; the message holds the file, line, expression and
/// ncclGetErrorString.
class NcclError : public Error {
 public:
  using Error::Error;
};

namespace detail {

/// Concatenates the streamable arguments into one string.
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

}  // namespace detail
}  // namespace syncbn

/// Throws `Type` with the streamed message parts, e.g.
/// SYNCBN_THROW(InvalidArgument, "scatter: ", n, " devices, expected at least 1").
#define SYNCBN_THROW(Type, ...) throw ::syncbn::Type(::syncbn::detail::concat(__VA_ARGS__))

/// Throws syncbn::InvalidArgument with the streamed message parts unless `cond` holds.
#define SYNCBN_CHECK(cond, ...)                     \
  do {                                              \
    if (!(cond)) {                                  \
      SYNCBN_THROW(InvalidArgument, __VA_ARGS__);   \
    }                                               \
  } while (false)

/// Like SYNCBN_CHECK but throws the given error type.
#define SYNCBN_CHECK_T(Type, cond, ...)             \
  do {                                              \
    if (!(cond)) {                                  \
      SYNCBN_THROW(Type, __VA_ARGS__);              \
    }                                               \
  } while (false)
