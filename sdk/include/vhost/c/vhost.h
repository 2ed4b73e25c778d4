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
#define VHOST_ABI_MINOR 7
#endif

/* The symbol a plugin exports: \since 1.6 an extern "C" function of type vhost_plugin_entry_fn
 * (declare it with VHOST_PLUGIN_EXPORT below), so a plugin needs nothing but this header. */
#define VHOST_PLUGIN_ENTRY_FUNCTION "vhost_plugin_get"
/* \since 1.0, still loaded: what plugins built against SDK 1.0-1.5 export instead, a data
 * symbol holding a pointer to the entry function (Boost.DLL's BOOST_DLL_ALIAS). The host looks
 * for VHOST_PLUGIN_ENTRY_FUNCTION first. */
#define VHOST_PLUGIN_ENTRY_SYMBOL "vhost_plugin_entry"

#if defined(_WIN32)
#define VHOST_PLUGIN_EXPORT __declspec(dllexport)
#else
#define VHOST_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* ---- status ------------------------------------------------------------------------------ */
typedef enum vhost_code {
  VHOST_OK = 0,
  VHOST_ERR_INVALID_ARGUMENT = 1, /* a request or argument is malformed */
  VHOST_ERR_CONFIG = 2,           /* a configuration value is unusable; `key` names it */
  VHOST_ERR_IO = 3,               /* file or network failure */
  VHOST_ERR_RUNTIME = 4,          /* anything else that went wrong while running */
  VHOST_ERR_UNSUPPORTED = 5,      /* valid, but this plugin cannot do it */
  VHOST_ERR_CANCELLED = 6,        /* the caller cancelled */
  VHOST_ERR_INTERNAL = 7,         /* a bug: an unexpected exception inside the plugin */
  VHOST_ERR_BUSY = 8              /* \since 1.2: at capacity (a full queue): retry later */
} vhost_code;

typedef struct vhost_status vhost_status; /* opaque; owned by the host */

/* \since 1.6: the pipeline run an instance belongs to (opaque; owned by the host). Instance ids
 * ("backends.cpu") are unique within a run, not within a process: two pipelines running in one
 * process may both have a "backends.cpu". A plugin that looks up other instances does it through
 * the context its instance was created in (vhost_plugin_desc::create_in). */
typedef struct vhost_context vhost_context;

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
  uint32_t struct_size; /* \since 1.0, like every slot without a \since */
  uint16_t abi_major;
  uint16_t abi_minor;
  const char* host_version;
  /* Creates a status for the plugin to return. `key` (nullable) is the configuration key the
   * error is about, relative to the plugin's own table; the host turns it into file:line:col. */
  vhost_status* (*status_new)(int32_t code, const char* message, const char* key);
  void (*log)(int32_t level, const char* plugin_name, const char* message);
  /* Returns a table another plugin instance offers under an extension name, or NULL. The host
   * enforces the torch_abi rule for "torch." names. `instance_ref` is the id of an instance as
   * the pipeline names it (e.g. "backends.cpu"), which the plugin got in its config.
   * Superseded by lookup_extension (1.6): this one searches every run of the process and finds
   * nothing when two runs have an instance of that id. */
  const void* (*find_extension)(const char* instance_ref, const char* extension_name,
                                const char* requester_torch_abi);
  /* \since 1.1: another instance's kind table (vhost_model_iface, ...) and its `self`, so that a
   * plugin can call it through its kind's interface (a dataset tokenizing with a model). NULL
   * when no instance has that id or it is not of `kind`. Superseded by lookup_instance (1.6), as
   * find_extension is. */
  const void* (*find_instance)(const char* instance_ref, const char* kind, void** self);
  /* \since 1.1: reading and freeing a status that another plugin's call returned to this plugin. */
  int32_t (*status_code)(const vhost_status* status);
  const char* (*status_message)(const vhost_status* status);
  void (*status_free)(vhost_status* status);
  /* \since 1.6: find_instance within one run. NULL (success) with *table and *self set, or a status
   * saying why not (VHOST_ERR_CONFIG: no instance of that id in the run, or not of `kind`). */
  vhost_status* (*lookup_instance)(const vhost_context* context, const char* instance_ref, const char* kind,
                                   const void** table, void** self);
  /* \since 1.6: find_extension within one run. NULL (success) with *table set, or a status:
   * VHOST_ERR_CONFIG (no such instance; a "torch." table refused for a different torch_abi) or
   * VHOST_ERR_UNSUPPORTED (the instance offers no extension of that name). */
  vhost_status* (*lookup_extension)(const vhost_context* context, const char* instance_ref,
                                    const char* extension_name, const char* requester_torch_abi,
                                    const void** table);
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
  /* \since 1.3: content moderation (the serve stage's `moderators`). Thread-safe like complete.
   *   request: {"input": ["text", ...]}
   *   reply:   {"flagged": true|false, "categories": ["violence", ...] (the flagged ones), "model": "..."}
   * VHOST_ERR_UNSUPPORTED from a judge that does not moderate. */
  vhost_status* (*moderate)(void* self, const char* request_json, vhost_sink* reply_json);
} vhost_judge_iface;

