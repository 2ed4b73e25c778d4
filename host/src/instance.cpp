#include "instance.hpp"

#include "host_api.hpp"

#include <cstddef>

namespace vhost::host {

namespace {
struct StringSink {
  std::string data;
  vhost_sink sink{this, [](void* ctx, const char* d, std::size_t n) {
                    static_cast<StringSink*>(ctx)->data.append(d, n);
                  }};
};
}  // namespace

Instance::Instance(std::shared_ptr<const LoadedPlugin> plugin, std::string id, json config,
                   std::map<std::string, std::string> locations, std::string source_name)
    : plugin_(std::move(plugin)), id_(std::move(id)), locations_(std::move(locations)),
      source_name_(std::move(source_name)) {
  config["_id"] = id_;
  void* out = nullptr;
  vhost_status* st = plugin_->desc->create(config.dump().c_str(), &out);
  if (st) {
    if (out) plugin_->desc->destroy(out);
    check(st, "could not create '" + id_ + "'");
  }
  if (!out) throw PluginError(plugin_->label() + ": create returned no instance for '" + id_ + "'");
  self_ = out;
  publish_instance(id_, this);
}

Instance::~Instance() {
  withdraw_instance(id_);
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
  throw PluginError(plugin_->label() + ": " + what + ": " + code_name(info->code) + ": " + info->message);
}

template <class Iface>
const Iface* Instance::iface(std::size_t needed_size, const char* slot) const {
  auto* t = static_cast<const Iface*>(plugin_->desc->kind_iface);
  if (t->struct_size < needed_size)
    throw PluginError(plugin_->label() + ": its " + plugin_->kind + " table is too old to have '" + slot +
                      "': rebuild it against this SDK");
  return t;
}

json Instance::describe() {
  StringSink out;
  check(plugin_->desc->describe(self_, &out.sink), "describe failed");
  if (out.data.empty()) return json::object();
  try {
    return json::parse(out.data);
  } catch (const json::exception& e) {
    throw PluginError(plugin_->label() + ": describe returned invalid JSON: " + e.what());
  }
}

const void* Instance::extension(const std::string& name) {
  return plugin_->desc->get_extension(self_, name.c_str());
}

json Instance::judge_complete(const json& request) {
  if (plugin_->kind != VHOST_KIND_JUDGE) throw PluginError(plugin_->label() + " is not a judge");
  auto* t = iface<vhost_judge_iface>(offsetof(vhost_judge_iface, complete) + sizeof(vhost_judge_iface::complete), "complete");
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

}  // namespace vhost::host
