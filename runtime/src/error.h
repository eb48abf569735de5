// The one exception type the runtime's C++ layer throws. It carries the bsm_status the C API
// returns, so the boundary (c_api.cc) maps errors without guessing from message text.
#ifndef BITSMITH_RUNTIME_SRC_ERROR_H_
#define BITSMITH_RUNTIME_SRC_ERROR_H_

#include <stdexcept>
#include <string>

#include "bitsmith/runtime.h"

namespace bsm {

class Error : public std::runtime_error {
 public:
  Error(bsm_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  bsm_status status() const { return status_; }

 private:
  bsm_status status_;
};

[[noreturn]] inline void fail(bsm_status status, const std::string& message) { throw Error(status, message); }

}  // namespace bsm

#endif  // BITSMITH_RUNTIME_SRC_ERROR_H_
