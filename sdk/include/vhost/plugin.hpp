// The C++17 layer for plugin authors, on top of the C ABI in vhost/c/vhost.h.
//
// A plugin is one class deriving from a kind's base (vhost::Backend, vhost::Judge, ...), with
//   static std::vector<vhost::Option> options();   // its configuration schema
//   explicit MyPlugin(const vhost::Config&);        // throws vhost::ConfigError on bad values
// and one line:  VHOST_PLUGIN(MyPlugin, "name", "1.0.0", "One-line description")
//
// Everything here compiles into the plugin: exceptions thrown by the plugin become status
// objects at the boundary, JSON is exchanged as text, and nothing of this header's types
// reaches the host. Only `vhost_plugin_get` (ABI 1.6's entry function) is exported.
#pragma once

#include <vhost/c/vhost.h>
#include <vhost/option.hpp>

#include <nlohmann/json.hpp>
#if defined(VHOST_PLUGIN_USES_TORCH)
#include <c10/util/Exception.h>
#endif

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <string_view>
#include <utility>
#include <vector>

#if defined(VHOST_PLUGIN_USES_TORCH)
#include <vhost/torch/abi.hpp>
#endif

namespace vhost {

using json = nlohmann::json;

// An error with a vhost_code and, for configuration problems, the key it is about.
class Error : public std::runtime_error {
 public:
  Error(vhost_code code, const std::string& message, std::string key = {})
      : std::runtime_error(message), code_(code), key_(std::move(key)) {}
  vhost_code code() const noexcept { return code_; }
  const std::string& key() const noexcept { return key_; }

 private:
  vhost_code code_;
  std::string key_;
};

// A configuration value the plugin cannot use; the host reports it at the key's file:line:col.
class ConfigError : public Error {
 public:
  ConfigError(std::string key, const std::string& message)
      : Error(VHOST_ERR_CONFIG, message, std::move(key)) {}
};

// The validated configuration a plugin receives: every option present, defaults filled in.
class Config {
 public:
  explicit Config(json j, const vhost_context* context = nullptr) : j_(std::move(j)), context_(context) {}
  // The instance's id in the pipeline, e.g. "backends.cpu".
  std::string id() const { return j_.value("_id", std::string{}); }
  // The pipeline run the instance is created in (ABI 1.6; NULL from an older host).
  const vhost_context* context() const { return context_; }
  bool has(std::string_view dotted) const { return find(dotted) != nullptr; }
  template <class T>
  T get(std::string_view dotted) const {
    const json* v = find(dotted);
    if (!v) throw ConfigError(std::string(dotted), "missing configuration key");
    try {
      return v->get<T>();
    } catch (const json::exception&) {
      throw ConfigError(std::string(dotted), "has the wrong type (" + std::string(v->type_name()) + ")");
    }
  }
  const json& raw() const { return j_; }

 private:
  const json* find(std::string_view dotted) const {
    const json* cur = &j_;
    while (true) {
      auto dot = dotted.find('.');
      auto part = std::string(dotted.substr(0, dot));
      if (!cur->is_object()) return nullptr;
      auto it = cur->find(part);
      if (it == cur->end()) return nullptr;
      cur = &*it;
      if (dot == std::string_view::npos) return cur;
      dotted.remove_prefix(dot + 1);
    }
  }
  json j_;
  const vhost_context* context_ = nullptr;
};

namespace detail {
// The run whose instance this thread is calling into: set around every call the host makes
// into an instance, so that find_extension / find_instance below search that run (ABI 1.6)
// without each plugin passing it along.
inline const vhost_context*& current_context() {
  thread_local const vhost_context* c = nullptr;
  return c;
}
class ContextScope {
 public:
  explicit ContextScope(const vhost_context* c) : saved_(current_context()) { current_context() = c; }
  ~ContextScope() { current_context() = saved_; }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  const vhost_context* saved_;
};
}  // namespace detail

// ---- kind bases --------------------------------------------------------------------------
class Plugin {
 public:
  virtual ~Plugin() = default;
  // The run this instance was created in (ABI 1.6): what its lookups of other instances search.
  // A thread the plugin starts itself sets it with detail::ContextScope before looking up.
  const vhost_context* context() const { return context_; }
  // A JSON object describing the live instance, shown by the `info` stage.
  virtual json describe() const { return json::object(); }
  // Named extension tables (see vhost_plugin_desc::get_extension). Default: none.
  virtual const void* extension(std::string_view /*name*/) { return nullptr; }

