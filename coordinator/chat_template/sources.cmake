# Chat templates: a Jinja subset interpreter that renders Hugging Face chat templates as jinja2 does, and the
# `tessera chat-template` command.
target_sources(tessera_coordinator PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/builtins.cc
  ${CMAKE_CURRENT_LIST_DIR}/chat_messages_file.cc
  ${CMAKE_CURRENT_LIST_DIR}/chat_template.cc
  ${CMAKE_CURRENT_LIST_DIR}/filters.cc
  ${CMAKE_CURRENT_LIST_DIR}/interpreter.cc
  ${CMAKE_CURRENT_LIST_DIR}/json_dump.cc
  ${CMAKE_CURRENT_LIST_DIR}/lexer.cc
  ${CMAKE_CURRENT_LIST_DIR}/model_chat_templates.cc
  ${CMAKE_CURRENT_LIST_DIR}/operators.cc
  ${CMAKE_CURRENT_LIST_DIR}/parse_expr.cc
  ${CMAKE_CURRENT_LIST_DIR}/parser.cc
  ${CMAKE_CURRENT_LIST_DIR}/py_text.cc
  ${CMAKE_CURRENT_LIST_DIR}/value.cc
  ${CMAKE_CURRENT_LIST_DIR}/../chat_template_command.cc)
