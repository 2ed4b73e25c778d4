/* A judge written in C against the frozen ABI 1.0 header (tests/abi/v1_0): what a plugin built
 * back then looks like to today's host. Its entry point is a data symbol holding the entry
 * function's address, as SDK 1.0's BOOST_DLL_ALIAS exported it; its descriptor and judge table
 * are 1.0's (shorter than today's). */
#include <vhost/c/vhost.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_json_string.h"

#if VHOST_ABI_MINOR != 0
#error "built against the wrong header: this plugin must see the frozen 1.0 one"
#endif

static const vhost_host_api* host;

typedef struct {
  char greeting[128];
} judge10;

static vhost_status* create(const char* config_json, void** out) {
  judge10* j = (judge10*)calloc(1, sizeof *j);
  if (!j) return host->status_new(VHOST_ERR_RUNTIME, "out of memory", NULL);
  json_string(config_json, "greeting", j->greeting, sizeof j->greeting);
  *out = j;
  return NULL;
}

static void destroy(void* self) { free(self); }

static vhost_status* describe(void* self, vhost_sink* out) {
  const char* d = "{\"language\":\"C\",\"abi\":\"1.0\"}";
  (void)self;
  out->write(out->ctx, d, strlen(d));
  return NULL;
}

static vhost_status* complete(void* self, const char* request_json, vhost_sink* reply_json) {
  judge10* j = (judge10*)self;
  char reply[256];
  int n = snprintf(reply, sizeof reply, "{\"text\":\"%s (%u request bytes)\",\"model\":\"c10\"}", j->greeting,
                   (unsigned)strlen(request_json));
  reply_json->write(reply_json->ctx, reply, (size_t)n);
  return NULL;
}

static const void* get_extension(void* self, const char* name) {
  (void)self;
  (void)name;
  return NULL;
}

static const vhost_judge_iface judge_table = {sizeof(vhost_judge_iface), complete};

static const vhost_plugin_desc descriptor = {
    sizeof(vhost_plugin_desc), VHOST_ABI_MAJOR, VHOST_ABI_MINOR, "c10", VHOST_KIND_JUDGE, "1.0.0",
    "a judge written in C against the frozen ABI 1.0 header", NULL,
    "[{\"key\":\"greeting\",\"type\":\"string\",\"default\":\"hello from ABI 1.0\",\"help\":\"the reply\"}]",
    create, destroy, describe, &judge_table, get_extension};

static const vhost_plugin_desc* entry(const vhost_host_api* h) {
  host = h;
  return &descriptor;
}

/* What BOOST_DLL_ALIAS(entry, vhost_plugin_entry) exported in SDK 1.0. */
__attribute__((visibility("default"))) const vhost_plugin_entry_fn vhost_plugin_entry = entry;
