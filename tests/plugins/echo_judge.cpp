// Test judge: replies with its prefix and the last user message. Built several times with
// different macros to make the plugins the host must accept or refuse:
//   ECHO_NAME            the plugin name (a mismatch with the file name must be refused)
//   VHOST_ABI_MAJOR/MINOR  a foreign SDK version (must be refused)
//   VHOST_PLUGIN_USES_TORCH  a torch plugin, which may receive "torch.backend"
#include <vhost/plugin.hpp>
#if defined(VHOST_PLUGIN_USES_TORCH)
#include <vhost/torch/backend.hpp>
#endif

#include <chrono>
#include <thread>

#ifndef ECHO_NAME
#define ECHO_NAME "echo"
#endif

namespace {

class EchoJudge final : public vhost::Judge {
 public:
  static std::vector<vhost::Option> options() {
    using vhost::Option;
    return {Option::string("model", std::nullopt, "model name to report (required)"),
            Option::string("prefix", "echo: ", "text put before the echoed message"),
            Option::integer("delay_ms", 0, "sleep before replying").range(0, 10000),
            Option::string("backend", "", "an instance id whose torch.backend to look up"),
            Option::table("extra", "free-form table, returned by describe"),
            Option::number("top_p", 1.0, "a range whose lower end is excluded, as top_p's").above(0, 1)};
  }
  explicit EchoJudge(const vhost::Config& cfg)
      : model_(cfg.get<std::string>("model")),
        prefix_(cfg.get<std::string>("prefix")),
        delay_ms_(cfg.get<std::int64_t>("delay_ms")),
        backend_(cfg.get<std::string>("backend")),
        extra_(cfg.raw().at("extra")),
        id_(cfg.id()) {
    if (prefix_ == "bad") throw vhost::ConfigError("prefix", "must not be 'bad'");
  }
  vhost::json describe() const override {
    return {{"model", model_}, {"id", id_}, {"extra", extra_}, {"plugin", ECHO_NAME}};
  }
  vhost::json complete(const vhost::json& request) override {
    std::string last = request.at("messages").back().at("content");
    if (last == "FAIL") throw vhost::Error(VHOST_ERR_RUNTIME, "asked to fail");
    if (last == "THROW") throw std::logic_error("unexpected std exception");
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    vhost::json reply = {{"text", prefix_ + last},
                         {"model", model_},
                         {"usage", {{"prompt_tokens", last.size()}, {"completion_tokens", 1}}}};
    if (!backend_.empty()) {
      const void* ext = vhost::find_extension(backend_, "torch.backend");
      reply["backend_found"] = ext != nullptr;
#if defined(VHOST_PLUGIN_USES_TORCH)
      if (ext) reply["backend_device"] = static_cast<const vhost::torch_ext::Backend*>(ext)->device().str();
#endif
    }
    return reply;
  }

 private:
  std::string model_, prefix_;
  std::int64_t delay_ms_;
  std::string backend_;
  vhost::json extra_;
  std::string id_;
};

}  // namespace

VHOST_PLUGIN(EchoJudge, ECHO_NAME, "1.2.3", "test judge that echoes")
