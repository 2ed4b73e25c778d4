// The pipeline loader (TOML parse, ${ENV} expansion, every table validated against the stage and
// plugin schemas) under libFuzzer, and the same entry point replaying a saved corpus (CTest).
// Every input must end in a validated pipeline or a vhost::host::Error naming what is wrong.
// Plugins come from the build's plugin folder (VHOST_PLUGIN_PATH may add others).
#include <vhost/host/error.hpp>
#include <vhost/host/host.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

static void one_input(const uint8_t* data, size_t size) {
  static vhost::host::Host host([] {
    vhost::host::HostOptions o;
    o.env = [](const std::string& name) -> std::optional<std::string> {  // fixed, not the caller's environment
      if (name == "HOME") return std::string("/home/fuzz");
      return std::nullopt;
    };
    return o;
  }());
  try {
    (void)host.load_string(std::string(reinterpret_cast<const char*>(data), size), "fuzz.toml", {},
                           std::filesystem::temp_directory_path());
  } catch (const vhost::host::Error& e) {
    static const bool verbose = std::getenv("VHOST_FUZZ_VERBOSE") != nullptr;  // what a seed ends in
    if (verbose) std::fprintf(stderr, "%s\n", e.what());
  }
}

#include "fuzz_main.hpp"
