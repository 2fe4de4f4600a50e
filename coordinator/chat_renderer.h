// ChatRenderer: the model's chat template behind a lock, shared by every front end (gRPC, HTTP) of one
// coordinator. ModelChatTemplates caches parsed templates and is not thread-safe; this is.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/chat_template/model_chat_templates.h"

namespace tessera {

class ChatRenderer {
 public:
  // `templates` may be null (the model has no tokenizer_config.json): Render then fails with
  // FAILED_PRECONDITION naming `model_dir`'s tokenizer_config.json.
  ChatRenderer(std::unique_ptr<ModelChatTemplates> templates, std::string model_dir)
      : templates_(std::move(templates)), model_dir_(std::move(model_dir)) {}

  bool has_template() const { return templates_ != nullptr; }

  // ModelChatTemplates::Render: request = {"messages": [...], "add_generation_prompt": bool, "tools", ...}.
  // Errors: FAILED_PRECONDITION without a template; INVALID_ARGUMENT from the template.
  [[nodiscard]] absl::StatusOr<std::string> Render(const nlohmann::ordered_json& request)
      ABSL_LOCKS_EXCLUDED(mu_) {
    if (templates_ == nullptr) {
      return absl::FailedPreconditionError("chat prompts need " + model_dir_ +
                                           "/tokenizer_config.json with a chat_template");
    }
    absl::MutexLock lock(&mu_);
    return templates_->Render(request);
  }

 private:
  absl::Mutex mu_;
  const std::unique_ptr<ModelChatTemplates> templates_ ABSL_PT_GUARDED_BY(mu_);
  const std::string model_dir_;
};

}  // namespace tessera
