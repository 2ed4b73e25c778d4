// The safetensors reader (header length, JSON header, offsets, dtypes) under libFuzzer, and the
// same entry point replaying a saved corpus (CTest). Every input must end in a file whose every
// tensor can be read, or a vhost::Error naming the defect.
#include "safetensors.hpp"

#include <vhost/plugin.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

static void one_input(const uint8_t* data, size_t size) {
  static const std::string file = (std::filesystem::exists("/dev/shm") ? std::string("/dev/shm") : std::filesystem::temp_directory_path().string()) +
                                  "/vhost-safetensors-fuzz-" + std::to_string(::getpid()) + ".safetensors";
  if (FILE* f = std::fopen(file.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    vhost::llama::SafetensorsFile st(file);
    for (const auto& [name, e] : st.entries()) {
      auto t = st.get(name);
      if (t.numel() > 0) (void)t.flatten()[t.numel() - 1].item<double>();  // the last element is inside the file
    }
  } catch (const vhost::Error&) {
  }
}

#include "fuzz_main.hpp"
