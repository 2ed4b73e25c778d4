/* The string value of "key" in the host's compact JSON (no spaces after ':'), for the test
 * plugins written in C; enough for their own options, which hold no escapes. */
#ifndef VHOST_TEST_C_JSON_STRING_H
#define VHOST_TEST_C_JSON_STRING_H

#include <stdio.h>
#include <string.h>

static void json_string(const char* json, const char* key, char* out, size_t cap) {
  char pattern[64];
  const char* p;
  size_t n = 0;
  out[0] = 0;
  snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
  p = strstr(json, pattern);
  if (!p) return;
  p += strlen(pattern);
  while (p[n] && p[n] != '"' && n + 1 < cap) n++;
  memcpy(out, p, n);
  out[n] = 0;
}

#endif
