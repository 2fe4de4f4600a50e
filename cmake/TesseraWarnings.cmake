# Warnings are errors in project code (never in third-party headers, which come in as system includes).
function(tessera_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror -Wno-unused-parameter)
endfunction()
