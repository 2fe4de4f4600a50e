# The tokenizer (coordinator/tokenizer/) and the tokenize / detokenize commands, part of tessera_coordinator.
target_sources(tessera_coordinator PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/added_tokens.cc
  ${CMAKE_CURRENT_LIST_DIR}/bpe_model.cc
  ${CMAKE_CURRENT_LIST_DIR}/incremental_detokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/json_scanner.cc
  ${CMAKE_CURRENT_LIST_DIR}/pre_tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_json.cc
  ${CMAKE_CURRENT_LIST_DIR}/utf8.cc
  ${CMAKE_CURRENT_LIST_DIR}/../tokenize_command.cc)
target_link_libraries(tessera_coordinator PUBLIC absl::flat_hash_map PRIVATE absl::hash)
