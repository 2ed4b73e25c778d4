#include "runtime/instance.hpp"

#include "runtime/host_api.hpp"

#include <cstddef>

namespace vhost::host {

namespace {
struct StringSink {
  std::string data;
  vhost_sink sink{this, [](void* ctx, const char* d, std::size_t n) {
                    static_cast<StringSink*>(ctx)->data.append(d, n);
                  }};
};

// A host callback's answer to the plugin (a std::function behind the C callback's `ctx`): 0 to
// go on, 1 to stop; an exception must not unwind through the plugin, so it stops instead.
template <class Fn, class Call>
int32_t carry_on(void* ctx, Call&& call) noexcept {
  try {
    return call(*static_cast<const Fn*>(ctx)) ? 0 : 1;
  } catch (...) {
    return 1;
  }
}

// A plugin's JSON reply; `what` names the call in the error ("generate", "tool 'init'").
json parse_reply(const LoadedPlugin& p, const std::string& data, const std::string& what) {
  try {
    return json::parse(data);
  } catch (const json::exception& e) {
    throw PluginError(p.label() + ": " + what + " returned invalid JSON: " + e.what());
  }
}
}  // namespace

Instance::Instance(std::shared_ptr<const LoadedPlugin> plugin, std::string id, json config,
                   std::map<std::string, std::string> locations, std::string source_name, vhost_context* run)
    : plugin_(std::move(plugin)), id_(std::move(id)), locations_(std::move(locations)),
      source_name_(std::move(source_name)), run_(run) {
  config["_id"] = id_;
  void* out = nullptr;
  // A plugin of ABI 1.6 or later learns its run (for its lookups of other instances); an older
  // one has only `create`.
  const std::string text = config.dump();
  vhost_status* st = plugin_->desc->create_in ? plugin_->desc->create_in(run_, text.c_str(), &out)
                                              : plugin_->desc->create(text.c_str(), &out);
  if (st) {
    if (out) plugin_->desc->destroy(out);
    check(st, "could not create '" + id_ + "'");
  }
  if (!out) throw PluginError(plugin_->label() + ": create returned no instance for '" + id_ + "'");
  self_ = out;
  publish_instance(run_, {id_, plugin_->kind, plugin_->label(), plugin_->desc->torch_abi ? plugin_->desc->torch_abi : "",
                          plugin_->desc->kind_iface, self_, [this](const std::string& name) { return extension(name); }});
}

Instance::~Instance() {
  withdraw_instance(run_, id_);
  if (self_) plugin_->desc->destroy(self_);
}

void Instance::check(vhost_status* s, const std::string& what) const {
  auto info = take_status(s);
  if (!info) return;
  if (info->code == VHOST_ERR_CONFIG && !info->key.empty()) {
    std::string kp = id_ + "." + info->key;
    auto it = locations_.find(kp);
    std::string where = it != locations_.end() ? it->second : source_name_;
    throw ConfigError(where + ": " + kp + ": " + info->message + " (rejected by " + plugin_->label() + ")");
  }
  // Bad input data (a malformed file the plugin read): the user's to fix, like a bad config.
  if (info->code == VHOST_ERR_INVALID_ARGUMENT)
    throw ConfigError(info->message + " (" + what + ", " + plugin_->label() + ")");
  throw PluginError(plugin_->label() + ": " + what + ": " + code_name(info->code) + ": " + info->message);
}

template <class Iface>
static const Iface* table_of(const LoadedPlugin& p, const char* kind, std::size_t needed_size, const char* slot) {
  if (p.kind != kind) throw PluginError(p.label() + " is not a " + kind + " plugin");
  auto* t = static_cast<const Iface*>(p.desc->kind_iface);
  if (t->struct_size < needed_size)
    throw PluginError(p.label() + ": its " + p.kind + " table is too old to have '" + slot + "': rebuild it against this SDK");
  return t;
}

template <class Iface>
const Iface* Instance::iface(const char* kind, std::size_t needed_size, const char* slot) const {
  return table_of<Iface>(*plugin_, kind, needed_size, slot);
}

#define VHOST_SLOT_END(T, slot) (offsetof(T, slot) + sizeof(T::slot))

json Instance::describe() {
  StringSink out;
  check(plugin_->desc->describe(self_, &out.sink), "describe failed");
  if (out.data.empty()) return json::object();
  return parse_reply(*plugin_, out.data, "describe");
}

const void* Instance::extension(const std::string& name) {
  return plugin_->desc->get_extension(self_, name.c_str());
}

json Instance::judge_complete(const json& request) {
  auto* t = iface<vhost_judge_iface>(VHOST_KIND_JUDGE, VHOST_SLOT_END(vhost_judge_iface, complete), "complete");
  StringSink out;
  check(t->complete(self_, request.dump().c_str(), &out.sink), "request failed");
  try {
    json reply = json::parse(out.data);
    if (!reply.is_object() || !reply.contains("text") || !reply["text"].is_string())
      throw PluginError(plugin_->label() + ": its reply has no string \"text\": " + out.data.substr(0, 200));
    return reply;
  } catch (const json::exception& e) {
    throw PluginError(plugin_->label() + ": its reply is not valid JSON: " + e.what());
  }
}

json Instance::judge_moderate(const json& request) {
  auto* t = iface<vhost_judge_iface>(VHOST_KIND_JUDGE, VHOST_SLOT_END(vhost_judge_iface, moderate), "moderate");
  if (!t->moderate) throw PluginError(plugin_->label() + ": this judge does not moderate content");
  StringSink out;
  check(t->moderate(self_, request.dump().c_str(), &out.sink), "moderation failed");
  json reply;
  try {
    reply = json::parse(out.data);
  } catch (const json::exception& e) {
    throw PluginError(plugin_->label() + ": its moderation reply is not valid JSON: " + e.what());
  }
  if (!reply.is_object() || !reply.contains("flagged") || !reply["flagged"].is_boolean())
    throw PluginError(plugin_->label() + ": its moderation reply has no boolean \"flagged\": " + out.data.substr(0, 200));
  if (!reply.contains("categories")) reply["categories"] = json::array();
  if (!reply["categories"].is_array())
    throw PluginError(plugin_->label() + ": its moderation reply's \"categories\" is not a list: " + out.data.substr(0, 200));
  return reply;
}

std::vector<int32_t> Instance::model_encode(const std::string& text, bool bos, bool eos) {
  auto* t = iface<vhost_model_iface>(VHOST_KIND_MODEL, VHOST_SLOT_END(vhost_model_iface, encode), "encode");
  std::vector<int32_t> ids;
  auto collect = [](void* ctx, const int32_t* p, size_t n) { static_cast<std::vector<int32_t>*>(ctx)->assign(p, p + n); };
  check(t->encode(self_, text.data(), text.size(), (bos ? VHOST_ENCODE_BOS : 0u) | (eos ? VHOST_ENCODE_EOS : 0u),
                  collect, &ids),
        "encode failed");
  return ids;
}

std::string Instance::model_decode(const std::vector<int32_t>& ids) {
  auto* t = iface<vhost_model_iface>(VHOST_KIND_MODEL, VHOST_SLOT_END(vhost_model_iface, decode), "decode");
  StringSink out;
  check(t->decode(self_, ids.data(), ids.size(), &out.sink), "decode failed");
  return out.data;
}

json Instance::model_generate(const json& request, const TokenFn& on_token) {
  auto* t = iface<vhost_model_iface>(VHOST_KIND_MODEL, VHOST_SLOT_END(vhost_model_iface, generate), "generate");
  StringSink out;
  vhost_token_fn cb = nullptr;
  if (on_token)
    cb = [](void* c, uint32_t seq, int32_t tok, const char* text, size_t len) -> int32_t {
      return carry_on<TokenFn>(c, [&](const TokenFn& fn) { return fn(seq, tok, std::string(text, len)); });
    };
  check(t->generate(self_, request.dump().c_str(), cb, const_cast<TokenFn*>(&on_token), &out.sink), "generate failed");
  return parse_reply(*plugin_, out.data, "generate");
}

json Instance::model_tokenizer_info() {
  auto* t = iface<vhost_model_iface>(VHOST_KIND_MODEL, VHOST_SLOT_END(vhost_model_iface, tokenizer_info),
                                     "tokenizer_info");
  StringSink out;
  check(t->tokenizer_info(self_, &out.sink), "tokenizer_info failed");
  return parse_reply(*plugin_, out.data, "tokenizer_info");
}

json Instance::model_capabilities() {
  auto* t = iface<vhost_model_iface>(VHOST_KIND_MODEL, VHOST_SLOT_END(vhost_model_iface, tokenizer_info),
                                     "tokenizer_info");
  if (t->struct_size < VHOST_SLOT_END(vhost_model_iface, capabilities))
    return model_tokenizer_info();  // built before ABI 1.7: tokenizer_info carried them
  StringSink out;
  check(t->capabilities(self_, &out.sink), "capabilities failed");
  json caps = out.data.empty() ? json::object() : parse_reply(*plugin_, out.data, "capabilities");
  if (!caps.is_object()) throw PluginError(plugin_->label() + ": capabilities: not a JSON object");
  return caps;
}

json Instance::model_train(const json& request, const EventFn& on_event) {
  auto* t = iface<vhost_model_iface>(VHOST_KIND_MODEL, VHOST_SLOT_END(vhost_model_iface, train), "train");
  StringSink out;
  vhost_event_fn cb = nullptr;
  if (on_event)
    cb = [](void* c, const char* e, size_t len) -> int32_t {
      return carry_on<EventFn>(c, [&](const EventFn& fn) { return fn(json::parse(e, e + len)); });
    };
  check(t->train(self_, request.dump().c_str(), cb, const_cast<EventFn*>(&on_event), &out.sink), "train failed");
  return parse_reply(*plugin_, out.data, "train");
}

std::pair<int, int> Instance::backend_process_group() {
  if (plugin_->kind != VHOST_KIND_BACKEND) throw PluginError(plugin_->label() + " is not a backend plugin");
  auto* t = static_cast<const vhost_backend_iface*>(plugin_->desc->kind_iface);
  if (t->struct_size < VHOST_SLOT_END(vhost_backend_iface, process_group)) return {0, 1};
  int32_t rank = 0, world = 1;
  check(t->process_group(self_, &rank, &world), "process_group failed");
  return {rank, world};
}

void Instance::backend_barrier(double timeout_s) {
  auto* t = iface<vhost_backend_iface>(VHOST_KIND_BACKEND, VHOST_SLOT_END(vhost_backend_iface, barrier), "barrier");
  check(t->barrier(self_, timeout_s), "barrier failed");
}

json Instance::dataset_prepare(const json& request) {
  auto* t = iface<vhost_dataset_iface>(VHOST_KIND_DATASET, VHOST_SLOT_END(vhost_dataset_iface, prepare), "prepare");
  StringSink out;
  check(t->prepare(self_, request.dump().c_str(), &out.sink), "prepare failed");
  return parse_reply(*plugin_, out.data, "prepare");
}

std::optional<json> model_tool_if_offered(const LoadedPlugin& plugin, const std::string& name, const json& args) {
  // The descriptor's slot (ABI 1.7; the registry's copy reads NULL past an older plugin's
  // struct_size), else the model table's, where plugins kept their tools before.
  auto fn = plugin.desc->tool;
  if (!fn) fn = table_of<vhost_model_iface>(plugin, VHOST_KIND_MODEL, VHOST_SLOT_END(vhost_model_iface, tool), "tool")->tool;
  StringSink out;
  auto info = take_status(fn(name.c_str(), args.dump().c_str(), &out.sink));
  if (info && info->code == VHOST_ERR_UNSUPPORTED) return std::nullopt;
  if (info) throw PluginError(plugin.label() + ": " + name + ": " + code_name(info->code) + ": " + info->message);
  return out.data.empty() ? json::object() : parse_reply(plugin, out.data, "tool '" + name + "'");
}

json model_tool(const LoadedPlugin& plugin, const std::string& name, const json& args) {
  auto r = model_tool_if_offered(plugin, name, args);
  if (!r) throw PluginError(plugin.label() + ": " + name + ": " + code_name(VHOST_ERR_UNSUPPORTED) + ": this model plugin has no tool '" + name + "'");
  return *r;
}

}  // namespace vhost::host