 private:
  const vhost_context* context_ = detail::current_context();  // create_in sets it around `new T`
};

class Backend : public Plugin {
 public:
  // The job's process group (ABI 1.4): rank and size, and a barrier across its ranks. A backend
  // that runs one process keeps these.
  virtual int rank() const { return 0; }
  virtual int world_size() const { return 1; }
  // Returns when every rank called it; throws when one died or timeout_s (> 0) passed.
  virtual void barrier(double /*timeout_s*/) {}
};

// Streams generated text: (sequence, token, text) -> false to cancel that sequence.
using TokenSink = std::function<bool(std::uint32_t, std::int32_t, const std::string&)>;
// Training events (see vhost_event_fn) -> false to ask for a checkpoint and a stop.
using EventSink = std::function<bool(const json&)>;

class Model : public Plugin {
 public:
  virtual std::vector<std::int32_t> encode(std::string_view text, bool bos, bool eos) const = 0;
  virtual std::string decode(const std::vector<std::int32_t>& ids) const = 0;
  // See vhost_model_iface::generate for the request and reply.
  virtual json generate(const json& request, const TokenSink& on_token) = 0;
  // Ids with the byte span [begin, end) of `text` each covers (no BOS/EOS).
  struct Spans {
    std::vector<std::int32_t> ids;
    std::vector<std::uint32_t> begin, end;
  };
  virtual Spans encode_spans(std::string_view /*text*/) const {
    throw Error(VHOST_ERR_UNSUPPORTED, "this model plugin cannot report token spans");
  }
  // {"bos_id", "eos_id", "vocab_size"}, optionally "bos_token", "eos_token".
  virtual json tokenizer_info() const = 0;
  // What the instance offers as a served model (vhost_model_iface::capabilities): context,
  // max_batch, concurrent, template, logprobs, ... Nothing said: one call at a time, no extras.
  virtual json capabilities() const { return json::object(); }
  // See vhost_model_iface::train. `on_event` may be empty.
  virtual json train(const json& /*request*/, const EventSink& /*on_event*/) {
    throw Error(VHOST_ERR_UNSUPPORTED, "this model plugin cannot train");
  }
  // A plugin class (any kind) may also define   static json tool(const std::string& name, const json& args);
  // (vhost_plugin_desc::tool): operations that need no instance; throw Error(VHOST_ERR_UNSUPPORTED)
  // for a name it does not know.
};
class Dataset : public Plugin {
 public:
  // See vhost_dataset_iface::prepare for the request and the reply.
  virtual json prepare(const json& request) = 0;
};
class Judge : public Plugin {
 public:
  // Thread-safe: called concurrently. See vhost_judge_iface for the request/reply shapes.
  virtual json complete(const json& request) = 0;
  // Content moderation (ABI 1.3), as thread-safe; see vhost_judge_iface::moderate. A judge that
  // does not moderate keeps this one.
  virtual json moderate(const json& /*request*/) {
    throw Error(VHOST_ERR_UNSUPPORTED, "this judge does not moderate content");
  }
};

namespace detail {
// One copy per plugin library (the SDK is compiled into each with hidden visibility).
inline const vhost_host_api*& host_api() {
  static const vhost_host_api* api = nullptr;
  return api;
}
inline std::string& plugin_name() {
  static std::string name;
  return name;
}
}  // namespace detail

// Logging through the host, so every plugin's lines look alike and obey --log-level.
inline void log(vhost_log_level level, const std::string& message) {
  if (auto* h = detail::host_api()) h->log(level, detail::plugin_name().c_str(), message.c_str());
}

namespace detail {
inline bool has_run_lookups(const vhost_host_api* h) {
  return h && h->struct_size >= offsetof(vhost_host_api, lookup_extension) + sizeof(h->lookup_extension) &&
         current_context();
}
inline const char* torch_abi() {
#if defined(VHOST_PLUGIN_USES_TORCH)
  return VHOST_TORCH_ABI;
#else
  return nullptr;
#endif
}
// A status another call returned to this plugin, as an Error of ours (and freed).
inline Error error_from(vhost_status* s, const std::string& prefix) {
  auto* h = host_api();
  auto code = static_cast<vhost_code>(h->status_code(s));
  std::string msg = prefix + h->status_message(s);
  h->status_free(s);
  return Error(code, msg);
}
}  // namespace detail

// Another instance's extension table, e.g. a backend's "torch.backend" for a model plugin;
// throws an Error saying why not (no such instance in this run, another libtorch, none offered).
inline const void* lookup_extension(const std::string& instance_ref, const std::string& name) {
  auto* h = detail::host_api();
  if (!h) throw Error(VHOST_ERR_INTERNAL, "the plugin was not loaded by a vhost host");
  if (detail::has_run_lookups(h)) {
    const void* t = nullptr;
    if (vhost_status* s = h->lookup_extension(detail::current_context(), instance_ref.c_str(), name.c_str(),
                                              detail::torch_abi(), &t))
      throw detail::error_from(s, "");
    return t;
  }
  const void* t = h->find_extension(instance_ref.c_str(), name.c_str(), detail::torch_abi());
  if (!t) throw Error(VHOST_ERR_CONFIG, "instance '" + instance_ref + "' offers no extension '" + name + "' to this plugin");
  return t;
}

// The same, NULL instead of an error.
inline const void* find_extension(const std::string& instance_ref, const std::string& name) {
  try {
    return lookup_extension(instance_ref, name);
  } catch (const Error&) {
    return nullptr;
  }
}

// Another instance's kind table and self pointer (see vhost_host_api::lookup_instance).
inline std::pair<const void*, void*> find_instance(const std::string& instance_ref, const char* kind) {
  auto* h = detail::host_api();
  void* self = nullptr;
  const void* t = nullptr;
  if (detail::has_run_lookups(h)) {
    if (vhost_status* s = h->lookup_instance(detail::current_context(), instance_ref.c_str(), kind, &t, &self))
      throw detail::error_from(s, "");
    return {t, self};
  }
  if (!h || h->struct_size < offsetof(vhost_host_api, find_instance) + sizeof(h->find_instance) || !h->find_instance)
    throw Error(VHOST_ERR_UNSUPPORTED, "this host is too old to let plugins call each other (ABI 1.1 needed)");
  t = h->find_instance(instance_ref.c_str(), kind, &self);
  if (!t) throw Error(VHOST_ERR_CONFIG, "no " + std::string(kind) + " instance '" + instance_ref + "' in this pipeline");
  return {t, self};
}

// A model instance of the pipeline seen through the model kind's C table: how a dataset or
// judge plugin tokenizes without knowing which model plugin it talks to.
class ModelClient {
 public:
  explicit ModelClient(const std::string& instance_ref) : ref_(instance_ref) {
    auto [t, s] = find_instance(instance_ref, VHOST_KIND_MODEL);
    t_ = static_cast<const vhost_model_iface*>(t);
    self_ = s;
    if (t_->struct_size < offsetof(vhost_model_iface, tokenizer_info) + sizeof(t_->tokenizer_info))
      throw Error(VHOST_ERR_UNSUPPORTED, "model instance '" + ref_ + "' was built against an older SDK: rebuild it");
  }
  std::vector<std::int32_t> encode(std::string_view text, bool bos = false, bool eos = false) const {
    std::vector<std::int32_t> ids;
    check(t_->encode(self_, text.data(), text.size(), (bos ? VHOST_ENCODE_BOS : 0u) | (eos ? VHOST_ENCODE_EOS : 0u),
                     [](void* c, const int32_t* p, size_t n) { static_cast<std::vector<std::int32_t>*>(c)->assign(p, p + n); },
                     &ids));
    return ids;
  }
  Model::Spans encode_spans(std::string_view text) const {
    Model::Spans r;
    check(t_->encode_spans(self_, text.data(), text.size(),
                           [](void* c, const int32_t* ids, const uint32_t* b, const uint32_t* e, size_t n) {
                             auto* r = static_cast<Model::Spans*>(c);
                             r->ids.assign(ids, ids + n);
                             r->begin.assign(b, b + n);
                             r->end.assign(e, e + n);
                           },
                           &r));
    return r;
  }
  std::string decode(const std::vector<std::int32_t>& ids) const {
    return collect([&](vhost_sink* sink) { return t_->decode(self_, ids.data(), ids.size(), sink); });
  }
  json tokenizer_info() const {
    return json::parse(collect([&](vhost_sink* sink) { return t_->tokenizer_info(self_, sink); }));
  }
  // The model's capabilities; from a model plugin older than ABI 1.7, its tokenizer_info (which
  // carried them then).
  json capabilities() const {
    if (t_->struct_size < offsetof(vhost_model_iface, capabilities) + sizeof(t_->capabilities)) return tokenizer_info();
    return json::parse(collect([&](vhost_sink* sink) { return t_->capabilities(self_, sink); }));
  }

