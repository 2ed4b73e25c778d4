/* A judge written in C with nothing but <vhost/c/vhost.h> (ABI 1.6): no C++, no Boost, no JSON
 * library. It relays each request to another judge instance of its pipeline (its required
 * option "peer"), found through the run it was created in (create_in + lookup_instance), or,
 * with lookup = "process", through the 1.1 find_instance that names no run. */
#include <vhost/c/vhost.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_json_string.h"

static const vhost_host_api* host;

typedef struct {
  const vhost_context* context;
  char peer[256];
  int by_process;
} relay;

static vhost_status* create_in(const vhost_context* context, const char* config_json, void** out) {
  char mode[32];
  relay* r = (relay*)calloc(1, sizeof *r);
  if (!r) return host->status_new(VHOST_ERR_RUNTIME, "out of memory", NULL);
  r->context = context;
  json_string(config_json, "peer", r->peer, sizeof r->peer);
  json_string(config_json, "lookup", mode, sizeof mode);
  r->by_process = strcmp(mode, "process") == 0;
  if (!r->by_process && !context) {
    free(r);
    return host->status_new(VHOST_ERR_CONFIG, "this host gave no run context (ABI 1.6 needed)", "lookup");
  }
  *out = r;
  return NULL;
}

static vhost_status* create(const char* config_json, void** out) { return create_in(NULL, config_json, out); }

static void destroy(void* self) { free(self); }

static vhost_status* describe(void* self, vhost_sink* out) {
  char d[320];
  int n = snprintf(d, sizeof d, "{\"language\":\"C\",\"peer\":\"%s\"}", ((relay*)self)->peer);
  out->write(out->ctx, d, (size_t)n);
  return NULL;
}

static vhost_status* complete(void* self, const char* request_json, vhost_sink* reply_json) {
  relay* r = (relay*)self;
  const void* table = NULL;
  void* peer = NULL;
  if (r->by_process) {
    table = host->find_instance(r->peer, VHOST_KIND_JUDGE, &peer);
    if (!table) return host->status_new(VHOST_ERR_RUNTIME, "find_instance (ABI 1.1) found no judge to relay to", NULL);
  } else {
    vhost_status* st = host->lookup_instance(r->context, r->peer, VHOST_KIND_JUDGE, &table, &peer);
    if (st) return st; /* the host's status, handed back to the host */
  }
  return ((const vhost_judge_iface*)table)->complete(peer, request_json, reply_json);
}

static const void* get_extension(void* self, const char* name) {
  (void)self;
  (void)name;
  return NULL;
}

static const vhost_judge_iface judge_table = {sizeof(vhost_judge_iface), complete, NULL};

static const vhost_plugin_desc descriptor = {
    sizeof(vhost_plugin_desc), VHOST_ABI_MAJOR, VHOST_ABI_MINOR, "c", VHOST_KIND_JUDGE, "1.6.0",
    "a judge written in C that relays to another judge", NULL,
    "[{\"key\":\"peer\",\"type\":\"instance\",\"kind\":\"judge\",\"help\":\"the judge to relay to\"},"
    "{\"key\":\"lookup\",\"type\":\"string\",\"default\":\"run\",\"choices\":[\"run\",\"process\"],"
    "\"help\":\"how to find it: this run (ABI 1.6) or the whole process (ABI 1.1)\"}]",
    create, destroy, describe, &judge_table, get_extension, create_in};

VHOST_PLUGIN_EXPORT const vhost_plugin_desc* vhost_plugin_get(const vhost_host_api* h) {
  host = h;
  return &descriptor;
}
