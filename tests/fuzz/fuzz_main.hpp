// The entry point shared by the fuzz targets: under libFuzzer (-DVHOST_FUZZ) LLVMFuzzerTestOneInput
// calls one_input; otherwise main() replays the files it is given (a saved corpus, run by CTest)
// and says "no crash" at the end. A target defines one_input(data, size) before including this.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

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
  std::fflush(stdout);
  std::_Exit(0);  // a target may leave a server thread running: no static destructors under it
}
#endif