 private:
  // What `call` writes to the sink it is given, once it returned no status.
  template <class F>
  std::string collect(F&& call) const {
    std::string out;
    vhost_sink sink{&out, [](void* c, const char* d, size_t n) { static_cast<std::string*>(c)->append(d, n); }};
    check(call(&sink));
    return out;
  }
  // A status from the other plugin becomes an Error of ours, naming the instance.
  void check(vhost_status* s) const {
    if (!s) return;
    Error e = detail::error_from(s, "model instance '" + ref_ + "': ");
    throw Error(e.code() == VHOST_ERR_CONFIG ? VHOST_ERR_RUNTIME : e.code(), e.what());
  }
  std::string ref_;
  const vhost_model_iface* t_ = nullptr;
  void* self_ = nullptr;
};

namespace detail {

template <class F>
vhost_status* guard(F&& f) noexcept {
  const vhost_host_api* h = host_api();
  try {
    f();
    return nullptr;
  } catch (const Error& e) {
    return h->status_new(e.code(), e.what(), e.key().empty() ? nullptr : e.key().c_str());
#if defined(VHOST_PLUGIN_USES_TORCH)
  } catch (const c10::Error& e) {  // its what() carries a C++ backtrace: not for users
    return h->status_new(VHOST_ERR_INTERNAL, e.what_without_backtrace(), nullptr);
#endif
  } catch (const std::system_error& e) {  // std::filesystem and stream failures: the disk, not a bug
    return h->status_new(VHOST_ERR_IO, e.what(), nullptr);
  } catch (const std::exception& e) {
    return h->status_new(VHOST_ERR_INTERNAL, e.what(), nullptr);
  } catch (...) {
    return h->status_new(VHOST_ERR_INTERNAL, "unknown exception", nullptr);
  }
}

inline void write(vhost_sink* sink, const std::string& s) { sink->write(sink->ctx, s.data(), s.size()); }
inline Plugin* self(void* p) { return static_cast<Plugin*>(p); }

// guard() for a call into instance `s`: its run is the one this thread's lookups search.
template <class F>
vhost_status* guard_in(void* s, F&& f) noexcept {
  ContextScope scope(self(s)->context());
  return guard(std::forward<F>(f));
}

template <class T>
constexpr const char* kind_of() {
  if constexpr (std::is_base_of_v<Backend, T>) return VHOST_KIND_BACKEND;
  else if constexpr (std::is_base_of_v<Model, T>) return VHOST_KIND_MODEL;
  else if constexpr (std::is_base_of_v<Dataset, T>) return VHOST_KIND_DATASET;
  else if constexpr (std::is_base_of_v<Judge, T>) return VHOST_KIND_JUDGE;
  else static_assert(std::is_base_of_v<Judge, T>, "a plugin derives from vhost::Backend, Model, Dataset or Judge");
}

template <class T, class = void>
struct has_tool : std::false_type {};
template <class T>
struct has_tool<T, std::void_t<decltype(T::tool(std::string(), json()))>> : std::true_type {};

template <class T>
const void* kind_iface() {
  if constexpr (std::is_base_of_v<Judge, T>) {
    static const vhost_judge_iface iface = {
        sizeof(vhost_judge_iface),
        [](void* s, const char* request, vhost_sink* reply) {
          return guard_in(s, [&] {
            auto r = static_cast<Judge*>(self(s))->complete(json::parse(request));
            write(reply, r.dump());
          });
        },
        [](void* s, const char* request, vhost_sink* reply) {
          return guard_in(s, [&] {
            auto r = static_cast<Judge*>(self(s))->moderate(json::parse(request));
            write(reply, r.dump());
          });
        }};
    return &iface;
  } else if constexpr (std::is_base_of_v<Backend, T>) {
    static const vhost_backend_iface iface = {
        sizeof(vhost_backend_iface),
        [](void* s, int32_t* rank, int32_t* world) {
          return guard_in(s, [&] {
            auto* b = static_cast<Backend*>(self(s));
            *rank = b->rank();
            *world = b->world_size();
          });
        },
        [](void* s, double timeout_s) { return guard_in(s, [&] { static_cast<Backend*>(self(s))->barrier(timeout_s); }); }};
    return &iface;
  } else if constexpr (std::is_base_of_v<Model, T>) {
    static const vhost_model_iface iface = {
        sizeof(vhost_model_iface),
        [](void* s, const char* text, size_t len, uint32_t flags, vhost_ids_fn out, void* ctx) {
          return guard_in(s, [&] {
            auto ids = static_cast<Model*>(self(s))->encode(std::string_view(text, len), flags & VHOST_ENCODE_BOS,
                                                            flags & VHOST_ENCODE_EOS);
            out(ctx, ids.data(), ids.size());
          });
        },
        [](void* s, const int32_t* ids, size_t n, vhost_sink* text) {
          return guard_in(s, [&] { write(text, static_cast<Model*>(self(s))->decode(std::vector<std::int32_t>(ids, ids + n))); });
        },
        [](void* s, const char* request, vhost_token_fn on_token, void* ctx, vhost_sink* reply) {
          return guard_in(s, [&] {
            TokenSink sink;
            if (on_token)
              sink = [&](std::uint32_t seq, std::int32_t tok, const std::string& t) {
                return on_token(ctx, seq, tok, t.data(), t.size()) == 0;
              };
            write(reply, static_cast<Model*>(self(s))->generate(json::parse(request), sink).dump());
          });
        },
        [](const char* name, const char*, vhost_sink*) {  // tools are the descriptor's since 1.7
          return guard([&] {
            throw Error(VHOST_ERR_UNSUPPORTED, std::string("tool '") + name + "': tools are in the plugin's descriptor (ABI 1.7)");
          });
        },
        [](void* s, const char* text, size_t len, vhost_spans_fn out, void* ctx) {
          return guard_in(s, [&] {
            auto r = static_cast<Model*>(self(s))->encode_spans(std::string_view(text, len));
            out(ctx, r.ids.data(), r.begin.data(), r.end.data(), r.ids.size());
          });
        },
        [](void* s, vhost_sink* out) {
          return guard_in(s, [&] { write(out, static_cast<Model*>(self(s))->tokenizer_info().dump()); });
        },
        [](void* s, const char* request, vhost_event_fn on_event, void* ctx, vhost_sink* result) {
          return guard_in(s, [&] {
            EventSink sink;
            if (on_event)
              sink = [&](const json& e) {
                std::string d = e.dump();
                return on_event(ctx, d.data(), d.size()) == 0;
              };
            write(result, static_cast<Model*>(self(s))->train(json::parse(request), sink).dump());
          });
        },
        [](void* s, vhost_sink* out) {
          return guard_in(s, [&] { write(out, static_cast<Model*>(self(s))->capabilities().dump()); });
        }};
    return &iface;
  } else {
    static const vhost_dataset_iface iface = {
        sizeof(vhost_dataset_iface), [](void* s, const char* request, vhost_sink* stats) {
          return guard_in(s, [&] { write(stats, static_cast<Dataset*>(self(s))->prepare(json::parse(request)).dump()); });
        }};
    return &iface;
  }
}

template <class T>
const vhost_plugin_desc* describe_plugin(const vhost_host_api* host, const char* name,
                                         const char* version, const char* description) {
  host_api() = host;
  plugin_name() = name;
  static std::string options = [] {
    json arr = json::array();
    for (const Option& o : T::options()) arr.push_back(o.to_json());
    return arr.dump();
  }();
  static vhost_plugin_desc d = [&] {
    vhost_plugin_desc x{};
    x.struct_size = sizeof(vhost_plugin_desc);
    x.abi_major = VHOST_ABI_MAJOR;
    x.abi_minor = VHOST_ABI_MINOR;
    x.name = name;
    x.kind = kind_of<T>();
    x.version = version;
    x.description = description;
#if defined(VHOST_PLUGIN_USES_TORCH)
    x.torch_abi = VHOST_TORCH_ABI;
#else
    x.torch_abi = nullptr;
#endif
    x.options_json = options.c_str();
    x.create = [](const char* config, void** out) {
      *out = nullptr;
      return guard([&] { *out = static_cast<Plugin*>(new T(Config(json::parse(config)))); });
    };
    x.create_in = [](const vhost_context* context, const char* config, void** out) {
      *out = nullptr;
      ContextScope scope(context);  // Plugin::context_ takes it during `new T`
      return guard([&] { *out = static_cast<Plugin*>(new T(Config(json::parse(config), context))); });
    };
    x.destroy = [](void* s) {
      ContextScope scope(self(s)->context());
      delete self(s);
    };
    x.describe = [](void* s, vhost_sink* out) {
      return guard_in(s, [&] { write(out, self(s)->describe().dump()); });
    };
    x.kind_iface = kind_iface<T>();
    if constexpr (has_tool<T>::value)
      x.tool = [](const char* name, const char* args, vhost_sink* result) {
        return guard([&] { write(result, T::tool(name, json::parse(args)).dump()); });
      };
    x.get_extension = [](void* s, const char* n) -> const void* {
      ContextScope scope(self(s)->context());
      try {
        return self(s)->extension(n);
      } catch (...) {
        return nullptr;
      }
    };
    return x;
  }();
  return &d;
}

}  // namespace detail
}  // namespace vhost

// Exports the plugin under the one symbol the host looks for (vhost_plugin_get, ABI 1.6). Use
// once, at global scope, in one source file of the plugin.
#define VHOST_PLUGIN(Class, name, version, description)                                     \
  extern "C" VHOST_PLUGIN_EXPORT const vhost_plugin_desc* vhost_plugin_get(const vhost_host_api* host) { \
    return ::vhost::detail::describe_plugin<Class>(host, name, version, description);         \
  }
