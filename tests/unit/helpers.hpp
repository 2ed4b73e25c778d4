#pragma once

#include <vhost/host/host.hpp>

#include <catch2/catch.hpp>

#include <array>
#include <cctype>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace fs = std::filesystem;
namespace vh = vhost::host;
using Catch::Matchers::Contains;
using Catch::Matchers::Matches;
using Catch::Matchers::StartsWith;

// A fresh, empty scratch folder for one test, under a folder of the running test case's own:
// CTest runs each test case as a process of its own, and `ctest -j` runs several at once, which
// removed and remade each other's folders of the same name (a shared tiny model: "cannot remove
// all: No such file or directory ... model-tiny/m/config.json").
inline fs::path scratch(const std::string& name) {
  std::string test = Catch::getResultCapture().getCurrentTestName(), slug;
  for (char c : test) slug += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
  if (slug.size() > 48) slug = slug.substr(0, 48) + "-" + std::to_string(std::hash<std::string>{}(test) % 1000000);
  fs::path p = fs::path(VHOST_TEST_TMP_DIR) / "cases" / (slug.empty() ? std::string("none") : slug) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

inline void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A host that sees only the given folders: no VHOST_PLUGIN_PATH, no build or install tree.
inline vh::HostOptions only_dirs(std::vector<fs::path> dirs, std::map<std::string, std::string> env = {}) {
  vh::HostOptions o;
  o.plugin_dirs = std::move(dirs);
  o.use_env_plugin_path = false;
  o.use_default_dirs = false;
  o.env = [env](const std::string& k) -> std::optional<std::string> {
    auto it = env.find(k);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  return o;
}

// The message of the vhost::host::Error the callable throws; fails the test if it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const vh::Error& e) {
    return e.what();
  }
  FAIL("expected a vhost::host::Error");
  return {};
}

template <class F>
std::string config_error_of(F&& f) {
  try {
    f();
  } catch (const vh::ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected a ConfigError, got: " << e.what());
  }
  FAIL("expected a ConfigError");
  return {};
}

struct EnvVar {
  std::string name;
  EnvVar(std::string n, const std::string& value) : name(std::move(n)) { setenv(name.c_str(), value.c_str(), 1); }
  ~EnvVar() { unsetenv(name.c_str()); }
};

struct CmdResult {
  int rc;
  std::string out;  // stdout and stderr together
};

inline CmdResult run_cmd(const std::string& cmd) {
  CmdResult r{-1, {}};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The built vhost, seeing no plugins from the environment.
inline std::string vhost_cmd(const std::string& args) {
  return std::string("VHOST_PLUGIN_PATH= ") + VHOST_BIN + " " + args;
}

// A minimal pipeline around one echo judge; `judge_body` adds lines to [judges.e].
inline std::string echo_pipeline(const std::string& judge_body = "", const std::string& stage = "probe") {
  return "[pipeline]\nstages = [\"" + stage + "\"]\nwork_dir = \"" + std::string(VHOST_TEST_TMP_DIR) +
         "/runs\"\n\n[judges.e]\nplugin = \"echo\"\nmodel = \"m\"\n" + judge_body;
}

// A tiny random LLaMA with a tokenizer trained on the docs, made once per name by `vhost model init`.
inline fs::path make_tiny_model(const std::string& name, int seed) {
  fs::path d = scratch(name);
  auto r = run_cmd(vhost_cmd("model init --preset tiny --seed " + std::to_string(seed) + " --out " + (d / "m").string() +
                             " --tokenizer-text " + std::string(VHOST_SOURCE_DIR) + "/docs/plugins.md"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  return d / "m";
}
