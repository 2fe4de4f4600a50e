// TimeoutError: what our Gloo-facing code (the rendezvous store over gRPC, bounded waits) throws when a
// deadline passes, so that callers classify timeouts by type instead of by the words of a message.
#pragma once

#include <gloo/common/error.h>

namespace tessera {

// A Gloo IoException (Gloo's callers catch those) that is known to be a timeout.
struct TimeoutError : public gloo::IoException {
  using gloo::IoException::IoException;
};

}  // namespace tessera
