#include "tools/local_engine.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "coordinator/chat_template/model_chat_templates.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "core/log.h"
#include "core/plugin.h"
#include "core/status_macros.h"
#include "core/str_cat.h"
#include "core/units.h"
#include "kernels/backend_factory.h"
#include "worker/checkpoint/model_config.h"
#include "worker/model_split.h"

namespace tessera::tools {

absl::StatusOr<CoordinatorOptions> MakeCoordinatorOptions(const ServeArgs& a) {
  CoordinatorOptions o;
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::Load(a.model_dir + "/config.json"));
  ASSIGN_OR_RETURN(GenerationConfig generation,
                   GenerationConfig::Load(a.model_dir + "/generation_config.json"));
  ServedModel& m = o.model;
  m.dir = std::filesystem::absolute(a.model_dir).lexically_normal().string();
  if (!m.dir.empty() && m.dir.back() == '/') m.dir.pop_back();
  m.id = a.served_model_name.empty() ? std::filesystem::path(m.dir).filename().string() : a.served_model_name;
  m.vocab_size = config.vocab_size;
  m.max_position_embeddings = config.max_position_embeddings;
  m.num_layers = config.num_hidden_layers;
  m.eos_token_ids.assign(config.eos_token_ids.begin(), config.eos_token_ids.end());
  for (int id : generation.eos_token_ids) {
    if (std::find(m.eos_token_ids.begin(), m.eos_token_ids.end(), id) == m.eos_token_ids.end()) {
      m.eos_token_ids.push_back(id);
    }
  }
  m.default_temperature = generation.temperature;
  m.default_top_p = generation.top_p;
  m.default_top_k = generation.top_k;
  m.tp_size = a.tp;
  m.pp_size = a.pp;
  RETURN_IF_ERROR(ParseDeviceKind(a.device).status());
  m.device = a.device;
  o.shape = ShardedShapeOf(config);
  o.pp_layers = a.pp_layers;
  if (a.grpc_port < 0 || a.grpc_port > 65535) {
    return absl::InvalidArgumentError(Cat("--grpc-port=", a.grpc_port, " is not a port number"));
  }
  o.listen_address =
      Cat(a.host.find(':') != std::string::npos ? Cat("[", a.host, "]") : a.host, ":", a.grpc_port);
  if (a.http_port < -1 || a.http_port > 65535) {
    return absl::InvalidArgumentError(Cat("--http-port=", a.http_port, " is not a port number (-1 = off)"));
  }
  o.http_port = a.http_port;
  ASSIGN_OR_RETURN(o.resume_window, ParseDuration(a.resume_window));
  if (!a.advertise_host.empty()) o.advertise_host = a.advertise_host;
  if (a.kv_cache_memory == "auto") {  // the null device sizes its cache as a real device would (0: each worker)
    o.kv_cache_memory = a.device == "null" ? 0 : int64_t{1} << 30;
  } else {
    ASSIGN_OR_RETURN(o.kv_cache_memory, ParseByteSize(a.kv_cache_memory));
  }
  o.threads_per_worker = a.threads_per_worker;
  if (a.prefill_precision != "exact" && a.prefill_precision != "bf16") {
    return absl::InvalidArgumentError(
        Cat("--prefill-precision '", a.prefill_precision, "' is not exact or bf16"));
  }
  o.prefill_precision = a.prefill_precision;
  if (a.quant_activations != "fp32" && a.quant_activations != "int8") {
    return absl::InvalidArgumentError(
        Cat("--quant-activations '", a.quant_activations, "' is not fp32 or int8"));
  }
  o.quant_activations = a.quant_activations;
  if (a.graph_max_batch < -1) {
    return absl::InvalidArgumentError(
        Cat("--graph-max-batch=", a.graph_max_batch, " must be -1, 0 or positive"));
  }
  o.graph_max_batch = a.enforce_eager ? 0 : a.graph_max_batch;
  if (a.communicator != "auto" && a.communicator != "nccl" && a.communicator != "gloo") {
    return absl::InvalidArgumentError(Cat("--communicator '", a.communicator, "' is not auto, nccl or gloo"));
  }
  o.communicator = a.communicator == "auto" ? "" : a.communicator;
  if (a.max_num_seqs <= 0 || a.max_num_batched_tokens <= 0 || a.max_queued_requests < 0) {
    return absl::InvalidArgumentError(Cat("--max-num-seqs=", a.max_num_seqs, ", --max-num-batched-tokens=",
                                          a.max_num_batched_tokens, " must be positive"));
  }
  o.scheduler.max_num_seqs = a.max_num_seqs;
  o.scheduler.max_num_batched_tokens = a.max_num_batched_tokens;
  o.scheduler.max_queued_requests = a.max_queued_requests;
  if (a.max_model_len < 0 || a.max_model_len > o.model.max_position_embeddings) {
    return absl::InvalidArgumentError(Cat("--max-model-len=", a.max_model_len, " must be in [0, ",
                                          o.model.max_position_embeddings,
                                          "] (the model's max_position_embeddings; 0 = that)"));
  }
  if (a.max_model_len > 0)
    o.model.max_position_embeddings = a.max_model_len;  // what requests are checked against
  o.scheduler.max_model_len = o.model.max_position_embeddings;
  o.scheduler.enable_prefix_caching = a.enable_prefix_caching;
  ASSIGN_OR_RETURN(const std::chrono::milliseconds queue_time, ParseDuration(a.max_queue_time));
  o.scheduler.max_queue_time_seconds = static_cast<double>(queue_time.count()) / 1000.0;
  ASSIGN_OR_RETURN(o.heartbeat_interval, ParseDuration(a.heartbeat_interval));
  ASSIGN_OR_RETURN(o.heartbeat_timeout, ParseDuration(a.heartbeat_timeout));
  o.join_token = a.join_token;
  if (!a.join_token_file.empty()) {
    if (!a.join_token.empty()) {
      return absl::InvalidArgumentError("give --join-token or --join-token-file, not both");
    }
    ASSIGN_OR_RETURN(o.join_token, ReadJoinTokenFile(a.join_token_file, "--join-token-file"));
    o.join_token_file = std::filesystem::absolute(a.join_token_file).string();
  }
  o.public_tls = TlsFiles{.cert = a.tls_cert, .key = a.tls_key, .ca = ""};
  o.control_tls = TlsFiles{.cert = a.control_cert, .key = a.control_key, .ca = a.control_ca};
  RETURN_IF_ERROR(CheckTlsFiles(o.public_tls, "--tls-cert / --tls-key", /*need_identity=*/false));
  if (!o.control_tls.empty()) {
    if (a.control_ca.empty()) {
      return absl::InvalidArgumentError(
          "--control-cert / --control-key need --control-ca: the CA that workers' certificates chain to");
    }
    RETURN_IF_ERROR(CheckTlsFiles(o.control_tls, "--control-cert / --control-key / --control-ca",
                                  /*need_identity=*/true));
  }
  if (a.control_port < -1 || a.control_port > 65535) {
    return absl::InvalidArgumentError(
        Cat("--control-port=", a.control_port, " is not a port number (-1 = off)"));
  }
  if (a.control_port >= 0) {
    o.control_address =
        Cat(a.host.find(':') != std::string::npos ? Cat("[", a.host, "]") : a.host, ":", a.control_port);
  }
  o.api_key_file = a.api_key_file;
  o.protect_metrics = a.protect_metrics;
  if (a.max_n < 1 || a.max_tokens_limit < 0 || a.max_prompt_tokens < 0 || a.max_stop_strings < 0) {
    return absl::InvalidArgumentError(Cat("--max-n=", a.max_n, " must be >= 1 and --max-tokens-limit=",
                                          a.max_tokens_limit, ", --max-prompt-tokens=", a.max_prompt_tokens,
                                          ", --max-stop-strings=", a.max_stop_strings, " >= 0"));
  }
  o.limits.max_n = a.max_n;
  o.limits.max_tokens = a.max_tokens_limit;
  o.limits.max_prompt_tokens = a.max_prompt_tokens;
  o.limits.max_stop_strings = a.max_stop_strings;
  ASSIGN_OR_RETURN(const int64_t request_bytes, ParseByteSize(a.max_request_bytes));
  if (request_bytes <= 0) return absl::InvalidArgumentError(Cat("--max-request-bytes=", a.max_request_bytes, " must be positive"));
  o.max_request_bytes = static_cast<size_t>(request_bytes);
  ASSIGN_OR_RETURN(o.comm_timeout, ParseDuration(a.comm_timeout));
  ASSIGN_OR_RETURN(o.startup_timeout, ParseDuration(a.startup_timeout));
  ASSIGN_OR_RETURN(o.replacement_timeout, ParseDuration(a.replacement_timeout));
  ASSIGN_OR_RETURN(o.step_timeout, ParseDuration(a.step_timeout));
  return o;
}

