// import-gguf: turns a llama GGUF file (llama.cpp's converter output, any quantization gguf_dequant reads)
// into a Hugging Face snapshot directory (config.json, generation_config.json, tokenizer files, safetensors)
// that Checkpoint, Tokenizer and ModelChatTemplates load unchanged.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace tessera {

struct ImportGgufOptions {
  std::string gguf_path;
  std::string out_dir;         // must not exist, or be an empty directory
  DType dtype = DType::kBF16;  // of the safetensors: kBF16 (round to nearest even) or kF32
  // Keep 2-D weights (the projections, the embedding, lm_head) that the GGUF stores as Q8_0, Q4_0 or Q4_1 as
  // those blocks (DType kQ8_0, ...; see safetensors.h for how they are stored), for the CPU backend's
  // quantized kernels. Tensors of other types (F16, K-quants, the norms) still become `dtype`.
  bool keep_quantized = false;
  int64_t max_shard_bytes =
      4'000'000'000;  // more tensor data than this is split into model-0000i-of-0000n files
};

struct ImportGgufResult {
  int64_t tensors = 0;  // tensors written
  int64_t bytes = 0;    // tensor data bytes written
  int shards = 0;       // safetensors files
  int quantized = 0;    // tensors kept as quantized blocks
};

// Writes the snapshot of options.gguf_path into options.out_dir. Every tensor is dequantized exactly
// (gguf-py's arithmetic), q_proj / k_proj rows are un-permuted back to Hugging Face's order (undoing
// llama.cpp's permute(w, n_head) with the head and KV-head counts), then rounded to options.dtype (or, with
// options.keep_quantized, kept as their blocks, rows reordered the same way). Tensors
// are streamed a few megabytes at a time, so memory stays small whatever the model size. Everything is
// written into a temporary sibling directory renamed to out_dir at the end; on any error nothing is left
// behind. Errors name the file and the culprit: those of GgufFile::Open, ModelConfigFromGguf and
// TokenizerFilesFromGguf; INVALID_ARGUMENT for a GGUF tensor that is not a llama tensor, a tensor whose shape
// disagrees with the metadata, a bad dtype or max_shard_bytes; NOT_FOUND for a missing tensor;
// ALREADY_EXISTS when out_dir exists and is not an empty directory; errno-derived codes for I/O failures.
[[nodiscard]] absl::StatusOr<ImportGgufResult> ImportGguf(const ImportGgufOptions& options);

// The Hugging Face name of GGUF tensor `gguf_name` (token_embd, output_norm, output, blk.N.{attn_norm,
// attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, each ".weight") for a model of
// `num_layers` layers; nullopt for any other name or a layer index out of range.
std::optional<std::string> HfTensorName(std::string_view gguf_name, int num_layers);

// Row `hf_row` of a q_proj / k_proj weight with `rows` rows over `num_heads` heads is stored as this row of
// the GGUF tensor: llama.cpp's converter reorders each head's rows from two halves [0, d/2), [d/2, d) to
// interleaved pairs, so HF row h*d + half*d/2 + i sits at GGUF row h*d + 2i + half. Needs rows % (2 *
// num_heads) == 0.
int64_t GgufRowOfHfRow(int64_t hf_row, int64_t rows, int num_heads);

}  // namespace tessera