/* A backend owns a compute device (its threads, seed, default dtype) and, on several devices,
 * the process group. Its libtorch objects reach model plugins through the extension
 * "torch.backend" (see vhost/torch/backend.hpp). */
typedef struct vhost_backend_iface {
  uint32_t struct_size;
  /* \since 1.4: the job's process group as the host needs it to run a stage on one rank while the
   * others wait (a `prepare` writing files every rank reads). `rank` and `world_size` are 0 and
   * 1 for a single process. */
  vhost_status* (*process_group)(void* self, int32_t* rank, int32_t* world_size);
  /* \since 1.4: blocks until every rank of the group has called it, or fails (VHOST_ERR_RUNTIME) when a
   * rank died or `timeout_s` seconds passed (<= 0: the backend's own timeout). */
  vhost_status* (*barrier)(void* self, double timeout_s);
} vhost_backend_iface;

/* A model family (LLaMA...): tokenizer, generation, training.
 * Instances must be thread-safe for encode/decode. generate is called from one thread at a time
 * unless capabilities reports "concurrent": true; "max_batch" then says how many calls the
 * instance decodes together. */
typedef void (*vhost_ids_fn)(void* ctx, const int32_t* ids, size_t n);
/* One piece of generated text for sequence `sequence` (whole UTF-8 characters; never part of a
 * stop string). Return nonzero to cancel that sequence.
 * \since 1.5: where the request has "stream_logprobs": true (and capabilities says "stream_logprobs"),
 * the scores of the tokens generated since the last piece come first, as a call with token
 * VHOST_TOKEN_SCORES and text a JSON array of {"id", "text", "logprob", "top": [[id, text,
 * logprob]...]} (generate's "logprobs" entries), the last ones before the sequence ends. */
#define VHOST_TOKEN_SCORES (-2)
typedef int32_t (*vhost_token_fn)(void* ctx, uint32_t sequence, int32_t token, const char* text, size_t len);
/* Token ids with, for each, the byte span [begin, end) of the encoded text it came from. */
typedef void (*vhost_spans_fn)(void* ctx, const int32_t* ids, const uint32_t* begin, const uint32_t* end, size_t n);
/* A training event (JSON object: {"event": "start"|"step"|"checkpoint"|"resume"|"end", ...}).
 * Return nonzero to ask the trainer to save a checkpoint and stop (SIGTERM, Ctrl-C). */
typedef int32_t (*vhost_event_fn)(void* ctx, const char* event_json, size_t len);
#define VHOST_ENCODE_BOS 1u
#define VHOST_ENCODE_EOS 2u