absl::StatusOr<std::string> ReadJoinTokenFile(const std::string& path, std::string_view flag) {
  std::ifstream file(path, std::ios::binary);
  std::string token((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (!file.good() && !file.eof()) return absl::InvalidArgumentError(Cat(flag, " ", path, " cannot be read"));
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  if (token.empty()) return absl::InvalidArgumentError(Cat(flag, " ", path, " holds no token"));
  return token;
}

void HandJoinTokenToChildren(const std::string& token, const std::string& file) {
  if (!file.empty()) {
    unsetenv("TESSERA_JOIN_TOKEN");
    setenv("TESSERA_JOIN_TOKEN_FILE", file.c_str(), 1);
  } else if (!token.empty()) {
    unsetenv("TESSERA_JOIN_TOKEN_FILE");
    setenv("TESSERA_JOIN_TOKEN", token.c_str(), 1);
  }
}

std::vector<std::string> ControlTlsArgs(const TlsFiles& files) {
  std::vector<std::string> args;
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--control-ca", files.ca},
                                   {"--control-cert", files.cert},
                                   {"--control-key", files.key}}) {
    if (!path.empty()) args.insert(args.end(), {flag, path});
  }
  return args;
}

absl::StatusOr<std::unique_ptr<LocalEngine>> LocalEngine::Start(
    const CoordinatorOptions& options, int local_ranks, const std::vector<std::string>& worker_args,
    std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<ModelChatTemplates> chat_templates,
    std::ostream& log) {
  std::unique_ptr<LocalEngine> engine(new LocalEngine());
  CoordinatorOptions with_respawn = options;
  LocalEngine* self = engine.get();  // outlives the coordinator, whose recovery thread calls this
  with_respawn.replace_rank = [self, &log](int rank, bool kill) {
    if (self->workers_ == nullptr) return;
    if (absl::Status s = self->workers_->Respawn(rank, kill); !s.ok() && !absl::IsNotFound(s)) {
      WriteLog(log, LogLevel::kWarning, {.component = "launcher", .rank = rank, .request_id = ""},
               Cat("cannot restart rank ", rank, ": ", s.message()));
    }
  };
  ASSIGN_OR_RETURN(engine->coordinator_,
                   Coordinator::Start(with_respawn, std::move(tokenizer), std::move(chat_templates), log));
  const int count = local_ranks < 0 ? engine->coordinator_->parallel().world_size() : local_ranks;
  if (count > 0) {
    // One rank per process: the children must not read a TESSERA_LOCAL_RANKS or TESSERA_HEALTH_PORT this
    // process inherited, and they stop at once on SIGTERM (this process drains, then stops them).
    std::vector<std::string> args = {"worker",
                                     "--coordinator",
                                     Cat("127.0.0.1:", engine->coordinator_->control_port()),
                                     "--device",
                                     options.model.device,
                                     "--local-ranks",
                                     "1",
                                     "--health-port",
                                     "-1",
                                     "--drain-timeout",
                                     "0s"};
    // Local workers present the coordinator's own control certificate (it is made for both ends).
    for (std::string& arg : ControlTlsArgs(options.control_tls)) args.push_back(std::move(arg));
    args.insert(args.end(), worker_args.begin(), worker_args.end());
    // The join token reaches the children through their environment (or its file), never their argv (ps).
    HandJoinTokenToChildren(options.join_token, options.join_token_file);
    ASSIGN_OR_RETURN(engine->workers_, LocalWorkers::Start(ExecutablePath(), args, count, log));
  }
  return engine;
}

LocalEngine::~LocalEngine() { Shutdown(std::chrono::milliseconds(3000)); }

void LocalEngine::Shutdown(std::chrono::milliseconds grace) {
  if (coordinator_ != nullptr) coordinator_->Shutdown(grace);  // null when Start failed
  if (workers_ != nullptr) workers_->Stop(grace);
}

}  // namespace tessera::tools
