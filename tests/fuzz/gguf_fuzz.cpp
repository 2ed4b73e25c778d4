// The GGUF header parser under libFuzzer, and the same entry point replaying a saved corpus.
//   fuzz:   clang++ -fsanitize=fuzzer,address ... (see tests/fuzz/README.md)
//   replay: gguf_corpus_replay FILE... (built with the project; run by CTest)
// Every input must end in a parsed file or a vhost::Error; anything else is a bug.
#include "gguf.hpp"

#include <vhost/plugin.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

static void one_input(const uint8_t* data, size_t size) {
  try {
    auto g = vhost::llama::GgufFile::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz.gguf");
    for (const auto& t : g.tensors) (void)g.tensor(t);  // every byte the header promises must be there
  } catch (const vhost::Error&) {
  }
}

#ifdef VHOST_FUZZ
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  one_input(data, size);
  return 0;
}
#else
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    one_input(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  std::printf("replayed %d inputs: no crash\n", argc - 1);
  return 0;
}
#endif
