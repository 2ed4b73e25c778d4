/* vhost plugin ABI, version 1.
 *
 * This header is the whole contract between the vhost host and a plugin shared library. It is
 * plain C so that a plugin built with another compiler, another C++ standard library or no
 * libtorch at all still loads. Rules (see docs/plugins.md for the reasoning):
 *
 *  - Every table starts with `struct_size`; tables only grow at the end (append-only). A caller
 *    checks `struct_size` before touching a slot that a newer minor version added.
 *  - No C++ exception, std:: object, libtorch object or allocation crosses this boundary.
 *    Strings go in as `const char*` valid for the duration of the call (copy what you keep) and
 *    come out through a `vhost_sink` the caller provides (the callee writes, the caller owns).
 *  - Errors are `vhost_status*`: NULL means success; a non-NULL status is created with the
 *    host's `status_new` and freed by the host.
 *  - Structured data (configurations, descriptions, requests, replies) crosses as UTF-8 JSON text.
 *  - Libraries are never unloaded: instances are destroyed, the code stays mapped.
 *  - The one exception to "no C++ objects": extensions whose name starts with "torch." hand out
 *    libtorch objects, and the host only passes them between plugins whose `torch_abi` strings are
 *    identical (same libtorch version, C++ ABI, compiler family and GPU runtime).
 */
#ifndef VHOST_C_VHOST_H
#define VHOST_C_VHOST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The SDK's ABI version. A host loads a plugin only if the majors are equal and the plugin's
 * minor is not newer than the host's. (The #ifndef lets the test suite build a plugin that
 * claims another version; plugin authors never define these.) */
#ifndef VHOST_ABI_MAJOR
#define VHOST_ABI_MAJOR 1
#endif
#ifndef VHOST_ABI_MINOR
#define VHOST_ABI_MINOR 0
#endif

/* The one symbol a plugin exports (through BOOST_DLL_ALIAS; see vhost/plugin.hpp). */
#define VHOST_PLUGIN_ENTRY_SYMBOL "vhost_plugin_entry"

/* ---- status ------------------------------------------------------------------------------ */
typedef enum vhost_code {
  VHOST_OK = 0,
  VHOST_ERR_INVALID_ARGUMENT = 1, /* a request or argument is malformed */
  VHOST_ERR_CONFIG = 2,           /* a configuration value is unusable; `key` names it */
  VHOST_ERR_IO = 3,               /* file or network failure */
  VHOST_ERR_RUNTIME = 4,          /* anything else that went wrong while running */
  VHOST_ERR_UNSUPPORTED = 5,      /* valid, but this plugin cannot do it */
  VHOST_ERR_CANCELLED = 6,        /* the caller cancelled */
  VHOST_ERR_INTERNAL = 7          /* a bug: an unexpected exception inside the plugin */
} vhost_code;

typedef struct vhost_status vhost_status; /* opaque; owned by the host */

/* ---- output ------------------------------------------------------------------------------ */
/* A byte sink the caller provides; the callee may call `write` any number of times. */
typedef struct vhost_sink {
  void* ctx;
  void (*write)(void* ctx, const char* data, size_t size);
} vhost_sink;

/* ---- what the host offers a plugin ------------------------------------------------------- */
typedef enum vhost_log_level {
  VHOST_LOG_TRACE = 0,
  VHOST_LOG_DEBUG = 1,
  VHOST_LOG_INFO = 2,
  VHOST_LOG_WARN = 3,
  VHOST_LOG_ERROR = 4
} vhost_log_level;

typedef struct vhost_host_api {
  uint32_t struct_size;
  uint16_t abi_major;
  uint16_t abi_minor;
  const char* host_version;
  /* Creates a status for the plugin to return. `key` (nullable) is the configuration key the
   * error is about, relative to the plugin's own table; the host turns it into file:line:col. */
  vhost_status* (*status_new)(int32_t code, const char* message, const char* key);
  void (*log)(int32_t level, const char* plugin_name, const char* message);
  /* Returns a table another plugin instance offers under an extension name, or NULL. The host
   * enforces the torch_abi rule for "torch." names. `instance_ref` is the id of an instance as
   * the pipeline names it (e.g. "backends.cpu"), which the plugin got in its config. */
  const void* (*find_extension)(const char* instance_ref, const char* extension_name,
                                const char* requester_torch_abi);
} vhost_host_api;

