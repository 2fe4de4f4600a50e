// CompletionLimits: what one request may ask for, the same on the gRPC and the HTTP API.
#pragma once

namespace tessera {

// The operator's limits on one request (tessera serve's --max-n, --max-tokens-limit, --max-prompt-tokens,
// --max-stop-strings); each breach is INVALID_ARGUMENT naming the limit and its flag. 0: no limit beyond the
// context.
struct CompletionLimits {
  int max_n = 16;                    // choices per request
  int max_tokens = 0;                // tokens a request may generate (an unset max_tokens is capped to it)
  int max_prompt_tokens = 0;         // prompt tokens
  int max_stop_strings = 16;         // stop strings per request
  int max_stop_string_bytes = 1024;  // bytes of each stop string
};

}  // namespace tessera
