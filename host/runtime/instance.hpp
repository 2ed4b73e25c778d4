// Internal: one live plugin instance, and the calls into its C tables, with every status turned
// into an exception that names the plugin, its file and (for configuration errors) the key.
#pragma once

#include "runtime/config.hpp"
#include "runtime/registry.hpp"

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace vhost::host {

class Instance {
 public:
  // `locations` maps full key paths ("judges.gpt4.model") to where they were written. `run` is the
  // pipeline run it belongs to (host_api.hpp), which must outlive it.
  Instance(std::shared_ptr<const LoadedPlugin> plugin, std::string id, json config,
           std::map<std::string, std::string> locations, std::string source_name, vhost_context* run);
  ~Instance();
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;

  const LoadedPlugin& plugin() const { return *plugin_; }
  const std::string& id() const { return id_; }
  void* self() const { return self_; }
  json describe();
  const void* extension(const std::string& name);
  // The judge kind: a chat completion, and (ABI 1.3) content moderation, whose reply is checked
  // to hold a boolean "flagged" and a list of "categories".
  json judge_complete(const json& request);
  json judge_moderate(const json& request);
  // The model kind.
  std::vector<int32_t> model_encode(const std::string& text, bool bos, bool eos);
  std::string model_decode(const std::vector<int32_t>& ids);
  using TokenFn = std::function<bool(uint32_t sequence, int32_t token, const std::string& text)>;
  json model_generate(const json& request, const TokenFn& on_token);
  // The tokenizer's facts (bos_id, eos_id, vocab_size, ...).
  json model_tokenizer_info();
  // What the model offers when served (context, max_batch, concurrent, template, logprobs, ...;
  // vhost_model_iface::capabilities); from a plugin built before ABI 1.7, its tokenizer_info.
  json model_capabilities();
  // on_event returns false to ask the trainer to checkpoint and stop.
  using EventFn = std::function<bool(const json& event)>;
  json model_train(const json& request, const EventFn& on_event);
  // The backend kind (ABI 1.4): the process group's {rank, world size}, {0, 1} for a backend
  // built before 1.4; and a barrier across its ranks (timeout_s <= 0: the backend's own).
  std::pair<int, int> backend_process_group();
  void backend_barrier(double timeout_s);
  // The dataset kind.
  json dataset_prepare(const json& request);

 private:
  template <class Iface>
  const Iface* iface(const char* kind, std::size_t needed_size, const char* slot) const;
  void check(vhost_status* s, const std::string& what) const;
  std::shared_ptr<const LoadedPlugin> plugin_;
  std::string id_;
  std::map<std::string, std::string> locations_;
  std::string source_name_;
  vhost_context* run_ = nullptr;
  void* self_ = nullptr;
};

// A plugin-level tool of a model plugin (vhost_plugin_desc::tool; before ABI 1.7 vhost_model_iface::tool).
json model_tool(const LoadedPlugin& plugin, const std::string& name, const json& args);
// The same, nullopt when the plugin has no such tool (VHOST_ERR_UNSUPPORTED).
std::optional<json> model_tool_if_offered(const LoadedPlugin& plugin, const std::string& name, const json& args);

}  // namespace vhost::host
