# worker/checkpoint: safetensors reader/writer, HF config parsing, the Checkpoint directory, make-model and
# import-gguf.
# Included by worker/CMakeLists.txt into the tessera_worker library.
target_sources(tessera_worker PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint.cc
  ${CMAKE_CURRENT_LIST_DIR}/gguf_config.cc
  ${CMAKE_CURRENT_LIST_DIR}/gguf_dequant.cc
  ${CMAKE_CURRENT_LIST_DIR}/gguf_file.cc
  ${CMAKE_CURRENT_LIST_DIR}/gguf_import.cc
  ${CMAKE_CURRENT_LIST_DIR}/gguf_tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/json_fields.cc
  ${CMAKE_CURRENT_LIST_DIR}/make_model.cc
  ${CMAKE_CURRENT_LIST_DIR}/mapped_file.cc
  ${CMAKE_CURRENT_LIST_DIR}/model_config.cc
  ${CMAKE_CURRENT_LIST_DIR}/model_presets.cc
  ${CMAKE_CURRENT_LIST_DIR}/safetensors.cc
  ${CMAKE_CURRENT_LIST_DIR}/safetensors_writer.cc)