typedef struct vhost_model_iface {
  uint32_t struct_size;
  /* Text to token ids; user text is never parsed for special tokens. */
  vhost_status* (*encode)(void* self, const char* text, size_t len, uint32_t flags, vhost_ids_fn out, void* ctx);
  vhost_status* (*decode)(void* self, const int32_t* ids, size_t n, vhost_sink* text);
  /* request: {"prompts": ["..."]} or {"prompt_ids": [[1, 2]]}, "add_bos": true, "max_tokens": 256,
   *          "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
   *          "presence_penalty": 0, "frequency_penalty": 0, "seed": 42 (optional), "stop": ["..."],
   *          where capabilities says "logprobs": true, also "logprobs": K and "prompt_logprobs": K
   *          (0..20 alternatives; "max_tokens": 0 with prompt_logprobs only scores); where they
   *          say "embeddings": true, {"embed": true, prompts...} answers {"data": [{"index",
   *          "embedding": [...]}], "usage": {"prompt_tokens"}} instead (mean-pooled, normalised)
   * reply:   {"choices": [{"index", "text", "tokens": [...], "finish_reason": "stop"|"length"|"cancelled",
   *                        "logprobs"/"prompt_logprobs": [{"id", "text", "logprob" (null for the
   *                        first prompt token), "top": [[id, text, logprob]...]}...]}],
   *           "usage": {"prompt_tokens", "completion_tokens"}}
   * "text" continues the prompt's text (its first space kept). on_token may be NULL. */
  vhost_status* (*generate)(void* self, const char* request_json, vhost_token_fn on_token, void* ctx,
                            vhost_sink* reply_json);
  /* Plugin-level operations ("init", "train-tokenizer", "encode", "convert"...): args JSON in,
   * result JSON out. Unknown names return VHOST_ERR_UNSUPPORTED.
   * Superseded in 1.7 by vhost_plugin_desc.tool (any kind, not in an instance's table); the host
   * calls this one only for a model plugin whose descriptor has none. */
  vhost_status* (*tool)(const char* name, const char* args_json, vhost_sink* result_json);
  /* \since 1.1: like encode without BOS/EOS, plus each id's byte span in `text`: how training labels
   * find the tokens of an assistant's reply inside a rendered conversation. */
  vhost_status* (*encode_spans)(void* self, const char* text, size_t len, vhost_spans_fn out, void* ctx);
  /* \since 1.1: the tokenizer: {"bos_id", "eos_id", "vocab_size"}, optional "bos_token"/"eos_token"
   * (their text). Before 1.7 it also carried what `capabilities` now says; the host reads those
   * keys here from a plugin without `capabilities`. */
  vhost_status* (*tokenizer_info)(void* self, vhost_sink* info_json);
  /* \since 1.2: fine-tunes the instance's weights on a prepared dataset (vhost/token_dataset.hpp),
   * resuming from the newest complete checkpoint in request.out. Request and reply: docs/training.md.
   * Events stream through on_event (may be NULL). */
  vhost_status* (*train)(void* self, const char* request_json, vhost_event_fn on_event, void* ctx,
                         vhost_sink* result_json);
  /* \since 1.7: what the instance offers as a served model, a JSON object, every key optional:
   *   "context": positions it attends over; "max_batch": concurrent generate calls worth making
   *   (1); "concurrent": generate may be called from several threads (false); "template": its
   *   conversation template's name, "template_definition": that template (vhost/conversation.hpp
   *   template_to_json), "templates": other templates it was given, by name; "logprobs",
   *   "stream_logprobs", "embeddings": generate takes those requests (false); "adapters": the
   *   LoRA adapter names generate takes as "adapter". */
  vhost_status* (*capabilities)(void* self, vhost_sink* caps_json);
} vhost_model_iface;

/* A dataset turns a raw source (ShareGPT JSON...) into a prepared, tokenized dataset on disk
 * (the layout in vhost/token_dataset.hpp), tokenizing with a model instance it finds through
 * host->find_instance.
 *   request: {"out_dir": "...", "model": "models.m" (instance id), "overwrite": false}
 *   reply:   the statistics report (JSON object: counts, drops by reason, lengths). */
typedef struct vhost_dataset_iface {
  uint32_t struct_size;
  /* \since 1.1 */
  vhost_status* (*prepare)(void* self, const char* request_json, vhost_sink* stats_json);
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
   * types: string, path, integer, float, boolean, string_list, path_list, table, instance.
   * An "instance" option names another instance of the pipeline ({"kind": "backend"} says which
   * kind): the host checks it exists, passes its full id ("backends.cpu"), and creates it first.
   * Empty means "the only one of that kind", or none when none is declared.
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
  /* \since 1.6, optional (NULL: the host calls `create`): `create` with the run the instance
   * belongs to, for lookup_instance / lookup_extension; valid until `destroy`. A descriptor
   * built against an older header is shorter: the host copies it into a zeroed one, so a slot
   * past its struct_size reads as NULL. */
  vhost_status* (*create_in)(const vhost_context* context, const char* config_json, void** out_instance);
  /* \since 1.7, optional (NULL: none): operations of the plugin that need no instance ("init",
   * "convert", "merge"...): args JSON in, result JSON out; an unknown name returns
   * VHOST_ERR_UNSUPPORTED. Any kind may have them (before 1.7 only models did, in their table). */
  vhost_status* (*tool)(const char* name, const char* args_json, vhost_sink* result_json);
} vhost_plugin_desc;

/* The exported entry point: called once per process; the host api pointer stays valid for the
 * life of the process. A plugin written in C defines it as
 *   VHOST_PLUGIN_EXPORT const vhost_plugin_desc* vhost_plugin_get(const vhost_host_api* host);
 * (with extern "C" in C++). */
typedef const vhost_plugin_desc* (*vhost_plugin_entry_fn)(const vhost_host_api* host);

#ifdef __cplusplus
}
#endif
#endif /* VHOST_C_VHOST_H */
