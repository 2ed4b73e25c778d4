# Compiles a text file into a C++ function returning it (the web chat page):
#   cmake -DIN=page.html -DOUT=page.cpp -DFUNCTION=web_chat_html -DNAMESPACE=vhost::host -P embed_text.cmake
# The text goes in as one raw string literal; a file holding its delimiter is refused. OUT is
# rewritten only when it changes, so an unchanged page recompiles nothing.
file(READ "${IN}" content)
set(delim "VHOST_TEXT")
string(FIND "${content}" ")${delim}\"" at)
if(NOT at EQUAL -1)
  message(FATAL_ERROR "${IN} contains \")${delim}\"\", which would end the embedded string")
endif()
file(WRITE "${OUT}.tmp"
  "// Generated from ${IN} by cmake/embed_text.cmake: edit that file, not this one.\n"
  "namespace ${NAMESPACE} {\nconst char* ${FUNCTION}() {\n  return R\"${delim}(${content})${delim}\";\n}\n}  // namespace ${NAMESPACE}\n")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUT}.tmp" "${OUT}")
file(REMOVE "${OUT}.tmp")
