// `tessera complete`: a command-line client of a Tessera server's InferenceService. One prompt (text or token
// ids) in, the completion out, as plain text (optionally streamed as it arrives) or one JSON line per choice.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "coordinator/chat_template/chat_messages_file.h"

namespace tessera {

struct CompleteOptions {
  std::string server;   // HOST:PORT
  std::string api_key;  // sent as `authorization: Bearer KEY` when set
  std::string tls_ca;   // TLS, the server's certificate verified against this PEM CA file; empty: plaintext
  std::string model;   // empty: the served model
  // Exactly one of the three prompts.
  std::optional<std::string> prompt;                 // text, tokenized by the server (bos added)
  std::optional<std::vector<int32_t>> prompt_ids;    // used as given
  std::optional<std::vector<ChatMessageText>> chat;  // rendered with the served model's chat template
  // Unset: the server's defaults (the model's generation_config.json, else greedy; up to the context length).
  std::optional<int> max_tokens;
  std::optional<float> temperature;
  std::optional<int> top_k;
  std::optional<float> top_p;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;                      // stop strings
  bool stream = false;                                // CompleteStream: plain text is printed as it arrives
  bool json = false;                                  // one JSON line per choice instead of plain text
  absl::Duration timeout = absl::InfiniteDuration();  // the call's deadline
};

// Runs one completion against options.server. Plain output: the text of each choice followed by a newline
// (with `stream`, written and flushed delta by delta). With `json`: one line per choice,
// {"token_ids": [...], "text": "...", "finish_reason": "stop"|"length"}. Returns the exit code: 0; 1 when the
// call fails, after printing "CODE: message" on `err` (CODE the gRPC status code's name, e.g.
// "UNAVAILABLE: ..."); 2 for options that make no request (not exactly one prompt, a timeout <= 0), after one
// line on `err`.
int RunComplete(const CompleteOptions& options, std::ostream& out, std::ostream& err);

}  // namespace tessera