/* ---- plugin kinds -------------------------------------------------------------------------- */
#define VHOST_KIND_BACKEND "backend"
#define VHOST_KIND_MODEL "model"
#define VHOST_KIND_DATASET "dataset"
#define VHOST_KIND_JUDGE "judge"

/* A judge answers chat requests (an OpenAI-style chat completion). Must be thread-safe: the
 * evaluator calls `complete` from several threads at once on one instance.
 *   request: {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}],
 *             "temperature": 0.0, "max_tokens": 1024}
 *   reply:   {"text": "...", "model": "...",
 *             "usage": {"prompt_tokens": n, "completion_tokens": n}, "cost_usd": x} */
typedef struct vhost_judge_iface {
  uint32_t struct_size;
  vhost_status* (*complete)(void* self, const char* request_json, vhost_sink* reply_json);
} vhost_judge_iface;

/* A backend owns a compute device (its threads, seed, default dtype) and, on several devices,
 * the process group. Its libtorch objects reach model plugins through the extension
 * "torch.backend" (see vhost/torch/backend.hpp). Nothing else is needed in C. */
typedef struct vhost_backend_iface {
  uint32_t struct_size;
} vhost_backend_iface;

/* Model and dataset kinds: their tables are defined by the issues that make those kinds real;
 * until then they carry only the common slots of the descriptor. */
typedef struct vhost_model_iface {
  uint32_t struct_size;
} vhost_model_iface;

typedef struct vhost_dataset_iface {
  uint32_t struct_size;
} vhost_dataset_iface;

/* ---- the descriptor a plugin returns ------------------------------------------------------- */
typedef struct vhost_plugin_desc {
  uint32_t struct_size;
  uint16_t abi_major;
  uint16_t abi_minor;
  const char* name;        /* [a-z0-9_-]+, unique within its kind */
  const char* kind;        /* one of VHOST_KIND_* */
  const char* version;     /* the plugin's own version, free text (semver advised) */
  const char* description; /* one line */
  /* NULL for plugins that do not use libtorch; otherwise the string VHOST_TORCH_ABI yields. */
  const char* torch_abi;
  /* The plugin's options as a JSON array of
   *   {"key": "threads", "type": "integer", "default": 0, "help": "...",
   *    "min": 0, "max": 1024, "choices": [...]}
   * types: string, path, integer, float, boolean, string_list, path_list, table.
   * A missing "default" makes the key required. Dotted keys ("sampling.top_p") are nested
   * tables. The host validates a pipeline's table against this before `create`. */
  const char* options_json;

  /* Creates an instance from a validated configuration (JSON object with every option present,
   * defaults filled, paths made absolute, plus "_id": the instance's id in the pipeline). */
  vhost_status* (*create)(const char* config_json, void** out_instance);
  void (*destroy)(void* instance);
  /* A JSON object describing the live instance (device, files, sizes...), for `info`. */
  vhost_status* (*describe)(void* instance, vhost_sink* out_json);
  /* The kind's table (vhost_judge_iface, ...). Never NULL. */
  const void* kind_iface;
  /* Optional named tables ("torch.backend", ...); NULL when unknown. */
  const void* (*get_extension)(void* instance, const char* name);
} vhost_plugin_desc;

/* The exported entry point: called once per process; the host api pointer stays valid for the
 * life of the process. */
typedef const vhost_plugin_desc* (*vhost_plugin_entry_fn)(const vhost_host_api* host);

#ifdef __cplusplus
}
#endif
#endif /* VHOST_C_VHOST_H */
