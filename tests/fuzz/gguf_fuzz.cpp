// The GGUF header parser under libFuzzer, and the same entry point replaying a saved corpus.
//   fuzz:   clang++ -fsanitize=fuzzer,address ... (see tests/fuzz/README.md)
//   replay: gguf_corpus_replay FILE... (built with the project; run by CTest)
// Every input must end in a parsed file or a vhost::Error; anything else is a bug.
#include "gguf.hpp"

#include <vhost/plugin.hpp>

#include <cstdint>
#include <string>

static void one_input(const uint8_t* data, size_t size) {
  try {
    auto g = vhost::llama::GgufFile::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz.gguf");
    for (const auto& t : g.tensors) (void)g.tensor(t);  // every byte the header promises must be there
  } catch (const vhost::Error&) {
  }
}

#include "fuzz_main.hpp"
