/* A model plugin as one built against ABI 1.6 is: written in C against today's header, but its
 * descriptor and model table end where 1.6's did (tables only grow at the end, so the prefix is
 * 1.6's layout exactly) and it says 1.6. So it has no `capabilities` slot, and its tool lives
 * in the model table: the host must read what it offers (context, max_batch, concurrent,
 * template) from its tokenizer_info, as 1.6 plugins reported it, and find its tool there.
 * Tokens are bytes + 3 (1 BOS, 2 EOS); generate answers with the prompt it was given. */
#include <vhost/c/vhost.h>

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const vhost_host_api* host;

static vhost_status* create(const char* config_json, void** out) {
  (void)config_json;
  *out = malloc(1);
  return *out ? NULL : host->status_new(VHOST_ERR_RUNTIME, "out of memory", NULL);
}
static void destroy(void* self) { free(self); }
static vhost_status* describe(void* self, vhost_sink* out) {
  (void)self;
  out->write(out->ctx, "{\"abi\":\"1.6\"}", 13);
  return NULL;
}
static const void* get_extension(void* self, const char* name) {
  (void)self;
  (void)name;
  return NULL;
}

static vhost_status* encode(void* self, const char* text, size_t len, uint32_t flags, vhost_ids_fn out, void* ctx) {
  int32_t* ids = (int32_t*)malloc((len + 2) * sizeof *ids);
  size_t n = 0, i;
  (void)self;
  if (!ids) return host->status_new(VHOST_ERR_RUNTIME, "out of memory", NULL);
  if (flags & VHOST_ENCODE_BOS) ids[n++] = 1;
  for (i = 0; i < len; ++i) ids[n++] = (int32_t)(unsigned char)text[i] + 3;
  if (flags & VHOST_ENCODE_EOS) ids[n++] = 2;
  out(ctx, ids, n);
  free(ids);
  return NULL;
}
static vhost_status* decode(void* self, const int32_t* ids, size_t n, vhost_sink* text) {
  size_t i;
  (void)self;
  for (i = 0; i < n; ++i)
    if (ids[i] >= 3 && ids[i] < 259) {
      char c = (char)(ids[i] - 3);
      text->write(text->ctx, &c, 1);
    }
  return NULL;
}
static void put(vhost_sink* s, const char* text) { s->write(s->ctx, text, strlen(text)); }

/* Answers with its (first) prompt, as rendered by the host: {"prompts":["..."]} in the host's
 * compact JSON. The reply's text is that JSON string as it came; the streamed piece is it
 * unescaped (enough of JSON's escapes for a rendered chat: \n \t \" \\ \/ and ASCII \u). */
static vhost_status* generate(void* self, const char* request_json, vhost_token_fn on_token, void* ctx, vhost_sink* reply) {
  const char* key = strstr(request_json, "\"prompts\":[\"");
  const char *p, *end;
  char* plain;
  size_t n = 0;
  (void)self;
  if (!key) return host->status_new(VHOST_ERR_INVALID_ARGUMENT, "c16 answers text prompts only", "prompts");
  p = key + strlen("\"prompts\":[\"");
  for (end = p; *end && *end != '"'; ++end)
    if (*end == '\\' && end[1]) ++end;
  plain = (char*)malloc((size_t)(end - p) + 1);
  if (!plain) return host->status_new(VHOST_ERR_RUNTIME, "out of memory", NULL);
  for (key = p; key < end; ++key) {
    char c = *key;
    if (c == '\\') {
      c = *++key;
      if (c == 'n') c = '\n';
      else if (c == 't') c = '\t';
      else if (c == 'u') {
        c = (char)strtol((char[]){key[1], key[2], key[3], key[4], 0}, NULL, 16);
        key += 4;
      }
    }
    plain[n++] = c;
  }
  if (on_token) on_token(ctx, 0, 3, plain, n);
  free(plain);
  put(reply, "{\"choices\":[{\"index\":0,\"text\":\"");
  reply->write(reply->ctx, p, (size_t)(end - p));
  put(reply, "\",\"tokens\":[],\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":0}}");
  return NULL;
}
static vhost_status* tool(const char* name, const char* args_json, vhost_sink* result) {
  char r[256];
  int n;
  if (strcmp(name, "hello") != 0) return host->status_new(VHOST_ERR_UNSUPPORTED, "no such tool", NULL);
  n = snprintf(r, sizeof r, "{\"hello\":\"from the 1.6 model table\",\"args\":%s}", args_json);
  result->write(result->ctx, r, (size_t)n);
  return NULL;
}
static vhost_status* tokenizer_info(void* self, vhost_sink* out) {
  /* 1.6: the tokenizer's facts and the serving capabilities in one object */
  static const char r[] = "{\"bos_id\":1,\"eos_id\":2,\"vocab_size\":259,\"context\":777,\"max_batch\":3,"
                          "\"concurrent\":true,\"template\":\"chatml\"}";
  (void)self;
  out->write(out->ctx, r, sizeof r - 1);
  return NULL;
}

static const vhost_model_iface model_table = {offsetof(vhost_model_iface, capabilities), encode, decode, generate, tool,
                                              NULL, tokenizer_info, NULL, NULL /* past struct_size */};

static const vhost_plugin_desc descriptor = {
    offsetof(vhost_plugin_desc, tool), VHOST_ABI_MAJOR, 6, "c16", VHOST_KIND_MODEL, "1.6.0",
    "a model plugin shaped as ABI 1.6 built it", NULL, "[{\"key\":\"path\",\"type\":\"path\",\"default\":\"\",\"help\":\"unused\"}]",
    create, destroy, describe, &model_table, get_extension, NULL, NULL /* past struct_size */};

VHOST_PLUGIN_EXPORT const vhost_plugin_desc* vhost_plugin_get(const vhost_host_api* h) {
  host = h;
  return &descriptor;
}
